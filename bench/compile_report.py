"""Offline compile report: every @triton.jit kernel in metareward/kernels/, compiled for a GPU that is not here
(sm_90: H100 / H200) through its real launcher at the benchmark shapes, with what the compiled code costs.

  python3 bench/compile_report.py --target sm_90 [--json OUT] [--jobs N]

No GPU is needed: Triton builds sm_90a cubins with its bundled ptxas once its driver names the target. The
launchers run on fake CUDA tensors (torch's FakeTensorMode: shapes, strides, dtypes, aligned fake addresses, no
memory), and every `kernel[grid](...)` they make compiles (JITFunction.run with warmup=True) and never launches.
Per kernel x configuration it prints: compiled or the error, registers per thread, spill bytes (ptxas -v spill
stores, rerun on the kernel's PTX with Triton's flags and checked against the cubin's register count),
shared memory, warps / pipeline stages, and CTAs per SM (occupancy from registers, warps and shared memory).
--json OUT writes the same rows as a list of objects.

The kernels are found, not listed: every JITFunction that no other JITFunction of its module calls is a kernel,
and one that no configuration below launches is reported as an error, so a new kernel cannot be forgotten.
Exit status 1 when a kernel fails to compile, is not covered, or needs more shared memory than the target has.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib
import json
import multiprocessing
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":  # read when triton is imported: this report compiles, never interprets (an importing
    os.environ.pop("TRITON_INTERPRET", None)  # test process keeps its interpreter for the kernel tests after it)
warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION is unset")  # the GPU run has the same default
warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


@dataclass(frozen=True)
class Target:
    capability: int
    sms: int  # SMs of the GPU the launchers size their grids for (H100 SXM and H200: 132)
    regs_per_sm: int = 65536
    max_warps_per_sm: int = 64
    max_ctas_per_sm: int = 32
    smem_per_sm: int = 228 * 1024
    smem_per_block: int = 227 * 1024  # the opt-in maximum of dynamic shared memory per block
    smem_reserved: int = 1024  # the runtime's per-CTA reservation, counted against the SM's shared memory


TARGETS = {"sm_90": Target(capability=90, sms=132)}
KERNEL_PACKAGE = "metareward.kernels"


# ----------------------------------------------------------------------------------------------- offline target
class OfflineDriver:
    """Triton's driver, reduced to what compiling needs: the target (no CUDA device, no libcuda)."""

    def __init__(self, target: Target):
        from triton.backends.compiler import GPUTarget
        self.target = GPUTarget("cuda", target.capability, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_device_capability(self, device=None):
        return divmod(self.target.arch, 10)


class FakeCuda(torch.overrides.TorchFunctionMode):
    """CUDA tensors without CUDA: FakeTensorMode gives shapes, strides and dtypes; data_ptr() gives one 256-byte
    aligned fake address per storage plus the view's offset, so Triton's 16-byte divisibility specialization
    sees what the caching allocator would give. any()/all() results answer bool() as valid inputs do (the
    launchers' argument checks: no bad target, ...); any other data-dependent bool is an error."""

    def __init__(self):
        super().__init__()
        from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
        self.fake_mode, self.fake_type = FakeTensorMode(allow_non_fake_inputs=True), FakeTensor
        self.addresses: dict[int, int] = {}

    def __enter__(self):
        self.fake_mode.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self.fake_mode.__exit__(*exc)

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        fake = bool(args) and isinstance(args[0], self.fake_type)
        if name == "data_ptr" and fake:
            key = id(args[0].untyped_storage())
            base = self.addresses.setdefault(key, (len(self.addresses) + 1) << 32)
            return base + args[0].storage_offset() * args[0].element_size()
        if name == "__getitem__" and fake:  # Python indexing takes a CUDA device guard that a CPU torch lacks
            return _basic_index(args[0], args[1])
        if name == "__bool__" and fake:
            truth = getattr(args[0], "_report_truth", None)
            if truth is None:
                raise RuntimeError("a launcher reads a tensor's value on the host; the report cannot fake it")
            return truth
        out = func(*args, **(kwargs or {}))
        if name in ("any", "all") and fake and isinstance(out, torch.Tensor):
            out._report_truth = name == "all"
        return out


def _basic_index(t: torch.Tensor, index) -> torch.Tensor:
    # t[index] for ints, slices, None and ... through view ops (narrow/select/unsqueeze), which need no guard
    index = index if isinstance(index, tuple) else (index,)
    if Ellipsis in index:
        i = index.index(Ellipsis)
        fill = t.dim() - sum(1 for x in index if x is not None and x is not Ellipsis)
        index = index[:i] + (slice(None),) * fill + index[i + 1:]
    dim = 0
    for x in index:
        if x is None:
            t, dim = t.unsqueeze(dim), dim + 1
        elif isinstance(x, int):
            t = t.select(dim, x)
        elif isinstance(x, slice):
            start, stop, step = x.indices(t.shape[dim])
            t = torch.ops.aten.slice.Tensor(t, dim, start, max(start, stop), step)
            dim += 1
        else:
            raise TypeError(f"the compile report fakes basic indexing only, not {type(x).__name__} indices")
    return t


# ----------------------------------------------------------------------------------------------- configurations
def _cuda(*shape, dtype=torch.float32):
    return torch.empty(*shape, dtype=dtype, device="cuda")


def _sample(B, V, dtype):
    from metareward.kernels.sample import sample_triton
    sample_triton(_cuda(B, V, dtype=dtype), _cuda(B), _cuda(B, dtype=torch.int64), _cuda(B), _cuda(B),
                  _cuda(B, dtype=torch.int64), _cuda(B, dtype=torch.int64))


def _linear_logprobs(N, H, V, dtype):
    # forward and backward launchers directly: autograd's engine needs a real CUDA device for its leaves
    from metareward.kernels import linear_logprobs as L
    hidden, weight, targets = _cuda(N, H, dtype=dtype), _cuda(V, H, dtype=dtype), _cuda(N, dtype=torch.int64)
    _, lse = L._triton_forward(hidden, weight, targets, -100)
    L._triton_backward(hidden, weight, targets, lse, _cuda(N), True, True)


def _decode(B, ctx, hkv, group, D, page, dtype):
    from metareward.kernels.paged_attention import paged_attention_decode_triton
    per_seq = -(-ctx // page)
    cache = _cuda(B * per_seq + 1, page, hkv, D, dtype=dtype)
    paged_attention_decode_triton(_cuda(B, hkv * group, D, dtype=dtype), cache, cache,
                                  _cuda(B, per_seq, dtype=torch.int32), _cuda(B, dtype=torch.int32), D ** -0.5)


def _store_kv(N, hkv, D, page, dtype):
    from metareward.kernels.paged_attention import store_kv_triton
    k, cache = _cuda(N, hkv, D, dtype=dtype), _cuda(N // page + 8, page, hkv, D, dtype=dtype)
    store_kv_triton(k, k, cache, cache, _cuda(N, dtype=torch.int64))


BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
NAMES = {BF16: "bf16", FP16: "fp16", FP32: "fp32"}


def configurations() -> list[tuple[str, dict, torch.dtype, object]]:
    """(op, config, dtype, zero-argument launcher call) at the benchmark shapes; the heavy ones first."""
    out = []
    for dtype in (BF16, FP32):  # DPO's lm-head: Llama-3-8B
        out.append(("linear_logprobs", dict(N=16384, H=4096, V=128256), dtype,
                    lambda d=dtype: _linear_logprobs(16384, 4096, 128256, d)))
    for V in (32000, 128256, 151936):  # Llama-2, Llama-3, Qwen2 vocabularies; B=256 (the sampling benchmark)
        for dtype in (FP32, BF16):
            out.append(("sample", dict(B=256, V=V), dtype, lambda V=V, d=dtype: _sample(256, V, d)))
    # one row: pass 1 split over 32 programs (the same binaries: the batch size is not specialized); fp16 logits
    out.append(("sample", dict(B=1, V=128256), BF16, lambda: _sample(1, 128256, BF16)))
    out.append(("sample", dict(B=256, V=128256), FP16, lambda: _sample(256, 128256, FP16)))
    for D in (64, 128, 256):  # decode: batch 256, context 2048, 8 kv heads, pages of 16 tokens
        for group in (1, 4, 8):
            for dtype in (BF16, FP16, FP32):
                out.append(("paged_attention_decode", dict(B=256, ctx=2048, hkv=8, group=group, D=D, page=16),
                            dtype, lambda D=D, g=group, d=dtype: _decode(256, 2048, 8, g, D, 16, d)))
    # Qwen2-7B heads (28/4: group 7, padded to 8) in fp32; split-K (few sequences) with its reduce kernel
    out.append(("paged_attention_decode", dict(B=256, ctx=2048, hkv=4, group=7, D=128, page=16), FP32,
                lambda: _decode(256, 2048, 4, 7, 128, 16, FP32)))
    out.append(("paged_attention_decode", dict(B=8, ctx=2048, hkv=8, group=4, D=128, page=16), BF16,
                lambda: _decode(8, 2048, 8, 4, 128, 16, BF16)))
    for N in (256, 16384):  # store_kv: one decode step, one prefill chunk
        for dtype in (BF16, FP16, FP32):
            out.append(("store_kv", dict(N=N, hkv=8, D=128, page=16), dtype,
                        lambda N=N, d=dtype: _store_kv(N, 8, 128, 16, d)))
    return out


# ----------------------------------------------------------------------------------------------- discovery
def discover_kernels() -> dict[str, str]:
    """{kernel name: module} for every @triton.jit function in the kernel package that no other one names
    (calls, or passes as a reduction's combine function; names in comments do not count)."""
    import ast
    import textwrap

    from triton.runtime.jit import JITFunction
    package = importlib.import_module(KERNEL_PACKAGE)
    kernels = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{KERNEL_PACKAGE}.{info.name}")
        jitted = {name: obj for name, obj in vars(module).items()
                  if isinstance(obj, JITFunction) and obj.fn.__module__ == module.__name__}
        named = {}  # jit function -> the names its body uses
        for name, fn in jitted.items():
            tree = ast.parse(textwrap.dedent(fn.src))
            named[name] = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        for name, fn in jitted.items():
            if not any(fn.__name__ in used for other, used in named.items() if other != name):
                kernels[fn.__name__] = module.__name__
    return kernels


# ----------------------------------------------------------------------------------------------- compiling
def _tool(name: str) -> str:
    import triton
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _ptxas_stats(kernel, capability: int) -> dict:
    """Registers and spills by ptxas -v on the kernel's PTX with the flags Triton's make_cubin passes; the
    register count must equal that of Triton's own cubin (cuobjdump), else the flags drifted."""
    from triton.backends.nvidia.compiler import get_ptxas
    arch = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"
    with tempfile.TemporaryDirectory() as d:
        ptx, cubin = Path(d, "k.ptx"), Path(d, "k.cubin")
        ptx.write_text(kernel.asm["ptx"])
        cubin.write_bytes(kernel.asm["cubin"])
        fmad = [] if kernel.metadata.enable_fp_fusion else ["--fmad=false"]
        extra = kernel.metadata.ptx_options.split() if kernel.metadata.ptx_options else []
        log = subprocess.run([get_ptxas(capability).path, "-lineinfo", *fmad, "-v", "--regAllocOptLevel=2", *extra,
                              f"--gpu-name={arch}", str(ptx), "-o", str(Path(d, "check.cubin"))],
                             capture_output=True, text=True, check=True).stderr
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True,
                               check=True).stdout
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    spill = re.search(r"(\d+) bytes spill stores", log)
    cubin_regs = int(re.search(r"REG:(\d+)", usage).group(1))
    if regs != cubin_regs:
        raise RuntimeError(f"ptxas -v says {regs} registers, Triton's cubin {cubin_regs}: the flags differ")
    return {"registers": regs, "spill_bytes": int(spill.group(1)) if spill else 0,
            "stack_bytes": int(re.search(r"(\d+) bytes stack frame", log).group(1))}


def pipeline_buffers(ttgir: str) -> int:
    # Triton's pipeliner allocates each software-pipelined load's shared memory as [buffers, *tile] up front
    # (`ttg.local_alloc : () -> !ttg.memdesc<2x64x128xbf16, ..., mutable>`): the largest count, 0 when none
    counts = re.findall(r"ttg\.local_alloc\s*:\s*\(\)\s*->\s*!ttg\.memdesc<(\d+)x[^>]*mutable>", ttgir)
    return max(map(int, counts), default=0)


def ctas_per_sm(target: Target, registers: int, num_warps: int, shared: int) -> int:
    # the occupancy calculator's three limits: registers (allocated per warp in units of 256), warps, shared memory
    per_warp = -(-registers * 32 // 256) * 256
    by_regs = (target.regs_per_sm // per_warp) // num_warps if per_warp else target.max_ctas_per_sm
    by_warps = target.max_warps_per_sm // num_warps
    by_smem = target.smem_per_sm // (shared + target.smem_reserved)
    return min(by_regs, by_warps, by_smem, target.max_ctas_per_sm)


def _scalar(v):
    return v if isinstance(v, (bool, int, float, str)) or v is None else str(v)


_WORKER: dict = {}
_STATS: dict = {}  # kernel hash -> ptxas stats: one ptxas run per distinct binary


def _setup(target_name: str) -> None:
    import triton.runtime.jit as jit
    from triton.runtime.driver import driver
    target = TARGETS[target_name]
    driver.set_active(OfflineDriver(target))
    props = types.SimpleNamespace(multi_processor_count=target.sms, name=f"offline {target_name}")
    torch.cuda.get_device_properties = lambda device=None: props  # the launchers size grids by the SM count
    launches: list = []

    def launch(kernel, grid):
        def compile_only(*args, **kwargs):
            meta = {k: _scalar(v) for k, v in kwargs.items()}
            try:
                launches.append((kernel.fn.__name__, meta, kernel.run(*args, grid=grid, warmup=True, **kwargs), None))
            except Exception as e:  # record and go on: the launcher's other kernels still compile
                launches.append((kernel.fn.__name__, meta, None, f"{type(e).__name__}: {e}".strip()[:500]))
        return compile_only

    jit.KernelInterface.__getitem__ = launch
    _WORKER.update(target=target, target_name=target_name, launches=launches)


def run_config(index: int) -> list[dict]:
    """The rows of configuration `index`: one per kernel launch its launcher made."""
    target, launches = _WORKER["target"], _WORKER["launches"]
    op, config, dtype, call = configurations()[index]
    launches.clear()
    t0 = time.perf_counter()
    error = None
    try:
        with FakeCuda():
            call()
    except Exception as e:  # the launcher itself failed (before or between launches)
        error = f"{type(e).__name__}: {e}".strip()[:500]
    seconds = time.perf_counter() - t0
    rows, seen = [], set()
    if error is not None and not launches:
        rows.append({"kernel": f"({op} launcher)", "config": {"op": op, **config}, "dtype": NAMES[dtype],
                     "compiled": False, "error": error})
    for name, meta, kernel, err in launches:
        if kernel is not None:  # a launcher's loop (the backward's vocabulary chunks) relaunches one binary
            if kernel.hash in seen:
                continue
            seen.add(kernel.hash)
        row = {"kernel": name, "config": {"op": op, **config, "launch": meta}, "dtype": NAMES[dtype], "compiled": False,
               "error": err or error, "registers": None, "spill_bytes": None, "stack_bytes": None,
               "shared_bytes": None, "num_warps": meta.get("num_warps"), "num_stages": meta.get("num_stages"),
               "ctas_per_sm": None, "seconds": round(seconds, 2)}
        if kernel is not None:
            try:
                stats = _STATS.get(kernel.hash) or _STATS.setdefault(kernel.hash,
                                                                     _ptxas_stats(kernel, target.capability))
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {e}"[:500]
            else:
                md = kernel.metadata
                row.update(stats, compiled=err is None and error is None, shared_bytes=md.shared,
                           buffers=pipeline_buffers(kernel.asm["ttgir"]),
                           num_warps=md.num_warps, num_stages=md.num_stages,
                           ctas_per_sm=ctas_per_sm(target, stats["registers"], md.num_warps, md.shared))
                if md.shared > target.smem_per_block:
                    row["compiled"] = False
                    row["error"] = f"{md.shared} bytes of shared memory > {target.smem_per_block} per block"
        rows.append(row)
    return rows


def report(target_name: str, jobs: int, only: str | None = None) -> list[dict]:
    todo = [i for i, c in enumerate(configurations()) if only is None or c[0] == only]
    if jobs <= 1:
        _setup(target_name)
        rows = [r for i in todo for r in run_config(i)]
    else:  # spawn: a fresh interpreter per worker (fork after torch's threads start is unsafe)
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_setup,
                                                    initargs=(target_name,)) as pool:
            rows = [r for part in pool.map(run_config, todo) for r in part]
    if only is not None:  # a partial report: coverage is not checked
        return rows
    with contextlib.redirect_stdout(sys.stderr):
        kernels = discover_kernels()
    covered = {r["kernel"] for r in rows}
    for name, module in sorted(kernels.items()):
        if name not in covered:
            rows.append({"kernel": name, "config": {"module": module}, "dtype": None, "compiled": False,
                         "error": "no configuration in bench/compile_report.py launches this kernel",
                         "registers": None, "spill_bytes": None, "shared_bytes": None, "num_warps": None,
                         "num_stages": None, "ctas_per_sm": None})
    return rows


def _describe(config: dict) -> str:
    # the shape, then the launcher's tile constexprs (warps and stages have their own columns)
    shape = [f"{k}={v}" for k, v in config.items() if k not in ("op", "launch", "module")]
    tiles = [f"{k}={v}" for k, v in config.get("launch", {}).items() if k.isupper() and isinstance(v, int)]
    return " ".join(shape) + ("; " + " ".join(tiles) if tiles else "")


def print_table(rows: list[dict], target_name: str) -> None:
    print("| kernel | config | dtype | compiled | regs | spill B | smem B | warps | stages | buffers | CTAs/SM |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        status = "yes" if r["compiled"] else "ERROR: " + str(r["error"]).replace("|", "/").splitlines()[0][:160]
        cells = [r["kernel"], _describe(r["config"]), r["dtype"] or "", status, r.get("registers"),
                 r.get("spill_bytes"), r.get("shared_bytes"), r.get("num_warps"), r.get("num_stages"),
                 r.get("buffers"), r.get("ctas_per_sm")]
        print("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", default="sm_90", choices=sorted(TARGETS))
    ap.add_argument("--json", metavar="OUT", help="write the rows as a JSON list here")
    ap.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="compiler processes")
    ap.add_argument("--only", choices=sorted({c[0] for c in configurations()}),
                    help="only this op's configurations (development; skips the coverage check)")
    args = ap.parse_args()
    import triton
    t0 = time.perf_counter()
    rows = report(args.target, args.jobs, args.only)
    seconds = time.perf_counter() - t0
    print(f"# compile report: {args.target} ({TARGETS[args.target].sms} SMs), triton {triton.__version__}, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {seconds:.0f} s with "
          f"{args.jobs} job(s)")
    print(f"# command: python3 {' '.join(sys.argv)}")
    print_table(rows, args.target)
    if args.json:
        keys = ("kernel", "config", "dtype", "compiled", "error", "registers", "spill_bytes", "shared_bytes",
                "num_warps", "num_stages", "ctas_per_sm")
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([{k: r.get(k) for k in keys + ("stack_bytes", "buffers")}
                                               for r in rows], indent=1))
    bad = [r for r in rows if not r["compiled"]]
    for r in bad:
        print(f"error: {r['kernel']} {_describe(r['config'])} {r['dtype']}: {r['error']}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
