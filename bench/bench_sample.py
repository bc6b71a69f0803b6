"""Batched sampling (temperature, top-k, top-p, min-p): the Triton kernel against the sort-based torch reference and
FlashInfer's top_k_top_p_sampling_from_logits, stated against the copy bandwidth measured in the same run.

  python3 bench/bench_sample.py [--device cuda|cpu] [--out results/sample.json]
  python3 bench/bench_sample.py --check   # Triton vs the exact distribution / reference; exit 1 on failure

GPU case: B=256 rows, V=128256 (Llama-3), float32 logits, per-row mixed parameters; two logit shapes: "peaked"
(N(0, 2.5^2) plus 8 tokens a row raised by 4..12, like an LLM's head) and "flat" (N(0, 1): the worst case for
the kernel's sort-free search). Ceiling: one read of the logits, B*V*4 bytes = 131 MB, at the copy bandwidth."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# metareward and bench.harness are imported inside the functions: importing them imports triton, which must
# happen after main() has decided on TRITON_INTERPRET


def make_case(B, V, shape, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    if shape == "peaked":
        x = torch.randn(B, V, generator=g) * 2.5
        x.scatter_add_(1, torch.randint(0, V, (B, 8), generator=g), 4 + 8 * torch.rand(B, 8, generator=g))
    else:
        x = torch.randn(B, V, generator=g)
    pick = lambda values: torch.tensor(values)[torch.randint(0, len(values), (B,), generator=g)]  # noqa: E731
    seed, offset = torch.randint(0, 2**62, (B,), generator=g), torch.randint(0, 4096, (B,), generator=g)
    params = (pick([0.0, 0.6, 1.0, 1.0, 1.3]), pick([0, 0, 20, 50, 1000]), pick([1.0, 0.9, 0.95]),
              pick([0.0, 0.0, 0.05]), seed, offset)
    return x.to(device), [t.to(device) for t in params]


def chi2_pvalue(counts, probs, n):  # Pearson's test, bins expected < 5 pooled; P(chi2_df > stat)
    expected = probs * n
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    obs, exp = obs[exp > 0], exp[exp > 0]
    if len(exp) < 2:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor((len(exp) - 1) / 2.0), ((obs - exp) ** 2 / exp).sum().cpu() / 2))


def check(device: torch.device) -> bool:
    from metareward.kernels import sample as S

    gpu = device.type == "cuda"
    ok = True

    def report_line(good, what):
        nonlocal ok
        ok &= bool(good)
        print(f"{'ok  ' if good else 'FAIL'} {what}")

    # 1. distribution: one row repeated n times with seeds 0..n-1, against the exact processed distribution
    dist_cases = [(37, 1.0, 0, 1.0, 0.0), (1000, 0.7, 50, 0.9, 0.0), (1000, 1.3, 0, 0.95, 0.02)]
    if gpu:
        dist_cases += [(32000, 1.0, 0, 0.8, 0.0), (128256, 1.0, 1000, 0.95, 0.0), (128256, 0.8, 20, 0.9, 0.05)]
    for V, t, k, p, mp in dist_cases:
        for dtype in (torch.float32, torch.bfloat16):
            n = (8192 if V <= 32000 else 2048) if gpu else 1024
            row = (torch.randn(1, V, generator=torch.Generator().manual_seed(V)) * 3).to(device, dtype)
            for config in ({}, dict(block=16, cap=4)) if V <= 1000 else ({},):
                tokens, _ = S.sample_triton(row.expand(n, V).contiguous(), t, k, p, mp, torch.arange(n, device=device),
                                            7, **config)
                probs = S.processed_probs(row, t, k, p, mp)[0]
                counts = torch.bincount(tokens, minlength=V).double()
                pv = chi2_pvalue(counts, probs, n)
                report_line(counts[probs == 0].sum() == 0 and pv > 1e-6,
                            f"distribution V={V} {dtype} t={t} k={k} p={p} min_p={mp} {config or ''}: chi2 p={pv:.2e}")
    # 2. mixed rows (every path: gather+select, bisection, rejection, greedy): the reference's tokens, raw logprobs
    for V, shape in ((1000, "flat"), (128256 if gpu else 3000, "flat"), (128256 if gpu else 3000, "peaked")):
        x, params = make_case(64, V, shape, device, seed=V)
        params[1][::3] = torch.tensor([0, 5, 1500, 3000])[torch.arange(len(params[1][::3])) % 4].to(device)
        for dtype in (torch.float32, torch.bfloat16):
            xd = x.to(dtype)
            tokens, lp = S.sample_triton(xd, *params)
            ref, _ = S.sample_torch(xd, *params)
            support = S.processed_probs(xd, *params[:4]).gather(1, tokens[:, None])[:, 0] > 0
            greedy = params[0] <= 0
            truth = torch.log_softmax(xd.double(), 1).gather(1, tokens[:, None])[:, 0]
            err = (lp.double() - truth).abs().max().item()
            agree = (tokens == ref).double().mean().item()
            report_line(support.all() and torch.equal(tokens[greedy], xd[greedy].argmax(1)) and agree >= 0.98
                        and err < 1e-4, f"mixed rows V={V} {shape} {dtype}: {agree:.1%} tokens equal the reference's, "
                        f"{int((~support).sum())} outside the kept set, greedy exact, max logprob error {err:.1e}")
            alone = S.sample_triton(xd[5:6], *[q[5:6] for q in params])
            report_line(torch.equal(alone[0], tokens[5:6]) and torch.equal(alone[1], lp[5:6]),
                        f"row 5 alone equals row 5 in the batch (V={V} {dtype})")
    if gpu:
        report_line(check_cuda_graph(S, device), "CUDA graph: replay with new logits and offsets equals eager")
    return ok


def check_cuda_graph(S, device) -> bool:
    x, params = make_case(64, 128256, "peaked", device)
    from bench.harness import capture_graph
    run = lambda: S.sample_triton(x, *params)  # noqa: E731
    graph, out = capture_graph(run)
    x.normal_()
    params[5].add_(1)
    graph.replay()
    eager = run()
    return torch.equal(out[0], eager[0]) and torch.equal(out[1], eager[1])


def bench(device: torch.device, out_path: str | None, reps: int) -> None:
    from bench.harness import Table, compiled, copy_bandwidth, fmt_bytes, peak_memory, time_fn
    from metareward.kernels import sample as S

    gpu = device.type == "cuda"
    V = 128256 if gpu else 32000
    # B=256: the benchmark; B=1: one sequence decoding (pass 1 split over the vocabulary's chunks)
    cases = [(256, "peaked"), (256, "flat"), (1, "peaked")] if gpu else [(16, "peaked"), (16, "flat")]
    if not gpu:
        print(f"CPU: timing the torch reference only (the engine's CPU path), on B=16, V={V}")
    try:
        from flashinfer.sampling import top_k_top_p_sampling_from_logits
    except Exception:  # absent, or built for another CUDA / torch
        top_k_top_p_sampling_from_logits = None
    bw = copy_bandwidth(device)
    extra = {"case": f"V={V}, float32 logits; per row: temperature in {{0, 0.6, 1, 1.3}}, top_k in "
                     "{0, 20, 50, 1000}, top_p in {1, 0.9, 0.95}, min_p in {0, 0.05}",
             "copy bandwidth (GB/s, read+write)": round(bw / 1e9, 1),
             "bytes": "the logits read once, B*V*4 (131.3 MB at B=256): GB/s = that / median; no FLOP count (the "
                      "work is a few passes of compares, exps and a hash per element)",
             "timing": "CUDA events around each call, L2 flushed before each, one synchronize per run" if gpu
                       else "wall clock per call",
             "flashinfer": ("absent" if top_k_top_p_sampling_from_logits is None else
                            "top_k_top_p_sampling_from_logits on logits already divided by the temperature (the "
                            "division is not timed); no greedy rows (t=0 runs at 1), no min-p, no log-probs")}
    table = Table("batched sampling", device, ["B", "logits", "provider", "median_ms", "p20_ms", "p80_ms", "GB/s",
                                               "% copy bw", "speedup vs torch", "peak mem", "note"], out_path, extra)

    def run(B, shape, name, fn, base):
        try:
            tm = time_fn(fn, device, warmup=3, rep=reps, flush_l2=True)
            mem = peak_memory(fn, device)
        except Exception as e:  # say why instead of a number
            table.add({"B": B, "logits": shape, "provider": name, "note": f"{type(e).__name__}: {e}"[:120]})
            return None
        rate = B * V * 4 / (tm["median_ms"] / 1e3)
        table.add({"B": B, "logits": shape, "provider": name, "median_ms": tm["median_ms"], "p20_ms": tm["p20_ms"],
                   "p80_ms": tm["p80_ms"], "GB/s": rate / 1e9, "% copy bw": 100 * rate / bw,
                   "speedup vs torch": base / tm["median_ms"] if base else 1.0, "peak mem": fmt_bytes(mem)})
        return tm["median_ms"]

    baselines, inputs = {}, {}
    for B, shape in cases:
        x, (t, k, p, mp, seed, off) = inputs[B, shape] = make_case(B, V, shape, device)
        baselines[B, shape] = run(B, shape, "torch", lambda: S.sample_torch(x, t, k, p, mp, seed, off), None)
        if gpu:
            run(B, shape, "triton", lambda: S.sample_triton(x, t, k, p, mp, seed, off), baselines[B, shape])
        if gpu and top_k_top_p_sampling_from_logits is not None:
            xt, fi_k = x / torch.where(t > 0, t, 1.0)[:, None], torch.where(k > 0, k, V).int()
            run(B, shape, "flashinfer", lambda: top_k_top_p_sampling_from_logits(xt, fi_k, p, deterministic=True),
                baselines[B, shape])
    # torch.compile of the sort-based reference, last: its compilation takes the longest
    fn = compiled(S.sample_torch) if gpu else None
    for (B, shape), (x, params) in inputs.items() if fn is not None else ():
        run(B, shape, "torch.compile(torch)", lambda: fn(x, *params), baselines[B, shape])


if __name__ == "__main__":
    # @triton.jit reads TRITON_INTERPRET when triton is imported: set it before bench.harness imports metareward
    if "--check" in sys.argv and (not torch.cuda.is_available() or "cpu" in " ".join(sys.argv)):
        os.environ["TRITON_INTERPRET"] = "1"
    from bench.harness import cli

    sys.exit(cli(__doc__, bench, check, reps=20))
