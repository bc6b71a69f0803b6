"""Fused linear log-probabilities (the DPO hot spot): the Triton kernel against the chunked torch reference,
the naive path (full logits + log_softmax + gather) and Liger-Kernel's fused linear cross entropy
(reduction="none") when installed, stated against the bf16 matmul rate measured in the same run.

  python3 bench/bench_linear_logprobs.py [--device cuda|cpu] [--out results/linear_logprobs.json]
  python3 bench/bench_linear_logprobs.py --check   # Triton vs float64 truth; exit 1 on failure (bench/gpu.sh)

GPU case: N=16384 tokens, H=4096, V=128256 (Llama-3-8B lm_head), bf16; "% matmul" counts 6*N*H*V FLOP
forward+backward (the Triton kernel executes 8*N*H*V: its backward recomputes the logits), forward only 2*N*H*V.
"extra mem" is the peak beyond inputs, outputs and gradients; its ratio is to the naive path's."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

# `import metareward` (which bench.harness does) defines the kernels, and @triton.jit reads TRITON_INTERPRET then
CPU_CHECK = "--check" in sys.argv and (not torch.cuda.is_available() or "cpu" in " ".join(sys.argv))
if CPU_CHECK:
    os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import cli, fmt_bytes, matmul_flops, peak_memory, time_fn  # noqa: E402

IGNORE = -100
TOL = {torch.float32: 2e-6, torch.bfloat16: 4e-3, torch.float16: 5e-4}  # as in tests/kernels: fast <= naive + TOL


def naive_logprobs(hidden, weight, targets):  # [N, V] logits in the input dtype, log_softmax in fp32
    logits = hidden @ weight.t()
    logp = torch.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), -1)
    return torch.where(targets != IGNORE, logp.gather(1, targets.clamp(min=0)[:, None])[:, 0], 0.0)


def liger_logprobs():
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except Exception:  # absent, or built for another triton / torch
        return None
    ce = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE, reduction="none")
    # Liger returns -logp. Its grad_weight with a per-token grad_out is right only in releases with
    # linkedin/Liger-Kernel PR #1298 (it computes gradients in the forward): timed here, not checked.
    return lambda hidden, weight, targets: -ce(weight, hidden, targets)


def make_case(n, h, v, dtype, device, seed=0):
    g = torch.Generator(device).manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, device=device).to(dtype)
    weight = (torch.randn(v, h, generator=g, device=device) * 3 / h**0.5).to(dtype)  # logits ~ N(0, 9)
    targets = torch.randint(0, v, (n,), generator=g, device=device)
    targets[1::4] = IGNORE
    grad_out = torch.randn(n, generator=g, device=device)  # DPO: a per-sequence coefficient per token
    return hidden, weight, targets, grad_out


def fwd_bwd(fn, hidden, weight, targets, grad_out):
    h, w = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    out = fn(h, w, targets)
    return (out, *torch.autograd.grad(out, (h, w), grad_out.to(out.dtype)))


def check(device: torch.device) -> bool:
    from metareward.kernels.linear_logprobs import linear_logprobs

    gpu = device.type == "cuda"
    cases = [  # N, H, V, dtype
        (1024, 4096, 128256, torch.bfloat16),  # Llama-3-8B lm_head
        (517, 896, 151936, torch.bfloat16),  # Qwen2-0.5B: the largest vocabulary
        (300, 257, 32003, torch.float32),
        (777, 1000, 50257, torch.float16),
        (8191, 128, 1000, torch.bfloat16),
    ] if gpu else [(37, 19, 1000, torch.float32), (130, 64, 1001, torch.bfloat16), (1, 64, 37, torch.bfloat16)]
    ok = True
    for i, (n, h, v, dtype) in enumerate(cases):
        hidden, weight, targets, grad_out = make_case(n, h, v, dtype, device, seed=i)
        fast = fwd_bwd(linear_logprobs, hidden, weight, targets, grad_out)
        ref = fwd_bwd(naive_logprobs, hidden, weight, targets, grad_out)
        exact = fwd_bwd(naive_logprobs, hidden.double(), weight.double(), targets, grad_out.double())
        good, msg = bool((fast[0][targets == IGNORE] == 0).all()), []
        for name, f, r, e in zip(("logp", "grad_h", "grad_w"), fast, ref, exact):
            scale = e.abs().max().clamp(min=1e-30)
            err_f, err_r = ((f.double() - e).abs().max() / scale).item(), ((r.double() - e).abs().max() / scale).item()
            good &= err_f <= err_r + TOL[dtype]
            msg.append(f"{name} {err_f:.1e} (naive {err_r:.1e})")
        ok &= good
        print(f"{'ok  ' if good else 'FAIL'} N={n} H={h} V={v} {dtype}: " + ", ".join(msg))
        del fast, ref, exact
    return ok


def bench(device: torch.device, out_path: str | None, reps: int) -> None:
    from bench.harness import Table, compiled
    from metareward.kernels.linear_logprobs import linear_logprobs, linear_logprobs_torch

    gpu = device.type == "cuda"
    n, h, v, dtype = (16384, 4096, 128256, torch.bfloat16) if gpu else (512, 256, 32000, torch.float32)
    if not gpu:
        print(f"CPU: timing the torch paths only (chunked reference, naive), on N={n} H={h} V={v} {dtype}")
    providers = {"naive": naive_logprobs, "chunked torch": linear_logprobs_torch}
    if gpu:
        providers["triton"] = linear_logprobs
        liger = liger_logprobs()
        if liger is not None:
            providers["liger (reduction=none)"] = liger
    peak_rate = matmul_flops(device, torch.bfloat16)
    hidden, weight, targets, grad_out = make_case(n, h, v, dtype, device)
    grads_bytes = (hidden.numel() + weight.numel()) * dtype.itemsize
    extra = {"case": f"N={n}, H={h}, V={v}, {dtype}, 1/4 of targets = ignore_index",
             "matmul rate (TFLOP/s, measured)": round(peak_rate / 1e12, 1),
             "FLOP": (f"counted: 2*N*H*V = {2 * n * h * v / 1e12:.2f} TFLOP forward, 6*N*H*V = {6 * n * h * v / 1e12:.2f}"
                      " TFLOP forward+backward; TFLOP/s and % matmul use these counts. The Triton path executes "
                      "8*N*H*V forward+backward (its backward recomputes the logits), so its % matmul of the work "
                      "it executes is 4/3 of the figure shown"),
             "bytes": f"inputs {grads_bytes / 2**30:.2f} GiB (hidden + weight); gradients as much again",
             "timing": "CUDA events around each call, one synchronize per run" if gpu else "wall clock per call",
             "liger-kernel": "n/a on CPU" if not gpu else ("present" if "liger (reduction=none)" in providers
                                                            else "absent")}
    table = Table("fused linear log-probs", device, ["mode", "provider", "median_ms", "p20_ms", "p80_ms", "TFLOP/s",
                                                     "% matmul", "extra mem", "mem / naive", "note"], out_path, extra)
    naive_extra = {}

    def run(mode, name, fn, flop):
        if mode == "fwd+bwd":
            call = lambda: fwd_bwd(fn, hidden, weight, targets, grad_out)  # noqa: E731
        else:
            call = lambda: torch.no_grad()(fn)(hidden, weight, targets)  # noqa: E731
        try:
            t = time_fn(call, device, warmup=2, rep=reps)
            mem = peak_memory(call, device)
        except Exception as e:  # e.g. torch.compile without a working compiler: say so
            table.add({"mode": mode, "provider": name, "note": f"{type(e).__name__}: {e}"[:120]})
            return
        beyond = None if mem is None else mem - 4 * n - (grads_bytes if mode == "fwd+bwd" else 0)
        naive_extra.setdefault(mode, beyond)  # naive runs first
        rate = flop / (t["median_ms"] / 1e3)
        base = naive_extra[mode]
        table.add({"mode": mode, "provider": name, "median_ms": t["median_ms"], "p20_ms": t["p20_ms"],
                   "p80_ms": t["p80_ms"], "TFLOP/s": rate / 1e12, "% matmul": 100 * rate / peak_rate,
                   "extra mem": fmt_bytes(beyond),
                   "mem / naive": f"{100 * beyond / base:.2f}%" if base and beyond is not None else ""})

    for mode, flop in (("fwd+bwd", 6 * n * h * v), ("fwd", 2 * n * h * v)):
        for name, fn in providers.items():
            run(mode, name, fn, flop)
    naive_compiled = compiled(naive_logprobs) if gpu else None  # last: its compilation takes the longest
    for mode, flop in (("fwd+bwd", 6 * n * h * v), ("fwd", 2 * n * h * v)) if naive_compiled else ():
        run(mode, "torch.compile(naive)", naive_compiled, flop)


if __name__ == "__main__":
    sys.exit(cli(__doc__, bench, check, reps=10))
