"""Paged decode attention and KV write: the Triton kernels against the torch reference and flash-attn's
flash_attn_with_kvcache(block_table=...), stated against the copy bandwidth measured in the same run.

  python3 bench/bench_paged_attention.py [--device cuda|cpu] [--out results/paged_attention.json]
  python3 bench/bench_paged_attention.py --check   # Triton vs float64 truth; exit 1 on failure (bench/gpu.sh)

GPU case: batch 256, context 2048, Llama-3-8B heads (32 q, 8 kv, dim 128), bf16, pages of 16 and 256
tokens. Ceiling: one read of the KV cache, 2*B*T*Hkv*D*2 bytes = 2.15 GB, at the copy bandwidth."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# metareward and bench.harness are imported inside the functions: importing them imports triton, which
# must happen after main() has decided on TRITON_INTERPRET

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}  # fast error <= torch error + TOL


def paged_cache(batch, lens, hkv, d, page, dtype, device, seed=0):
    # shuffled block ids (a fragmented cache); rows past each context stay NaN so a masking bug shows
    g = torch.Generator(device).manual_seed(seed)
    per_seq = max(-(-max(lens) // page), 1)
    kc = torch.randn(batch * per_seq + 1, page, hkv, d, generator=g, device=device).to(dtype)
    vc = torch.randn(kc.shape, generator=g, device=device).to(dtype)
    tables = torch.randperm(len(kc), generator=g, device=device)[:batch * per_seq].view(batch, per_seq).int()
    for b, n in enumerate(lens):  # poison the tail of each last block
        if n % page:
            kc[tables[b, n // page], n % page:] = float("nan")
            vc[tables[b, n // page], n % page:] = float("nan")
    return kc, vc, tables, torch.tensor(lens, dtype=torch.int32, device=device)


def dense_truth(q, kc, vc, tables, lens, scale):
    # float64 attention over each sequence's unpaged K/V, one sequence at a time
    out = torch.zeros(q.shape, dtype=torch.float64, device=q.device)
    page, hkv = kc.shape[1], kc.shape[2]
    for b, n in enumerate(lens.tolist()):
        if n == 0:
            continue
        ids = tables[b, :-(-n // page)].long()
        k = kc[ids].flatten(0, 1)[:n].double().repeat_interleave(q.shape[1] // hkv, 1)  # [T, Hq, D]
        v = vc[ids].flatten(0, 1)[:n].double().repeat_interleave(q.shape[1] // hkv, 1)
        p = torch.softmax(torch.einsum("hd,thd->ht", q[b].double(), k) * scale, -1)
        out[b] = torch.einsum("ht,thd->hd", p, v)
    return out


def check(device: torch.device) -> bool:
    from metareward.kernels import paged_attention as pa

    gpu = device.type == "cuda"
    long = (3000, 517) if gpu else (150, 37)  # the interpreter runs ~1000x slower: short contexts on CPU
    gen = torch.Generator().manual_seed(0)
    cases = [  # batch contexts, hq, hkv, d, page, dtype
        ([long[0], 0, 1, 16, long[1], 2048 if gpu else 64], 32, 8, 128, 16, torch.bfloat16),  # Llama-3-8B heads
        ([long[0], long[1], 0, 255], 32, 8, 128, 256, torch.bfloat16),
        ([long[1], 5, long[0]], 28, 4, 128, 32, torch.float32),  # Qwen2-7B heads: group 7, padded to 16
        ([long[1], 1, 33], 8, 8, 64, 16, torch.float16),
    ]
    ok = True
    for i, (lens, hq, hkv, d, page, dtype) in enumerate(cases):
        kc, vc, tables, lens_t = paged_cache(len(lens), lens, hkv, d, page, dtype, device, seed=i)
        q = torch.randn(len(lens), hq, d, generator=gen).to(device, dtype)
        scale = d ** -0.5
        truth = dense_truth(q, kc, vc, tables, lens_t, scale)
        err_torch = (pa.paged_attention_decode_torch(q, kc, vc, tables, lens_t, scale).double() - truth).abs().max()
        for splits in (None, 3):
            out = pa.paged_attention_decode_triton(q, kc, vc, tables, lens_t, scale, num_splits=splits)
            err = (out.double() - truth).abs().max()
            good = bool(err <= err_torch + TOL[dtype]) and bool(out[lens_t == 0].eq(0).all())
            ok &= good
            print(f"decode {'ok  ' if good else 'FAIL'} lens={lens} heads={hq}/{hkv} d={d} page={page} {dtype} "
                  f"splits={splits or 'auto'}: triton err {err:.2e}, torch err {err_torch:.2e}")
        n = len(kc) * page  # store_kv: random distinct slots, every third skipped, exact match with torch
        slots = torch.randperm(n, generator=gen)[:40].to(device)
        slots[::3] = -1
        k, v = torch.randn(2, 40, hkv, d, generator=gen).to(device, dtype).unbind(0)
        a, b = kc.clone(), vc.clone()
        pa.store_kv_triton(k, v, kc, vc, slots)
        pa.store_kv_torch(k, v, a, b, slots)
        good = torch.equal(kc.nan_to_num(7.0), a.nan_to_num(7.0)) and torch.equal(vc.nan_to_num(7.0), b.nan_to_num(7.0))
        ok &= good
        print(f"store_kv {'ok  ' if good else 'FAIL'} heads={hkv} d={d} page={page} {dtype}")
    if gpu:
        ok &= check_cuda_graph(pa, device)
    return ok


def check_cuda_graph(pa, device) -> bool:
    # the engine captures decode in CUDA graphs: replay with new contexts / queries must match eager
    # 8 x 8 programs and a 1008-token table: the auto heuristic picks split-K, so the reduce is captured too
    kc, vc, tables, lens = paged_cache(8, [1000] * 8, 8, 128, 16, torch.bfloat16, device)
    q = torch.randn(8, 32, 128, device=device, dtype=torch.bfloat16)
    from bench.harness import capture_graph
    run = lambda: pa.paged_attention_decode_triton(q, kc, vc, tables, lens, 0.1)  # noqa: E731
    graph, out = capture_graph(run)
    q.normal_()
    lens.copy_(torch.tensor([0, 1, 17, 100, 999, 1000, 64, 5], device=device))
    graph.replay()
    good = torch.equal(out, run())
    print(f"cuda graph {'ok  ' if good else 'FAIL'}: replay with new q and contexts equals eager")
    return good


def bench(device: torch.device, out_path: str | None, reps: int) -> None:
    from bench.harness import Table, copy_bandwidth, fmt_bytes, peak_memory, time_fn
    from metareward.kernels import paged_attention as pa

    gpu = device.type == "cuda"
    if gpu:
        batch, ctx, hq, hkv, d, dtype, pages = 256, 2048, 32, 8, 128, torch.bfloat16, (16, 256)
    else:
        batch, ctx, hq, hkv, d, dtype, pages = 8, 512, 8, 2, 64, torch.float32, (16,)
        print("CPU: timing the torch reference paths only (the engine's CPU path), on a small shape")
    try:
        from flash_attn import flash_attn_with_kvcache
    except Exception:  # absent, or built for another CUDA / torch
        flash_attn_with_kvcache = None
    bw = copy_bandwidth(device)
    scale = d ** -0.5
    q = torch.randn(batch, hq, d, device=device, dtype=dtype)
    kv_bytes = 2 * batch * ctx * hkv * d * dtype.itemsize  # q and out (B*Hq*D each) add 0.2%: left out
    extra = {"case": f"batch {batch}, context {ctx}, heads {hq}/{hkv}, head_dim {d}, {dtype}",
             "copy bandwidth (GB/s, read+write)": round(bw / 1e9, 1),
             "bytes": f"decode: the KV cache read once, 2*B*T*Hkv*D*{dtype.itemsize} = {kv_bytes / 1e9:.3f} GB; "
                      "store_kv: K and V read once and written once, 4*N*Hkv*D*bytes (GB/s = that / median)",
             "FLOP": f"decode: 4*B*Hq*T*D = {4 * batch * hq * ctx * d / 1e9:.1f} GFLOP (QK^T and PV; memory-bound "
                     "at ~1 FLOP a byte); store_kv: none",
             "timing": "CUDA events around each call, L2 flushed before each, one synchronize per run" if gpu
                       else "wall clock per call",
             "torch.compile": "not run: the torch paths read the context lengths on the host (.tolist()) and index "
                              "with data-dependent masks, so there is no graph to compile",
             "flash-attn": "absent" if flash_attn_with_kvcache is None else "present"}
    table = Table("paged decode attention / store_kv", device,
                  ["op", "provider", "page", "median_us", "p20_us", "p80_us", "GB/s", "% copy bw", "peak mem",
                   "note"], out_path, extra)

    def row(op, provider, page, fn, nbytes):
        try:
            t = time_fn(fn, device, warmup=3, rep=reps, flush_l2=True)
            mem = peak_memory(fn, device)
        except Exception as e:  # e.g. a page size flash-attn rejects: say so instead of a number
            table.add({"op": op, "provider": provider, "page": page, "note": f"{type(e).__name__}: {e}"[:100]})
            return
        rate = nbytes / (t["median_ms"] / 1e3)
        table.add({"op": op, "provider": provider, "page": page, "median_us": t["median_ms"] * 1e3,
                   "p20_us": t["p20_ms"] * 1e3, "p80_us": t["p80_ms"] * 1e3, "GB/s": rate / 1e9,
                   "% copy bw": 100 * rate / bw, "peak mem": fmt_bytes(mem), "note": ""})

    for page in pages:
        kc, vc, tables, lens = paged_cache(batch, [ctx] * batch, hkv, d, page, dtype, device)
        args = (q, kc, vc, tables, lens, scale)
        if gpu:
            row("decode", "triton", page, lambda: pa.paged_attention_decode_triton(*args), kv_bytes)
        row("decode", "torch", page, lambda: pa.paged_attention_decode_torch(*args), kv_bytes)
        if gpu and flash_attn_with_kvcache is not None:
            fa = lambda: flash_attn_with_kvcache(q[:, None], kc, vc, cache_seqlens=lens,  # noqa: E731
                                                 block_table=tables, softmax_scale=scale)
            row("decode", "flash-attn", page, fa, kv_bytes)
        for n in (batch, 16384 if gpu else 1024):  # one decode step; one prefill chunk
            slots = torch.randperm(len(kc) * page, device=device)[:n]
            k = torch.randn(n, hkv, d, device=device, dtype=dtype)
            moved = 2 * 2 * n * hkv * d * dtype.itemsize  # K and V, each read once and written once
            if gpu:
                row(f"store_kv N={n}", "triton", page, lambda: pa.store_kv_triton(k, k, kc, vc, slots), moved)
            row(f"store_kv N={n}", "torch", page, lambda: pa.store_kv_torch(k, k, kc, vc, slots), moved)


if __name__ == "__main__":
    # @triton.jit reads TRITON_INTERPRET when triton is imported: set it before bench.harness imports metareward
    if "--check" in sys.argv and (not torch.cuda.is_available() or "cpu" in " ".join(sys.argv)):
        os.environ["TRITON_INTERPRET"] = "1"
    from bench.harness import cli

    sys.exit(cli(__doc__, bench, check, reps=20))
