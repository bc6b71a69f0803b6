"""Paged KV cache ops: `store_kv` writes the new tokens' K/V into their cache slots, and
`paged_attention_decode` attends one new query token per sequence over its cached tokens.

Cache layout per layer (flash-attn's paged layout, so the engine can use flash-attn for prefill):
k_cache, v_cache: [num_blocks, page, num_kv_heads, head_dim]; token t of a sequence lives in block
block_tables[b, t // page] at offset t % page; slot = block * page + offset. The Triton kernels gather
K/V rows token by token, so any page size works (no power-of-two requirement)."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from metareward.kernels.dispatch import HAS_TRITON, interpreting, tl, triton, use_triton

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256  # the [group, D] accumulator plus two [BLOCK_N, D] tiles must fit in registers / smem

if HAS_TRITON:

    @triton.jit
    def _store_kv_kernel(k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr, s_kn, s_kh, s_vn, s_vh, s_cb, s_cs, s_ch,
                         H, D, PAGE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
        # one program per token: copy its [H, D] key and value into slot `slot` (skipped when slot < 0)
        n = tl.program_id(0).to(tl.int64)
        slot = tl.load(slot_ptr + n).to(tl.int64)  # int64: block * stride overflows int32 on a >4 GiB cache
        h = tl.arange(0, BLOCK_H)[:, None]
        d = tl.arange(0, BLOCK_D)[None, :]
        # broadcast the slot first: the interpreter turns `int1 tensor & int1 scalar` into int32 (Triton 3.9)
        mask = (h < H) & (d < D) & (tl.broadcast_to(slot, [BLOCK_H, 1]) >= 0)
        dst = (slot // PAGE) * s_cb + (slot % PAGE) * s_cs + h * s_ch + d
        tl.store(kc_ptr + dst, tl.load(k_ptr + n * s_kn + h * s_kh + d, mask=mask), mask=mask)
        tl.store(vc_ptr + dst, tl.load(v_ptr + n * s_vn + h * s_vh + d, mask=mask), mask=mask)

    @triton.jit
    def _decode_kernel(q_ptr, kc_ptr, vc_ptr, bt_ptr, ctx_ptr, out_ptr, lse_ptr, qk_scale,
                       s_qb, s_qh, s_cb, s_cs, s_ch, s_bt, s_ob, s_oh, s_os, G, D,
                       PAGE: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_G: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
                       DOT_F32: tl.constexpr):
        # program (b, kv head, split): the G query heads sharing this kv head, over this split's share of
        # the sequence's tokens, BLOCK_N tokens at a time with an online softmax (base 2: exp2 is one
        # instruction). Each K/V row is read once for all G heads: q [BLOCK_G, D] @ k^T [D, BLOCK_N] on the
        # tensor cores, BLOCK_G padded to 16 (tl.dot's minimum M) with zero query rows. DOT_F32 (interpreter
        # only: its dot multiplies bfloat16 bit patterns as integers) feeds the same bf16 values as fp32,
        # which is exact, so the products and fp32 accumulation match the tensor-core path.
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        split = tl.program_id(2)
        ctx = tl.load(ctx_ptr + b)
        per_split = tl.cdiv(tl.cdiv(ctx, NUM_SPLITS), BLOCK_N) * BLOCK_N
        start = split * per_split
        end = tl.minimum(start + per_split, ctx)

        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, BLOCK_D)
        n = tl.arange(0, BLOCK_N)
        h = kvh * G + g
        gd_mask = (g < G)[:, None] & (d < D)[None, :]
        q = tl.load(q_ptr + b * s_qb + h[:, None] * s_qh + d[None, :], mask=gd_mask, other=0.0)  # [G, D]
        if DOT_F32:
            q = q.to(tl.float32)

        m = tl.full([BLOCK_G], float("-inf"), tl.float32)  # running max (log2 units)
        l = tl.zeros([BLOCK_G], tl.float32)  # running sum of exp2(s - m)
        acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
        bt_row = bt_ptr + b * s_bt
        nxt = tl.load(bt_row + (start + n) // PAGE, mask=start + n < end, other=0)
        for t0 in range(start, end, BLOCK_N):
            tok = t0 + n
            valid = tok < end
            # the next tile's block ids, one iteration ahead: K/V addresses then depend only on values carried
            # into the iteration, so Triton's pipeliner double-buffers K and V (with the ids loaded in the same
            # iteration it kept one buffer each: num_stages had no effect)
            blk = nxt.to(tl.int64)
            nxt = tl.load(bt_row + (tok + BLOCK_N) // PAGE, mask=tok + BLOCK_N < end, other=0)
            row = blk * s_cb + (tok % PAGE) * s_cs + kvh * s_ch  # [N] element offset of each token's row
            kv_mask = valid[:, None] & (d < D)[None, :]  # masked rows read nothing: stale or NaN slots never leak
            k = tl.load(kc_ptr + row[:, None] + d[None, :], mask=kv_mask, other=0.0)  # [N, D]
            if DOT_F32:
                k = k.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [G, N] fp32
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))  # finite: token t0 is always valid
            alpha = tl.exp2(m - m_new)
            p = tl.exp2(s - m_new[:, None])
            l = l * alpha + tl.sum(p, 1)
            v = tl.load(vc_ptr + row[:, None] + d[None, :], mask=kv_mask, other=0.0)  # [N, D]
            p = p.to(v.dtype)  # P @ V at the cache's precision (bf16 tensor cores), accumulated in fp32
            if DOT_F32:
                p, v = p.to(tl.float32), v.to(tl.float32)
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
            m = m_new

        o = acc / tl.where(l > 0, l, 1.0)[:, None]  # an empty range (context 0) gives zeros, not NaN
        dst = out_ptr + b * s_ob + h[:, None] * s_oh + split * s_os + d[None, :]
        tl.store(dst, o.to(out_ptr.dtype.element_ty), mask=gd_mask)
        if NUM_SPLITS > 1:  # log-sum-exp of this split (-inf when empty) for the reduce kernel
            lse = m + tl.log2(tl.where(l > 0, l, 1.0))
            tl.store(lse_ptr + (b * tl.num_programs(1) * G + h) * NUM_SPLITS + split, lse, mask=g < G)

    @triton.jit
    def _reduce_kernel(part_ptr, lse_ptr, out_ptr, s_ob, s_oh, D, NUM_SPLITS: tl.constexpr,
                       BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
        # program (b, q head): out = sum_s w_s o_s / sum_s w_s with w_s = 2^(lse_s - max lse)
        b = tl.program_id(0)
        h = tl.program_id(1)
        base = (b * tl.num_programs(1) + h) * NUM_SPLITS
        s = tl.arange(0, BLOCK_S)
        d = tl.arange(0, BLOCK_D)
        lse = tl.load(lse_ptr + base + s, mask=s < NUM_SPLITS, other=float("-inf"))
        mx = tl.max(lse, 0)
        w = tl.exp2(lse - tl.where(mx == float("-inf"), 0.0, mx))  # all empty (context 0): w = 0
        part = tl.load(part_ptr + (base + s[:, None]) * D + d[None, :],
                       mask=(s < NUM_SPLITS)[:, None] & (d < D)[None, :], other=0.0)
        den = tl.sum(w, 0)
        o = tl.sum(w[:, None] * part, 0) / tl.where(den > 0, den, 1.0)
        tl.store(out_ptr + b * s_ob + h * s_oh + d, o.to(out_ptr.dtype.element_ty), mask=d < D)


def _check_store(k, v, k_cache, v_cache, slot_mapping) -> None:
    if k.dim() != 3 or k.shape != v.shape or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"store_kv: k/v {tuple(k.shape)}/{tuple(v.shape)} must be [N, H, D] and caches "
                         f"{tuple(k_cache.shape)}/{tuple(v_cache.shape)} [blocks, page, H, D]")
    if k.shape[1:] != k_cache.shape[2:]:
        raise ValueError(f"store_kv: k {tuple(k.shape)} does not match cache heads/dim {tuple(k_cache.shape[2:])}")
    if not (k.dtype == v.dtype == k_cache.dtype == v_cache.dtype):
        raise ValueError(f"store_kv: dtypes differ: k {k.dtype}, v {v.dtype}, caches {k_cache.dtype}/{v_cache.dtype}")
    if slot_mapping.shape != (k.shape[0],) or slot_mapping.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"store_kv: slot_mapping must be int32/int64 [{k.shape[0]}], got "
                         f"{slot_mapping.dtype} {tuple(slot_mapping.shape)}")


def _check_decode(q, k_cache, v_cache, block_tables, context_lens) -> None:
    if q.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"paged_attention_decode: q {tuple(q.shape)} must be [B, Hq, D] and caches "
                         f"{tuple(k_cache.shape)}/{tuple(v_cache.shape)} [blocks, page, Hkv, D]")
    (b, hq, d), hkv = q.shape, k_cache.shape[2]
    if k_cache.shape[3] != d or hq % hkv:
        raise ValueError(f"paged_attention_decode: q {tuple(q.shape)} incompatible with cache {tuple(k_cache.shape)} "
                         "(head_dim must match, q heads a multiple of kv heads)")
    if q.dtype not in DTYPES or not (q.dtype == k_cache.dtype == v_cache.dtype):
        raise ValueError(f"paged_attention_decode: dtypes q {q.dtype}, caches {k_cache.dtype}/{v_cache.dtype}; "
                         "need one of float32/bfloat16/float16")
    if block_tables.dim() != 2 or block_tables.shape[0] != b or context_lens.shape != (b,):
        raise ValueError(f"paged_attention_decode: block_tables {tuple(block_tables.shape)} must be [{b}, max_blocks] "
                         f"and context_lens {tuple(context_lens.shape)} [{b}]")
    if block_tables.dtype not in (torch.int32, torch.int64) or context_lens.dtype not in (torch.int32, torch.int64):
        raise ValueError("paged_attention_decode: block_tables and context_lens must be int32 (or int64)")


def _check_triton(*tensors) -> None:
    dev = tensors[0].device
    for t in tensors:
        if t.device != dev:
            raise ValueError(f"all tensors must be on one device, got {t.device} and {dev}")
        if t.stride(-1) != 1:  # the kernels assume unit stride on the last dim (vectorized 16-byte access)
            raise ValueError(f"tensor of shape {tuple(t.shape)} needs a contiguous last dim, strides {t.stride()}")


# ---------------------------------------------------------------------------------------------- store_kv

def store_kv_torch(k, v, k_cache, v_cache, slot_mapping) -> None:
    # k, v: [N, Hkv, D]; caches: [blocks, page, Hkv, D]. The boolean mask is a host sync on CUDA, where the
    # Triton kernel runs instead; on CPU it is free.
    _check_store(k, v, k_cache, v_cache, slot_mapping)
    keep = slot_mapping >= 0
    slot = slot_mapping[keep].long()
    page = k_cache.shape[1]
    blk, off = slot // page, slot % page
    k_cache[blk, off] = k[keep]  # index_put on the first two dims writes through any cache strides
    v_cache[blk, off] = v[keep]


def store_kv_triton(k, v, k_cache, v_cache, slot_mapping) -> None:
    _check_store(k, v, k_cache, v_cache, slot_mapping)
    _check_triton(k, v, k_cache, v_cache, slot_mapping)
    if k_cache.stride() != v_cache.stride():
        raise ValueError(f"store_kv: k_cache strides {k_cache.stride()} != v_cache strides {v_cache.stride()}")
    n, h, d = k.shape
    if n == 0:
        return
    bh, bd = triton.next_power_of_2(h), triton.next_power_of_2(d)
    _store_kv_kernel[(n,)](k, v, k_cache, v_cache, slot_mapping, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                           *k_cache.stride()[:3], h, d, PAGE=k_cache.shape[1], BLOCK_H=bh, BLOCK_D=bd,
                           num_warps=4 if bh * bd <= 2048 else 8)


def store_kv(k, v, k_cache, v_cache, slot_mapping) -> None:
    (store_kv_triton if use_triton(k) else store_kv_torch)(k, v, k_cache, v_cache, slot_mapping)


# --------------------------------------------------------------------------------- paged_attention_decode

def paged_attention_decode_torch(q, k_cache, v_cache, block_tables, context_lens, scale):
    # q: [B, Hq, D]; caches: [blocks, page, Hkv, D] -> [B, Hq, D]. The engine's CPU decode path, in fp32.
    # Judge and meta-judge batches share long prefixes (rubric + question + response): the blocks that every
    # row of the batch starts with are attended once for all rows together (cascade attention), and only
    # each row's own tail is gathered. At 96 judge rows over an 80-block rubric this gathers ~6x fewer
    # K/V bytes than one gather per row. The tails go in chunks of rows whose K/V fit in a few MB: one
    # [B, T, Hkv, D] gather at B=320 would be a fresh, page-faulting 100+ MB buffer per layer and step.
    # It syncs on the context lengths (free on CPU); the Triton path never syncs.
    _check_decode(q, k_cache, v_cache, block_tables, context_lens)
    b, hq, d = q.shape
    nb, page, hkv, _ = k_cache.shape
    g = hq // hkv
    lens = context_lens.tolist()
    nblk = min(block_tables.shape[1], -(-max(lens) // page)) if b else 0
    if nblk == 0:
        return q.new_zeros(q.shape)
    bt = block_tables[:, :nblk].long().clamp(0, nb - 1)  # entries past a context (e.g. -1) are masked below
    shared = _shared_blocks(bt, context_lens, page) if b > 1 else 0
    if not shared:  # torch's fused CPU attention over each chunk of rows: ~3x the manual softmax below
        rows = max(1, _CHUNK_ELEMENTS // (nblk * page * hkv * d))
        out = torch.cat([_rows_sdpa(q[r:r + rows], k_cache, v_cache, bt[r:r + rows], lens[r:r + rows], scale)
                         for r in range(0, b, rows)])
        return out.masked_fill_((context_lens == 0)[:, None, None], 0.0).to(q.dtype)
    qf = q.float().view(b, hkv, g, d) * scale
    parts = []
    if shared:  # every row attends to all S shared tokens
        kp = k_cache.index_select(0, bt[0, :shared]).view(shared * page, hkv, d).float()  # [S, Hkv, D]
        vp = v_cache.index_select(0, bt[0, :shared]).view(shared * page, hkv, d).float()
        parts.append(_partial(torch.einsum("bhgd,shd->bhgs", qf, kp), vp.transpose(0, 1)))
    if nblk > shared:
        rows = max(1, _CHUNK_ELEMENTS // ((nblk - shared) * page * hkv * d))
        parts.append(tuple(torch.cat(x) for x in zip(*(
            _tail(qf[r:r + rows], k_cache, v_cache, bt[r:r + rows], lens[r:r + rows], shared, page)
            for r in range(0, b, rows)))))
    out = _merge(parts).reshape(b, hq, d)
    return out.masked_fill_((context_lens == 0)[:, None, None], 0.0).to(q.dtype)  # empty rows: 0, not NaN


_CHUNK_ELEMENTS = 1 << 20  # K (and V) elements gathered at once by the CPU decode path: 4 MB in fp32


def _gather(cache, bt, lens, start: int, page: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K or V of rows' blocks from block `start` on: ([R, T, H, D] float32, valid [R, T]). Slots past a
    context may hold NaN (stale or never-written): they are zeroed, since neither a -inf mask on the scores
    nor a 0 weight in P @ V keeps a NaN from spreading."""
    r, nblk = bt.shape[0], -(-max(lens) // page) - start
    t = nblk * page
    x = cache.index_select(0, bt[:, start:start + nblk].reshape(-1)).float().view(r * t, cache[0, 0].numel())
    valid = (torch.arange(start * page, start * page + t, device=bt.device)
             < torch.tensor(lens, device=bt.device)[:, None])
    x.index_fill_(0, (~valid).view(-1).nonzero().squeeze(1), 0.0)  # index_fill: only the stale rows are touched
    return x.view(r, t, *cache.shape[2:]), valid


def _rows_sdpa(q, k_cache, v_cache, bt, lens, scale):
    # q: [R, Hq, D] -> [R, Hq, D] over each row's own blocks
    page = k_cache.shape[1]
    if max(lens) == 0:
        return q.new_zeros(q.shape, dtype=torch.float32)
    k, valid = _gather(k_cache, bt, lens, 0, page)
    v, _ = _gather(v_cache, bt, lens, 0, page)
    return F.scaled_dot_product_attention(q.float()[:, :, None], k.transpose(1, 2), v.transpose(1, 2),
                                          attn_mask=valid[:, None, None, :], scale=scale, enable_gqa=True)[:, :, 0]


def _tail(qf, k_cache, v_cache, bt, lens, shared: int, page: int):
    # the rows' own blocks after the shared ones -> partial softmax results, [R, Hkv, G(, D)]
    r, hkv, g, d = qf.shape
    nblk = -(-max(lens) // page) - shared
    if nblk <= 0:  # these rows end where the shared blocks end
        return (qf.new_full((r, hkv, g), -torch.inf), qf.new_zeros(r, hkv, g), qf.new_zeros(r, hkv, g, d))
    k, valid = _gather(k_cache, bt, lens, shared, page)
    v, _ = _gather(v_cache, bt, lens, shared, page)
    scores = torch.matmul(qf, k.permute(0, 2, 3, 1))  # [R, Hkv, G, T]
    scores.masked_fill_(~valid[:, None, None, :], -torch.inf)
    return _partial(scores, v.permute(0, 2, 1, 3))  # v: [R, Hkv, T, D]


def _shared_blocks(bt: torch.Tensor, context_lens: torch.Tensor, page: int) -> int:
    """How many leading blocks every row of the batch has in common (and holds completely)."""
    same = (bt == bt[:1]).all(0).int().cumprod(0)  # [nblk]: 1 while every row agrees
    return min(int(same.sum()), int(context_lens.min()) // page)


def _partial(scores: torch.Tensor, v: torch.Tensor):
    # scores [..., T], v [..., T, D] (broadcast) -> (max [...], sum of exp [...], unnormalized output [..., D])
    m = scores.amax(-1)
    m_safe = torch.where(torch.isinf(m), torch.zeros_like(m), m)  # a row with no key: exp(-inf) = 0
    p = torch.exp(scores - m_safe[..., None])
    return m, p.sum(-1), p @ v


def _merge(parts):
    # log-sum-exp merge of partial softmax results over disjoint key sets
    if len(parts) == 1:
        m, s, o = parts[0]
        return o / torch.where(s > 0, s, torch.ones_like(s))[..., None]
    (m1, s1, o1), (m2, s2, o2) = parts
    m = torch.maximum(m1, m2)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    a1, a2 = torch.exp(m1 - m), torch.exp(m2 - m)
    s = s1 * a1 + s2 * a2
    return (o1 * a1[..., None] + o2 * a2[..., None]) / torch.where(s > 0, s, torch.ones_like(s))[..., None]


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def num_splits_for(programs: int, max_tokens: int, num_sms: int) -> int:
    # Split-K (flash-decoding) only when the (sequence, kv head) programs alone cannot keep every SM busy with
    # a few resident programs each: aim at 4 per SM. At B=256 with 8 kv heads there are 2048 programs for
    # 132 SMs (15.5 per SM), so this returns 1: splitting would add a second launch (a few us, next to
    # 2.15 GB of K/V reads, ~450 us even at the H200's 4.8 TB/s spec) and B*Hq*S*D*4 bytes of partials, for
    # no gain in occupancy. At B=8 it returns 8 for a 2048-token table. Inputs are shapes only, so the
    # grid is fixed under CUDA-graph capture. Each split keeps >= 256 tokens so its partial output
    # (G*D*4 bytes) stays under 2% of the K/V it reads (G=4, D=128, bf16: 2 KiB per 128 KiB).
    want = -(-4 * num_sms // max(programs, 1))
    return max(1, min(want, max_tokens // 256, 32))


def _decode_config(d: int, dtype: torch.dtype) -> tuple[int, int]:
    # (tokens per iteration, warps). K and V tiles of at most 16 KiB each (64 tokens x 128 dims x 2 bytes), held
    # in two pipeline buffers: ~70 KiB of shared memory, 3 programs per SM on sm_90 (bench/compile_report.py).
    # fp32 runs tl.dot as "ieee" (CUDA-core FMA, operand tiles in registers): at 4 warps, 32 tokens of head
    # dim 128 take 255 registers and spill 640 B; 8 warps hold them in 64.
    width = triton.next_power_of_2(d)
    block_n = max(16, min(64, 16384 // (width * dtype.itemsize)))
    return block_n, (8 if dtype == torch.float32 and block_n * width >= 4096 else 4)


def paged_attention_decode_triton(q, k_cache, v_cache, block_tables, context_lens, scale, num_splits=None):
    _check_decode(q, k_cache, v_cache, block_tables, context_lens)
    _check_triton(q, k_cache, v_cache, block_tables, context_lens)
    if k_cache.stride() != v_cache.stride():
        raise ValueError(f"k_cache strides {k_cache.stride()} != v_cache strides {v_cache.stride()}")
    (b, hq, d), (_, page, hkv, _) = q.shape, k_cache.shape
    if d > MAX_HEAD_DIM:
        raise ValueError(f"paged_attention_decode: head_dim {d} > {MAX_HEAD_DIM} is not supported by the kernel")
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if b == 0:
        return out
    g = hq // hkv
    block_n, warps = _decode_config(d, q.dtype)
    splits = num_splits or num_splits_for(b * hkv, block_tables.shape[1] * page, _num_sms(q.device))
    bg, bd = max(16, triton.next_power_of_2(g)), max(16, triton.next_power_of_2(d))
    # fp32 inputs must not be rounded to tf32 ("ieee"); 16-bit inputs take the backend default (None), and
    # so do bf16 values fed as fp32 to the interpreter's dot, where the precision is ignored
    fp32 = q.dtype == torch.float32
    common = dict(PAGE=page, NUM_SPLITS=splits, BLOCK_G=bg, BLOCK_N=block_n, BLOCK_D=bd,
                  DOT_PRECISION="ieee" if fp32 else None, DOT_F32=q.dtype == torch.bfloat16 and interpreting(),
                  num_warps=warps, num_stages=3)
    grid = (b, hkv, splits)
    args = (q, k_cache, v_cache, block_tables, context_lens)
    strides = (q.stride(0), q.stride(1), *k_cache.stride()[:3], block_tables.stride(0))
    if splits == 1:
        _decode_kernel[grid](*args, out, out, scale * LOG2E, *strides, out.stride(0), out.stride(1), 0, g, d,
                             **common)
        return out
    part = torch.empty(b, hq, splits, d, dtype=torch.float32, device=q.device)  # [B, Hq, S, D]
    lse = torch.empty(b, hq, splits, dtype=torch.float32, device=q.device)
    _decode_kernel[grid](*args, part, lse, scale * LOG2E, *strides, *part.stride()[:3], g, d, **common)
    _reduce_kernel[(b, hq)](part, lse, out, out.stride(0), out.stride(1), d, NUM_SPLITS=splits,
                            BLOCK_S=triton.next_power_of_2(splits), BLOCK_D=bd, num_warps=4)
    return out


def paged_attention_decode(q, k_cache, v_cache, block_tables, context_lens, scale):
    fn = paged_attention_decode_triton if use_triton(q) else paged_attention_decode_torch
    return fn(q, k_cache, v_cache, block_tables, context_lens, scale)
