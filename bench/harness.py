"""The one timing harness every benchmark shares (Liger-Kernel style): a benchmark defines, per provider,
a setup that returns a zero-argument callable; the harness times it (median, p20, p80 after warm-up; on CUDA with
events, one synchronize per run and optionally an L2 flush before each call), measures its peak extra memory, and
prints / writes the table row by row with the device and command it ran on."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from metareward.utils import peak_memory as peak_memory_now
from metareward.utils import reset_peak_memory, rss_bytes


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes allocated by one call of fn beyond what was allocated before it (CUDA: the caching
    allocator's counters; CPU: the process's peak RSS, which also counts the allocator's slack)."""
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    base = rss_bytes()
    if base is None or not reset_peak_memory(device):
        return None
    fn()
    return peak_memory_now(device) - base


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int = 3, rep: int = 10,
            min_time: float = 0.0, flush_l2: bool = False) -> dict:
    """Median and p20/p80 in milliseconds over `rep` timed calls after `warmup` calls (at least `min_time` seconds
    of them). CUDA: a pair of events around each call and one synchronize after the last (triton.testing.do_bench's
    method), so the host's launch time is not inside the numbers once the GPU is busy; flush_l2 zeroes a buffer of
    twice the L2 size before each call, so the inputs come from HBM as in a real step (131 MB of sample logits are
    partly L2-resident on an H200, store_kv's at N=256 entirely)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        return _time_cuda(fn, device, rep, min_time, flush_l2)
    times = []
    while len(times) < rep or sum(times) < min_time * 1e3:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return _summary(times)


def _summary(times: list[float]) -> dict:
    q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return {"median_ms": statistics.median(times), "p20_ms": q[1], "p80_ms": q[7], "reps": len(times)}


def _time_cuda(fn, device, rep: int, min_time: float, flush_l2: bool) -> dict:
    flush = None
    if flush_l2:
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 64 << 20
        flush = torch.empty(2 * l2 // 4, dtype=torch.int32, device=device)
    if min_time > 0:  # one timed call sizes the run
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        rep = max(rep, int(min_time * 1e3 / max(a.elapsed_time(b), 1e-3)) + 1)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(rep)]
    torch.cuda.synchronize(device)
    for a, b in events:
        if flush is not None:
            flush.zero_()
        a.record()
        fn()
        b.record()
    torch.cuda.synchronize(device)
    return _summary([a.elapsed_time(b) for a, b in events])


def compiled(fn: Callable, name: str = "torch.compile"):
    """torch.compile(fn) for a baseline row, or None with the reason printed (no compiler on the machine, ...)."""
    try:
        return torch.compile(fn, dynamic=False)
    except Exception as e:  # compilation is lazy: most failures surface at the first call instead
        print(f"{name}: unavailable ({type(e).__name__}: {e})"[:200])
        return None


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write counted), the memory ceiling."""
    n = nbytes // 4 if device.type == "cuda" else nbytes // 16
    a = torch.empty(n, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    t = time_fn(lambda: b.copy_(a), device, warmup=3, rep=20)
    return 2 * a.numel() * 4 / (t["median_ms"] / 1e3)


def matmul_flops(device: torch.device, dtype: torch.dtype = torch.bfloat16, n: int = 8192) -> float:
    """Measured dense matmul rate in FLOP/s for `dtype`, the compute ceiling."""
    if device.type != "cuda":
        n, dtype = 1024, torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_fn(lambda: a @ b, device, warmup=3, rep=20)
    return 2 * n**3 / (t["median_ms"] / 1e3)


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


class Table:
    """A results table that is printed and written as it grows: each add() prints its markdown row and rewrites
    the JSON file, so a benchmark stopped by a time limit still leaves every row it finished."""

    def __init__(self, title: str, device: torch.device, columns: list[str], out: str | None,
                 extra: dict | None = None):
        self.columns, self.out, self.rows = columns, out, []
        self.result = {
            "title": title, "device": device_name(device), "command": " ".join([sys.executable] + sys.argv),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **(extra or {}),
            "rows": self.rows,
        }
        print(f"\n## {title}\ndevice: {self.result['device']}\ncommand: {self.result['command']}")
        for k, v in (extra or {}).items():
            print(f"{k}: {v}")
        print("| " + " | ".join(columns) + " |")
        print("|" + "---|" * len(columns), flush=True)
        self._write()

    def add(self, row: dict) -> dict:
        self.rows.append(row)
        cells = []
        for c in self.columns:
            v = row.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        print("| " + " | ".join(cells) + " |", flush=True)
        self._write()
        return row

    def _write(self) -> None:
        if self.out:
            Path(self.out).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(f"{self.out}.tmp")
            tmp.write_text(json.dumps(self.result, indent=2, default=str))
            tmp.replace(self.out)  # a reader never sees half a file


def report(title: str, device: torch.device, rows: list[dict], columns: list[str], out: str | None,
           extra: dict | None = None) -> dict:
    """Print a markdown table of `rows` (dicts) restricted to `columns`, and write everything as JSON."""
    table = Table(title, device, columns, out, extra)
    for r in rows:
        table.add(r)
    return table.result


def cli(doc: str, bench: Callable, check: Callable, reps: int) -> int:
    """The kernel benchmarks' command line: `--check` (the Triton kernel against its reference on this device,
    exit 1 on failure) or the benchmark (`--out` JSON, `--reps`). On a CPU the check runs the Triton code under
    TRITON_INTERPRET=1, which must be set before the kernel's module is imported (a script importing
    metareward at its top sets it there itself)."""
    import argparse
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--reps", type=int, default=reps)
    ap.add_argument("--check", action="store_true", help="correctness of the Triton kernel(s); exit 1 on failure")
    args = ap.parse_args()
    device = torch.device(args.device)
    if not args.check:
        bench(device, args.out, args.reps)
        return 0
    if device.type == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
        print("CPU: checking the Triton code under TRITON_INTERPRET=1 on small shapes")
    os.environ["METAREWARD_KERNELS"] = "triton"
    ok = check(device)
    print("check passed" if ok else "check FAILED")
    return 0 if ok else 1


def capture_graph(fn: Callable[[], object]):
    """(graph, output) of fn captured in a CUDA graph, after two eager calls (compilation and autotuning
    happen outside the capture). The correctness checks replay it on new inputs."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out
