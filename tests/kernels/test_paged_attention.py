import pytest
import torch

from metareward.kernels import paged_attention as pa
from metareward.kernels.dispatch import HAS_TRITON

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

# Protocol (Cut Cross-Entropy): both paths are measured against float64 attention over the same rounded
# inputs; the fast path may exceed torch's own error by TOL. BOUND caps torch's own error (so "torch" mode
# can fail too): half an output ulp for |out| < 4 (bf16 2^-7, fp16 2^-10, fp32 2^-22) plus slack for the
# fp32 math. In bf16 the kernel also rounds the softmax weights to bf16 before P @ V, as flash-attn does
# (seen here: up to +5e-3 over torch).
TOL = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 1.5e-3}
BOUND = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 1.5e-3}


def paged_case(lens, hq, hkv, d, page, dtype, shared_blocks=0, seed=0, share_all=False):
    """Dense per-sequence K/V scattered into shuffled cache blocks; unwritten slots hold NaN so any read
    past a context or through an unused table entry shows up. Sequence 1 (every sequence with share_all)
    shares sequence 0's first `shared_blocks` blocks (a prefix-cache hit)."""
    g = torch.Generator().manual_seed(seed)
    need = [-(-n // page) for n in lens]
    perm = torch.randperm(sum(need) + 3, generator=g)
    kc = torch.full((len(perm), page, hkv, d), float("nan"), dtype=dtype)
    vc = kc.clone()
    tables = torch.full((len(lens), max(need) + 2), -1, dtype=torch.int32)
    ks, vs, used = [], [], 0
    for b, n in enumerate(lens):
        k, v = torch.randn(2, n, hkv, d, generator=g).to(dtype)
        ids = perm[used:used + need[b]].clone()
        used += need[b]
        if shared_blocks and (b == 1 or (b > 1 and share_all)):
            ids[:shared_blocks] = tables[0, :shared_blocks]
            s = shared_blocks * page
            k[:s], v[:s] = ks[0][:s], vs[0][:s]
        tables[b, :need[b]] = ids
        for t in range(n):
            kc[ids[t // page], t % page], vc[ids[t // page], t % page] = k[t], v[t]
        ks.append(k)
        vs.append(v)
    q = torch.randn(len(lens), hq, d, generator=g).to(dtype)
    return q, kc, vc, tables, torch.tensor(lens, dtype=torch.int32), ks, vs


def dense_attention64(q, ks, vs, scale):
    # q: [B, Hq, D]; ks[b], vs[b]: [T_b, Hkv, D]; float64, one sequence at a time, no paging
    outs = []
    for qb, k, v in zip(q.double(), ks, vs):
        rep = qb.shape[0] // k.shape[1]
        k, v = k.double().repeat_interleave(rep, 1), v.double().repeat_interleave(rep, 1)  # [T, Hq, D]
        if len(k) == 0:
            outs.append(torch.zeros_like(qb))
            continue
        p = torch.softmax(torch.einsum("hd,thd->ht", qb, k) * scale, -1)
        outs.append(torch.einsum("ht,thd->hd", p, v))
    return torch.stack(outs)


def assert_close_to_truth(out, q, kc, vc, tables, lens, ks, vs, scale):
    truth = dense_attention64(q, ks, vs, scale)
    ref = pa.paged_attention_decode_torch(q, kc, vc, tables, lens, scale)
    err_fast = (out.double() - truth).abs().max().item()
    err_torch = (ref.double() - truth).abs().max().item()
    assert out.dtype == q.dtype and out.shape == q.shape
    assert err_torch <= BOUND[q.dtype], err_torch
    assert err_fast <= err_torch + TOL[q.dtype], (err_fast, err_torch)
    for b in (lens == 0).nonzero().flatten().tolist():
        assert torch.equal(out[b], torch.zeros_like(out[b])), "context 0 must give zeros"


CASES = [  # lens, hq, hkv, d, page, dtype, shared prefix blocks
    ([1], 4, 4, 16, 4, torch.float32, 0),
    ([5, 37, 16], 4, 2, 64, 8, torch.bfloat16, 0),  # 16: exactly two blocks
    ([150, 0, 1, 37, 64, 9, 33], 4, 1, 16, 4, torch.bfloat16, 0),  # 150: 38 blocks, 3 kernel iterations
    ([40, 29, 0], 4, 2, 16, 4, torch.float32, 5),  # shared prefix of 5 blocks between sequences 0 and 1
    ([13, 70, 6], 8, 2, 24, 6, torch.float16, 0),  # odd head_dim, page not a power of two
]


@pytest.mark.parametrize("lens,hq,hkv,d,page,dtype,shared", CASES)
def test_decode(kernel_mode, lens, hq, hkv, d, page, dtype, shared):
    q, kc, vc, tables, lens_t, ks, vs = paged_case(lens, hq, hkv, d, page, dtype, shared)
    out = pa.paged_attention_decode(q, kc, vc, tables, lens_t, d ** -0.5)
    assert_close_to_truth(out, q, kc, vc, tables, lens_t, ks, vs, d ** -0.5)


@needs_triton
@pytest.mark.parametrize("splits", [2, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_split_k(splits, dtype):
    # 5 splits of a 33-token context: later splits are empty and must drop out of the reduction
    q, kc, vc, tables, lens_t, ks, vs = paged_case([150, 33, 0, 64], 4, 2, 16, 4, dtype, 2, seed=1)
    out = pa.paged_attention_decode_triton(q, kc, vc, tables, lens_t, 0.3, num_splits=splits)
    assert_close_to_truth(out, q, kc, vc, tables, lens_t, ks, vs, 0.3)
    one = pa.paged_attention_decode_triton(q, kc, vc, tables, lens_t, 0.3, num_splits=1)
    assert (out.float() - one.float()).abs().max() <= TOL[dtype]


@pytest.mark.parametrize("lens,page,dtype", [
    ([40, 29, 21, 33], 4, torch.float32),
    ([30, 45, 31], 6, torch.bfloat16),  # row 0 ends exactly where the shared blocks end: no tail of its own
])
def test_decode_prefix_shared_by_every_row(kernel_mode, lens, page, dtype):
    # the torch path attends the blocks every row shares once for all rows (cascade); same result
    q, kc, vc, tables, lens_t, ks, vs = paged_case(lens, 8, 2, 16, page, dtype, 5, seed=3, share_all=True)
    assert pa._shared_blocks(tables.long(), lens_t, page) == 5
    out = pa.paged_attention_decode(q, kc, vc, tables, lens_t, 0.25)
    assert_close_to_truth(out, q, kc, vc, tables, lens_t, ks, vs, 0.25)


def test_decode_empty_batch_and_all_zero(kernel_mode):
    q, kc, vc, tables, lens_t, _, _ = paged_case([0, 0], 2, 1, 16, 4, torch.float32)
    out = pa.paged_attention_decode(q, kc, vc, tables, lens_t, 0.25)
    assert torch.equal(out, torch.zeros_like(q))
    assert pa.paged_attention_decode(q[:0], kc, vc, tables[:0], lens_t[:0], 0.25).shape == (0, 2, 16)


def test_num_splits_for():
    assert pa.num_splits_for(256 * 8, 2048, 132) == 1  # Llama-3-8B at batch 256: programs fill the GPU
    assert pa.num_splits_for(8 * 8, 2048, 132) == 8  # batch 8: capped at 256 tokens per split
    assert pa.num_splits_for(4, 1 << 20, 132) == 32  # batch 1, long table: capped at 32 splits
    assert pa.num_splits_for(4, 100, 132) == 1  # too short to split


@pytest.mark.parametrize("dtype,page,d,slot_dtype", [(torch.float32, 4, 16, torch.int64),
                                                     (torch.bfloat16, 6, 24, torch.int32)])
def test_store_kv(kernel_mode, dtype, page, d, slot_dtype):
    hkv, n = 2, 9
    g = torch.Generator().manual_seed(2)
    kc = torch.randn(5, page, hkv, d, generator=g).to(dtype)
    vc = torch.randn(5, page, hkv, d, generator=g).to(dtype)
    before_k, before_v = kc.clone(), vc.clone()
    qkv = torch.randn(n, 3, hkv, d, generator=g).to(dtype)
    k, v = qkv[:, 1], qkv[:, 2]  # strided views, as split from a fused qkv projection
    slots = torch.tensor([0, -1, page - 1, page, 4 * page + 1, -7, 2 * page + 3, 5 * page - 1, page + 2],
                         dtype=slot_dtype)
    pa.store_kv(k, v, kc, vc, slots)
    flat_k, flat_v = kc.view(-1, hkv, d), vc.view(-1, hkv, d)
    written = torch.zeros(5 * page, dtype=torch.bool)
    for i, s in enumerate(slots.tolist()):
        if s >= 0:
            assert torch.equal(flat_k[s], k[i]) and torch.equal(flat_v[s], v[i])
            written[s] = True
    assert torch.equal(flat_k[~written], before_k.view(-1, hkv, d)[~written])
    assert torch.equal(flat_v[~written], before_v.view(-1, hkv, d)[~written])
    after = kc.clone()
    pa.store_kv(k[:0], v[:0], kc, vc, slots[:0])  # N = 0 is a no-op
    assert torch.equal(kc, after)


def test_store_then_decode_matches_dense(kernel_mode):
    # the engine's decode step: store the new token's K/V, then attend over the context including it
    q, kc, vc, tables, lens_t, ks, vs = paged_case([7, 10], 4, 2, 16, 4, torch.float32, seed=3)  # room in the last block
    new_k, new_v = torch.randn(2, 2, 2, 16).unbind(0)
    slots = torch.stack([tables[b, n // 4].long() * 4 + n % 4 for b, n in enumerate(lens_t.tolist())])
    pa.store_kv(new_k, new_v, kc, vc, slots)
    ks = [torch.cat([k, nk[None]]) for k, nk in zip(ks, new_k)]
    vs = [torch.cat([v, nv[None]]) for v, nv in zip(vs, new_v)]
    out = pa.paged_attention_decode(q, kc, vc, tables, lens_t + 1, 0.25)
    assert_close_to_truth(out, q, kc, vc, tables, lens_t + 1, ks, vs, 0.25)


@pytest.mark.parametrize("fn", [pa.paged_attention_decode_torch, pa.paged_attention_decode_triton])
def test_decode_rejects_bad_inputs(fn):
    q, kc, vc, tables, lens_t, _, _ = paged_case([3], 4, 2, 16, 4, torch.float32)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        fn(q[:, :3], kc, vc, tables, lens_t, 1.0)
    with pytest.raises(ValueError, match="dtypes"):
        fn(q.double(), kc, vc, tables, lens_t, 1.0)
    with pytest.raises(ValueError, match="block_tables"):
        fn(q, kc, vc, tables[:, 0], lens_t, 1.0)


@pytest.mark.parametrize("share_all", [False, True])
def test_torch_decode_in_row_chunks(monkeypatch, share_all):
    # the CPU path gathers the rows' own blocks a few rows at a time; one row per chunk here, including rows
    # whose context ends exactly where the shared blocks end (no tail of their own)
    monkeypatch.setattr(pa, "_CHUNK_ELEMENTS", 1)
    q, kc, vc, tables, lens_t, ks, vs = paged_case([30, 45, 31, 30, 7 if not share_all else 33], 8, 2, 16, 6,
                                                   torch.float32, 5, seed=4, share_all=share_all)
    out = pa.paged_attention_decode_torch(q, kc, vc, tables, lens_t, 0.25)
    assert_close_to_truth(out, q, kc, vc, tables, lens_t, ks, vs, 0.25)


def test_torch_decode_chunks_of_empty_rows(monkeypatch):
    monkeypatch.setattr(pa, "_CHUNK_ELEMENTS", 1)  # one row per chunk: some chunks hold only an empty row
    q, kc, vc, tables, lens_t, ks, vs = paged_case([0, 13, 0, 5], 4, 2, 16, 4, torch.float32, seed=5)
    out = pa.paged_attention_decode_torch(q, kc, vc, tables, lens_t, 0.25)
    assert_close_to_truth(out, q, kc, vc, tables, lens_t, ks, vs, 0.25)
