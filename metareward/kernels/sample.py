"""Batched sampling: temperature -> top-k -> top-p -> min-p, one token per row, and its raw log-probability.

Randomness is Gumbel-max with counter-based noise: g[b, i] = Gumbel(hash(seed[b], offset[b], i)), and the sample
is the argmax over the kept tokens of z_i + g_i (z = logits / temperature). The noise is fixed per (row, token),
so the token is a function of the kept set alone, however it is found: the sort-free kernel is exact, a row never
depends on its batch, and the torch reference draws the very same token (bit for bit in the interpreter; on the GPU
the kernel's approximate exp/log can flip a near-tie in the last ulp).

Every filter keeps {i : z_i >= tau}, so the kernels' job is to find tau exactly while reading the row few times
(fp32, V=128256: 513 KB a row; B=256 is 131 MB, ~33 us a pass on an H200).
  pass 1 (_pass1_kernel, always): the row in CHUNK-wide chunks, spread over up to one program per chunk when the
    batch alone cannot fill the GPU (B=1 runs 32 programs at V=128256, not 1). Per chunk: raw max, sum of exp
    (logsumexp for the log-probs), tempered mass (top-p rows), group maxima of z, and (unless the row has top-k)
    the Gumbel argmax. A chunk's results depend on the chunk alone, and _sample_kernel merges them in one fixed
    order, so the split never changes a bit. Greedy rows and rows without filters end here: 1 pass.
  pass 2 (top-k; top-p or min-p when few tokens can survive): the group maxima (disjoint groups of tokens) bound
    tau from below (the k largest are k distinct tokens, so the k-th of them <= the k-th largest z; maxima that
    already carry p*S of the mass cut everything below them). The pass gathers every token above that bound into
    CAP slots; in registers, bisection on the float bits then gives the exact k-th value and top-p cut: 2 passes.
  otherwise (flat top-p, small min-p, overflow): rejection rounds. A pass checks the candidate c (mass above z_c)
    and takes the next candidate, the Gumbel argmax over {z > z_c}; c is kept with probability >= top_p, so top-p
    0.9 costs ~2.1 passes, min-p alone <= 2. The pivot z_c strictly increases: <= V rounds, always terminates.
  top-k whose candidates overflowed CAP (k > CAP/2, heavy ties): the exact k-th value by bisection on the row,
    both ends snapped to token values (<= 33 counting passes, rare), then the rejection rounds.
Passes after the first skip tiles whose chunk maximum (from pass 1, one load) is below the current bound: on
peaked LLM logits they read a few chunks, not the row. Compute per element is what keeps pass 1 near the memory
rate: the noise (a 32-bit hash and two logs) costs about as much as the rest of the pass, so top-k rows, which
draw from the gathered set anyway, skip it, a chunk whose max z + the largest possible noise cannot beat the best
key already seen skips it (exact: its tokens cannot win), rows without top-p (or at temperature 1) skip the
tempered sum, a chunk takes one max, one (sum, sum) and one (key, index) reduction, no per-tile ones, and on the
GPU the logs are lg2.approx (the noise needs no last-ulp accuracy).
Sorting (the torch reference; FlashInfer's top-k mask + softmax + rejection) reads and writes the row many times.
"""
from __future__ import annotations

from numbers import Integral, Real

import torch

from metareward.errors import UserError
from metareward.kernels.dispatch import HAS_TRITON, tl, triton, use_triton

if HAS_TRITON:
    from triton.language.extra import libdevice

NEG, POS = float("-inf"), float("inf")
_M32 = 0xFFFFFFFF
_MUL1, _MUL2, _SALT_A, _SALT_B = 0x21F0AAAD, 0x735A2D97, 0x2545F491, 0x1B873593  # < 2**31: int32 literals in Triton
_THIRD = 0.3333333432674408  # float32(1/3), spelled out so both paths round nothing
_jit = triton.jit if HAS_TRITON else (lambda fn: fn)
# the batch size and the programs per row are plain runtime ints in the kernels (Triton would compile a B == 1 /
# per_prog == 1 variant): one binary for every batch size computes a row's floats the very same way
_kernel = triton.jit(do_not_specialize=["B", "per_prog"]) if HAS_TRITON else (lambda fn: fn)
_NEG, _POS = (tl.constexpr(NEG), tl.constexpr(POS)) if HAS_TRITON else (NEG, POS)  # globals a kernel may read


# ------------------------------------------------------------------------------------------------ shared noise
def _mix32_torch(x):  # lowbias32 (C. Wellons): a full-avalanche bijection on 32 bits; int64 tensors hold the u32
    x = x ^ (x >> 16)
    x = (x * _MUL1) & _M32
    x = x ^ (x >> 15)
    x = (x * _MUL2) & _M32
    return x ^ (x >> 15)


def _row_keys_torch(seed: torch.Tensor, offset: torch.Tensor):  # [B] -> two [B] u32 keys (as int64), as _row_keys
    seed, offset = seed.long(), offset.long()
    a = _mix32_torch((seed & _M32) ^ _SALT_A)
    for word in ((seed >> 32) & _M32, offset & _M32, (offset >> 32) & _M32):
        a = _mix32_torch(a ^ word)
    return a | 1, _mix32_torch(a ^ _SALT_B)


def _noise_cols(a: torch.Tensor, b: torch.Tensor, v0: int, v1: int) -> torch.Tensor:
    # [B, v1 - v0] float32 Gumbel noise of columns v0..v1-1 from the row keys
    h = _mix32_torch((torch.arange(v0, v1, device=a.device) * a[:, None] + b[:, None]) & _M32)
    w = (h.float() + 0.5) * 2.0**-32  # uniform in (0, 1], 2^-32 resolution near 0
    # E = -log(1 - w) ~ Exp(1); the series keeps small E (the ones that win the argmax) at full relative precision
    e = torch.where(w < 2.0**-7, w * (1.0 + w * (0.5 + w * _THIRD)), -torch.log(1.0 - w))
    return -torch.log(e)


def gumbel_noise(seed: torch.Tensor, offset: torch.Tensor, V: int) -> torch.Tensor:
    """[B, V] float32 Gumbel(0, 1) noise from hash(seed[b], offset[b], i), bit for bit what the kernel adds."""
    a, b = _row_keys_torch(seed, offset)
    return _noise_cols(a, b, 0, V)


def gumbel_argmax(z: torch.Tensor, tau: torch.Tensor | None, seed: torch.Tensor, offset: torch.Tensor,
                  chunk: int = 4096) -> torch.Tensor:
    """argmax over {i : z_i >= tau} of z_i + gumbel_noise[:, i] -> [B] int64, column chunk by column chunk:
    the int64 hash makes a dozen temporaries of the chunk's size, which stay in cache instead of a dozen
    fresh [B, V] buffers (each a page-faulting mapping at B=320, V=32000: 82 MB). Same tokens as the
    full computation; ties go to the lower index, like argmax."""
    a, b = _row_keys_torch(seed, offset)
    B, V = z.shape
    best = torch.full((B,), NEG, device=z.device)
    arg = torch.zeros(B, dtype=torch.long, device=z.device)
    for v0 in range(0, V, chunk):
        v1 = min(V, v0 + chunk)
        key = z[:, v0:v1] + _noise_cols(a, b, v0, v1)
        if tau is not None:
            key = torch.where(z[:, v0:v1] >= tau[:, None], key, NEG)
        i = key.argmax(1)
        m = key.gather(1, i[:, None])[:, 0]
        better = m > best  # strictly: an earlier chunk's equal maximum keeps the lower index
        best, arg = torch.where(better, m, best), torch.where(better, i + v0, arg)
    return arg


# ------------------------------------------------------------------------------------------------ torch reference
def _threshold(z: torch.Tensor, top_k, top_p, min_p) -> torch.Tensor:
    # z: [B, V] tempered logits -> tau: [B]; the kept set is {i : z_i >= tau}
    V = z.shape[1]
    zs = z.sort(dim=1, descending=True).values
    mz = zs[:, 0]
    k_on = (top_k > 0) & (top_k < V)
    tau_k = torch.where(k_on, zs.gather(1, (top_k.clamp(1, V) - 1)[:, None])[:, 0], NEG)  # ties at the k-th: kept
    w = torch.where(zs >= tau_k[:, None], torch.exp(zs - mz[:, None]), 0.0)  # top-k kept mass, sorted
    # top-p keeps token i iff the mass of the tokens strictly more probable than i is < p * (top-k mass). Over the
    # sorted row the exclusive cumsum is that mass at the first token of each tie group and only grows inside it,
    # so {j : excl_j < pM} is a prefix ending at tau_p: the "smallest prefix whose sum reaches p" rule, made
    # tie-invariant by keeping the boundary token's whole tie group. The top token is always kept (p <= 0 too).
    head = (torch.cumsum(w, 1) - w) < (top_p * w.sum(1))[:, None]
    head[:, 0] = True
    tau_p = torch.where(top_p < 1, torch.where(head, zs, POS).amin(1), NEG)
    tau_m = torch.where(min_p > 0, torch.minimum(mz + torch.log(min_p), mz), NEG)  # p_i >= min_p * p_max
    return torch.maximum(torch.maximum(tau_k, tau_p), tau_m)


def processed_probs(logits, temperature, top_k, top_p, min_p) -> torch.Tensor:
    """[B, V] float64: the exact distribution sample() draws from (one-hot argmax where temperature <= 0)."""
    _, V, (t, k, p, mp) = _prepare(logits, temperature, top_k, top_p, min_p)
    x = logits.double()
    z = x / torch.where(t > 0, t, 1.0).double()[:, None]
    kept = z >= _threshold(z, k, p.double(), mp.double())[:, None]
    probs = torch.softmax(torch.where(kept, z, NEG), dim=1)
    return torch.where((t > 0)[:, None], probs, torch.nn.functional.one_hot(x.argmax(1), V).double())


def sample_torch(logits, temperature, top_k, top_p, min_p, seed, offset):
    """Sort-based reference (CPU path, test oracle): same signature, same tokens as the kernel."""
    _, V, (t, k, p, mp, s, o) = _prepare(logits, temperature, top_k, top_p, min_p, seed, offset)
    x = logits.float()
    tokens = x.argmax(1)  # greedy rows; argmax: first maximum, like the kernel
    sampled = t > 0
    # On the CPU this is the engine's sampler, every step: skip the noise when every row is greedy and the
    # sort when no row filters (both are exact shortcuts: the same tokens as the full computation).
    if bool(sampled.any()):
        z = x * torch.where(sampled, 1.0 / t, 1.0)[:, None]  # the kernel's z, bit for bit
        filtered = bool((((k > 0) & (k < V)) | (p < 1) | (mp > 0)).any())
        tau = _threshold(z, k, p, mp) if filtered else None
        tokens = torch.where(sampled, gumbel_argmax(z, tau, s, o), tokens)
    return tokens, x.gather(1, tokens[:, None])[:, 0] - torch.logsumexp(x, 1)  # no [B, V] log_softmax buffer


# ------------------------------------------------------------------------------------------------ Triton
@_jit
def _mix32(x):
    x = x ^ (x >> 16)
    x = x * 0x21F0AAAD
    x = x ^ (x >> 15)
    x = x * 0x735A2D97
    return x ^ (x >> 15)


@_jit
def _row_keys(seed, offset):  # [R, 1] int64 each -> two [R, 1] uint32 keys, as in gumbel_noise
    a = _mix32((seed & 0xFFFFFFFF).to(tl.uint32) ^ 0x2545F491)
    a = _mix32(a ^ ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32))
    a = _mix32(a ^ (offset & 0xFFFFFFFF).to(tl.uint32))
    a = _mix32(a ^ ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32))
    return a | 1, _mix32(a ^ 0x1B873593)


@_jit
def _log(x, FAST: tl.constexpr):  # lg2.approx on the GPU: libdevice's logf costs ~10 instructions an element
    if FAST:
        return libdevice.fast_logf(x)
    else:
        return tl.log(x)


@_jit
def _exp(x, FAST: tl.constexpr):  # ex2.approx.ftz: tl.exp adds ~3 instructions of denormal handling
    if FAST:
        return libdevice.fast_expf(x)
    else:
        return tl.exp(x)


@_jit
def _gumbel(idx, ka, kb, FAST: tl.constexpr):  # idx: [1, BLOCK] or [R, CAP] token ids -> [R, *], as gumbel_noise
    h = _mix32(idx.to(tl.uint32) * ka + kb)
    w = (h.to(tl.float32) + 0.5) * 2.3283064365386963e-10
    e = tl.where(w < 0.0078125, w * (1.0 + w * (0.5 + w * 0.3333333432674408)), -_log(1.0 - w, FAST))
    return -_log(e, FAST)


@_jit
def _argmax(key, idx, ONE: tl.constexpr):  # [R, N] -> [R, 1]: the lowest index among the maxima
    return _argmax2(key, idx, ONE)[1]


@_jit
def _ordered(f):  # float32 <-> int32 whose signed order is the float order (an involution on the bits)
    b = f.to(tl.int32, bitcast=True)
    return b ^ ((b >> 31) & 0x7FFFFFFF)


G_MAX = 23.0  # > the largest noise _gumbel can return: -log(E) at E = w = 2^-33 (the smallest w) is 22.87
_G_MAX = tl.constexpr(G_MAX) if HAS_TRITON else G_MAX


@_jit
def _argmax2(key, idx, ONE: tl.constexpr):  # [R, N] -> ([R, 1] max key, [R, 1] lowest index among the maxima)
    if ONE:  # GPU: one reduction of (key, index) pairs instead of a max and then a masked min
        return tl.reduce((key, tl.broadcast_to(idx, key.shape)), 1, _argmax_combine, keep_dims=True)
    else:  # the interpreter runs a custom combine in Python, pair by pair: numpy's max and min instead
        top = tl.max(key, axis=1, keep_dims=True)
        return top, tl.min(tl.where(key == top, idx, 2147483647), axis=1, keep_dims=True)


@_jit
def _argmax_combine(k0, i0, k1, i1):
    take = (k1 > k0) | ((k1 == k0) & (i1 < i0))
    return tl.where(take, k1, k0), tl.where(take, i1, i0)


@_jit
def _add2(a0, b0, a1, b1):
    return a0 + a1, b0 + b1


@_jit
def _chunk_stats(x, idx, ok, inv_t, greedy, noisy, need_sz, gbest, ka, kb, R: tl.constexpr, CHUNK: tl.constexpr,
                 G: tl.constexpr, FAST: tl.constexpr):
    # x: [R, CHUNK] raw logits of one chunk (-inf past V) -> its max, sum exp(x - max), sum exp(z - max * inv_t),
    # Gumbel argmax (key, index), group maxima [R, G] of z. One max, one (sum, sum) and one (max, index) reduction
    # for the whole chunk: no per-tile reduction and no running rescale.
    z = x * inv_t
    m = tl.max(x, axis=1, keep_dims=True)
    m0 = tl.where(m == _NEG, 0.0, m)  # a chunk of -inf only: every exp below is 0, not NaN
    if tl.max(need_sz.to(tl.int32)) > 0:  # top-p rows away from temperature 1 need the tempered mass too
        if FAST:  # one reduction of both sums (the interpreter runs a custom combine in Python: two sums there)
            s_x, s_z = tl.reduce((_exp(x - m0, FAST), _exp(z - m0 * inv_t, FAST)), 1, _add2, keep_dims=True)
        else:
            s_x = tl.sum(_exp(x - m0, FAST), axis=1, keep_dims=True)
            s_z = tl.sum(_exp(z - m0 * inv_t, FAST), axis=1, keep_dims=True)
        s_z = tl.where(need_sz, s_z, s_x)
    else:
        s_x = tl.sum(_exp(x - m0, FAST), axis=1, keep_dims=True)
        s_z = s_x
    # the draw: greedy rows take argmax z; a sampled row's key is z + noise, and the noise (a hash and two logs an
    # element, the bulk of the pass's arithmetic) is skipped for a chunk none of whose keys can beat the best key
    # this program has already seen (z <= max z, noise < G_MAX): the row's winner is never in such a chunk
    best = tl.full([R, 1], _NEG, tl.float32)
    best_i = tl.full([R, 1], 2147483647, tl.int32)
    mz = m * inv_t  # = max z of the chunk (rounding is monotone); the slack covers a key's own rounding at any |z|
    drawing = ok & (greedy | (noisy & (mz + _G_MAX + tl.abs(mz) * 1e-6 >= gbest)))
    if tl.max(drawing.to(tl.int32)) > 0:
        key = z
        if tl.max((drawing & ~greedy).to(tl.int32)) > 0:
            key = tl.where(greedy, z, z + _gumbel(idx, ka, kb, FAST))
        best, best_i = _argmax2(tl.where(drawing, key, _NEG), idx, FAST)
    groups = tl.max(tl.reshape(z, [R, G, CHUNK // G]), axis=2)
    return m, s_x, s_z, best, best_i, groups


@_kernel
def _pass1_kernel(logits, stride, temp_p, k_p, p_p, seed_p, off_p, part, part_i, lanes, B, V, NC, per_prog,
                  R: tl.constexpr, CHUNK: tl.constexpr, G: tl.constexpr, FAST: tl.constexpr):
    # program (row block, p): chunks [p * per_prog, (p + 1) * per_prog) of the rows' logits, CHUNK columns each.
    # Per chunk it writes part[row, c] = (max x, sum exp(x - max), tempered sum, best key), part_i[row, c] = the
    # best key's token, and lanes[row, c * G:(c + 1) * G] = group maxima of z. Every value depends on the chunk
    # alone, so how many programs share a row (more when the batch is small) never changes a result.
    rows = tl.program_id(0) * R + tl.arange(0, R)[:, None]  # [R, 1]
    ok = rows < B
    row = logits + rows.to(tl.int64) * stride
    t = tl.load(temp_p + rows, mask=ok, other=1.0)
    greedy = ~(t > 0)
    inv_t = tl.where(greedy, 1.0, 1.0 / t)
    k = tl.load(k_p + rows, mask=ok, other=0)
    p_on = ~greedy & (tl.load(p_p + rows, mask=ok, other=1.0) < 1.0)
    noisy = ok & ~greedy & ~((k > 0) & (k < V))  # a row that may keep its pass-1 draw (top-k rows never do)
    need_sz = ok & p_on & (inv_t != 1.0)  # at temperature 1, z == x: the tempered sum is the raw one
    ka, kb = _row_keys(tl.load(seed_p + rows, mask=ok, other=0), tl.load(off_p + rows, mask=ok, other=0))
    cols = tl.arange(0, CHUNK)[None, :]
    gcols = tl.arange(0, G)[None, :]
    c0 = tl.program_id(1) * per_prog
    c1 = tl.minimum(c0 + per_prog, NC)
    end = tl.minimum(c1 * CHUNK, V)  # past this program's last column (a scalar in the mask: the interpreter
    gbest = tl.full([R, 1], _NEG, tl.float32)  # turns `int1 tensor & int1 scalar` into int32, so compare columns)
    x_next = tl.load(row + c0 * CHUNK + cols, mask=ok & (c0 * CHUNK + cols < end), other=_NEG)
    for c in range(c0, c1):
        idx = c * CHUNK + cols
        x = x_next.to(tl.float32)
        # the next chunk's load goes out before this chunk's arithmetic: its latency hides behind it
        x_next = tl.load(row + idx + CHUNK, mask=ok & (idx + CHUNK < end), other=_NEG)
        m, s_x, s_z, best, best_i, groups = _chunk_stats(x, idx, ok, inv_t, greedy, noisy, need_sz, gbest, ka, kb,
                                                         R, CHUNK, G, FAST)
        gbest = tl.maximum(gbest, best)
        base = (rows * NC + c) * 4
        tl.store(part + base, m, mask=ok)
        tl.store(part + base + 1, s_x, mask=ok)
        tl.store(part + base + 2, s_z, mask=ok)
        tl.store(part + base + 3, best, mask=ok)
        tl.store(part_i + rows * NC + c, best_i, mask=ok)
        tl.store(lanes + rows * (NC * G) + c * G + gcols, groups, mask=ok)



@_jit
def _value(key):  # int64 ordered key -> float32; below the key of -inf means "none": -inf
    return tl.where(key < -2139095041, _NEG, _ordered(key.to(tl.int32)).to(tl.float32, bitcast=True))


@_jit
def _search(v, w, target, hi, STRICT: tl.constexpr):
    # v, w: [R, N] -> [R, 1] int64: the largest ordered key t <= hi with sum(w[v >= t]) >= target (v > t if
    # STRICT), by bisection on the float's ordered bits: 33 steps in registers, no sort. The step function only
    # moves at values of v, so the answer is one of them (or key(-inf) - 1: none).
    lo = hi * 0 - 2139095042
    for _ in range(33):
        mid = lo + ((hi - lo + 1) >> 1)
        f = _ordered(mid.to(tl.int32)).to(tl.float32, bitcast=True)
        sel = (v > f) if STRICT else (v >= f)
        yes = tl.sum(tl.where(sel, w, 0.0), axis=1, keep_dims=True) >= target
        move = lo < hi
        lo = tl.where(move & yes, mid, lo)
        hi = tl.where(move & ~yes, mid - 1, hi)
    return lo


@_jit
def _chunk_max(part, rows, ok, NC, b, inv_t, TPC: tl.constexpr):  # [R, 1] max z of the chunk holding tile b
    return tl.load(part + (rows * NC + b // TPC) * 4, mask=ok, other=_NEG) * inv_t


@_jit
def _gather(row, V, inv_t, q, on, part, rows, ok, NC, slots, R: tl.constexpr, BLOCK: tl.constexpr,
            TPC: tl.constexpr, CAP: tl.constexpr):  # writes the ids of the tokens with z >= q into slots; returns how many
    cols = tl.arange(0, BLOCK)[None, :]
    n = tl.zeros([R, 1], tl.int32)
    for b in range(0, tl.cdiv(V, BLOCK)):
        go = on & (_chunk_max(part, rows, ok, NC, b, inv_t, TPC) >= q)
        if tl.max(go.to(tl.int32)) > 0:
            idx = b * BLOCK + cols
            x = tl.load(row + idx, mask=go & (idx < V), other=_NEG).to(tl.float32)
            sel = go & (idx < V) & (x * inv_t >= q)
            pos = n + tl.cumsum(sel.to(tl.int32), axis=1) - 1
            tl.store(slots + pos, idx + 0 * pos, mask=sel & (pos < CAP))
            n += tl.sum(sel.to(tl.int32), axis=1, keep_dims=True)
    return n


@_jit
def _finish(row, inv_t, mz, S, k, k_on, p, p_on, tau_m, n, on, slots, ka, kb, CAP: tl.constexpr,
            FAST: tl.constexpr):  # _threshold on the gathered tokens (all that can survive), then the draw above it
    j = tl.arange(0, CAP)[None, :]
    valid = on & (j < n)
    idx = tl.load(slots + j, mask=valid, other=0)
    z = tl.load(row + idx, mask=valid, other=_NEG).to(tl.float32) * inv_t
    w = tl.exp(z - mz)
    hi = _ordered(mz).to(tl.int64)
    tau_k = tl.where(k_on, _value(_search(z, tl.where(valid, 1.0, 0.0), k, hi, False)), _NEG)
    mass = tl.where(k_on, tl.sum(tl.where(z >= tau_k, w, 0.0), axis=1, keep_dims=True), S)
    # top-p: kept iff the mass strictly above < p * mass, i.e. z >= the key after the last t with mass(z > t) >= pM
    t_p = _search(z, w, p * mass, hi, True) + 1
    tau_p = tl.where(p_on, tl.minimum(_ordered(t_p.to(tl.int32)).to(tl.float32, bitcast=True), mz), _NEG)
    tau = tl.maximum(tl.maximum(tau_k, tau_p), tau_m)
    return _argmax(tl.where(valid & (z >= tau), z + _gumbel(idx, ka, kb, FAST), _NEG), idx, FAST)


@_jit
def _count(row, V, inv_t, mz, lo, mid, on, part, rows, ok, NC, R: tl.constexpr, BLOCK: tl.constexpr,
           TPC: tl.constexpr):
    # over z >= lo: #(z >= mid), mass(z >= mid), mass(z >= lo), min{z >= mid}, max{z < mid}
    cols = tl.arange(0, BLOCK)[None, :]
    c = tl.zeros([R, BLOCK], tl.int32)
    w_mid = tl.zeros([R, BLOCK], tl.float32)
    w_lo = tl.zeros([R, BLOCK], tl.float32)
    mn = tl.full([R, BLOCK], _POS, tl.float32)
    mx = tl.full([R, BLOCK], _NEG, tl.float32)
    for b in range(0, tl.cdiv(V, BLOCK)):
        go = on & (_chunk_max(part, rows, ok, NC, b, inv_t, TPC) >= lo)
        if tl.max(go.to(tl.int32)) > 0:
            idx = b * BLOCK + cols
            z = tl.load(row + idx, mask=go & (idx < V), other=_NEG).to(tl.float32) * inv_t
            w = tl.where(z >= lo, tl.exp(z - mz), 0.0)
            ge = z >= mid
            c += ge.to(tl.int32)
            w_mid += tl.where(ge, w, 0.0)
            w_lo += w
            mn = tl.minimum(mn, tl.where(ge, z, _POS))
            mx = tl.maximum(mx, tl.where(ge, _NEG, z))
    return (tl.sum(c, axis=1, keep_dims=True), tl.sum(w_mid, axis=1, keep_dims=True),
            tl.sum(w_lo, axis=1, keep_dims=True), tl.min(mn, axis=1, keep_dims=True),
            tl.max(mx, axis=1, keep_dims=True))


@_jit
def _bisect(row, V, inv_t, mz, k, lo, on, part, rows, ok, NC, R: tl.constexpr, BLOCK: tl.constexpr,
            TPC: tl.constexpr):
    # tau_k (the k-th largest z) and the mass at or above it. Invariant: lo <= tau_k <= hi, both token values
    # (or lo = -inf); each pass halves (lo, hi] in ordered-bit space and snaps the moved end to a token value.
    hi = mz
    mass = tl.zeros([R, 1], tl.float32)
    it = 0
    while (tl.max(on.to(tl.int32)) > 0) & (it < 40):
        a = _ordered(lo).to(tl.int64)
        mid = _ordered((a + ((_ordered(hi).to(tl.int64) - a + 1) >> 1)).to(tl.int32)).to(tl.float32, bitcast=True)
        c, w_mid, w_lo, mn, mx = _count(row, V, inv_t, mz, lo, mid, on, part, rows, ok, NC, R, BLOCK, TPC)
        up = on & (c >= k)
        mass = tl.where(on, tl.where(up, w_mid, w_lo), mass)
        lo = tl.where(up, mn, lo)
        hi = tl.where(on & ~up, mx, hi)
        on = on & (lo < hi)
        it += 1
    return lo, mass


@_jit
def _reject(row, V, inv_t, mz, q, piv, on, part, rows, ok, NC, ka, kb, R: tl.constexpr, BLOCK: tl.constexpr,
            TPC: tl.constexpr, FAST: tl.constexpr):  # over {z >= q, z > piv}: its mass and its Gumbel argmax
    cols = tl.arange(0, BLOCK)[None, :]
    s = tl.zeros([R, BLOCK], tl.float32)
    best = tl.full([R, BLOCK], _NEG, tl.float32)
    best_i = tl.zeros([R, BLOCK], tl.int32)
    for b in range(0, tl.cdiv(V, BLOCK)):
        go = on & (_chunk_max(part, rows, ok, NC, b, inv_t, TPC) >= tl.maximum(q, piv))
        if tl.max(go.to(tl.int32)) > 0:
            idx = b * BLOCK + cols
            z = tl.load(row + idx, mask=go & (idx < V), other=_NEG).to(tl.float32) * inv_t
            sel = (z >= q) & (z > piv)
            s += tl.where(sel, _exp(z - mz, FAST), 0.0)
            key = tl.where(sel, z + _gumbel(idx, ka, kb, FAST), _NEG)
            best_i = tl.where(key > best, idx, best_i)
            best = tl.maximum(key, best)
    return tl.sum(s, axis=1, keep_dims=True), _argmax(best, best_i, FAST)


@_jit
def _rejection(row, V, inv_t, mz, q, p, p_on, mass, tok, done, part, rows, ok, NC, ka, kb, R: tl.constexpr,
               BLOCK: tl.constexpr, TPC: tl.constexpr, FAST: tl.constexpr):
    # kept = {z >= q} (top-k and min-p exact in q, top-p bounded) cut by top-p: mass above < p * mass. tok is the
    # current candidate (V: none yet). Each pass checks it and draws the next one from above it; the pivot c_z
    # strictly increases, so this ends within V passes (and ~1/top_p on average).
    c_z = tl.load(row + tok, mask=~done & (tok < V), other=_NEG).to(tl.float32) * inv_t
    done = done | (~p_on & (tok < V) & (c_z >= q))
    it = 0
    while (tl.max((~done).to(tl.int32)) > 0) & (it <= V):
        above, nxt = _reject(row, V, inv_t, mz, q, c_z, ~done, part, rows, ok, NC, ka, kb, R, BLOCK, TPC, FAST)
        done = done | ((tok < V) & (c_z >= q) & ((above < p * mass) | (c_z >= mz)))
        tok = tl.where(done, tok, nxt)
        c_z = tl.where(done, c_z, tl.load(row + nxt, mask=~done & (nxt < V), other=_NEG).to(tl.float32) * inv_t)
        done = done | (~p_on & (c_z >= q))  # without top-p, a candidate drawn from {z >= q} is the answer
        it += 1
    return tok


@_kernel
def _sample_kernel(logits, stride, temp_p, k_p, p_p, minp_p, seed_p, off_p, tok_p, lp_p, part, part_i, lanes,
                   scratch, B, V, NC, R: tl.constexpr, BLOCK: tl.constexpr, TPC: tl.constexpr, NCP: tl.constexpr,
                   LANES: tl.constexpr, CAP: tl.constexpr, FAST: tl.constexpr):
    rows = tl.program_id(0) * R + tl.arange(0, R)[:, None]  # [R, 1]; every per-row value below is [R, 1]
    ok = rows < B
    row = logits + rows.to(tl.int64) * stride
    slots = scratch + rows.to(tl.int64) * CAP
    t = tl.load(temp_p + rows, mask=ok, other=1.0)
    greedy = ~(t > 0)
    inv_t = tl.where(greedy, 1.0, 1.0 / t)
    k = tl.load(k_p + rows, mask=ok, other=0)
    p = tl.load(p_p + rows, mask=ok, other=1.0)
    min_p = tl.load(minp_p + rows, mask=ok, other=0.0)
    k_on = ~greedy & (k > 0) & (k < V)
    p_on = ~greedy & (p < 1.0)
    m_on = ~greedy & (min_p > 0.0)
    ka, kb = _row_keys(tl.load(seed_p + rows, mask=ok, other=0), tl.load(off_p + rows, mask=ok, other=0))

    # pass 1 (_pass1_kernel), merged over the chunks in one fixed order: raw max, logsumexp, tempered mass S
    # (relative to max z), the pass-1 draw, and the group maxima of z
    cs = tl.arange(0, NCP)[None, :]
    cmask = ok & (cs < NC)
    c_m = tl.load(part + (rows * NC + cs) * 4, mask=cmask, other=_NEG)
    m = tl.max(c_m, axis=1, keep_dims=True)
    m0 = tl.where(m == _NEG, 0.0, m)
    w = tl.where(cmask, tl.exp(c_m - m0), 0.0)
    lse = m + tl.log(tl.sum(tl.load(part + (rows * NC + cs) * 4 + 1, mask=cmask, other=0.0) * w, axis=1,
                            keep_dims=True))
    mz = m * inv_t
    S = tl.sum(tl.load(part + (rows * NC + cs) * 4 + 2, mask=cmask, other=0.0)
               * tl.where(cmask, tl.exp(c_m * inv_t - m0 * inv_t), 0.0), axis=1, keep_dims=True)
    tok = _argmax(tl.load(part + (rows * NC + cs) * 4 + 3, mask=cmask, other=_NEG),
                  tl.load(part_i + rows * NC + cs, mask=cmask, other=2147483647), FAST)
    tok = tl.where(greedy | ~k_on, tok, V)  # top-k rows drew nothing in pass 1: V marks "no candidate"
    done = ~ok | ~(k_on | p_on | m_on)
    tau_m = tl.where(m_on, tl.minimum(mz + tl.log(min_p), mz), _NEG)
    q_k = tl.full([R, 1], _NEG, tl.float32)
    q_p = tl.full([R, 1], _NEG, tl.float32)
    # lower bounds from the group maxima (disjoint groups of tokens): the k largest are k distinct tokens, so the
    # k-th of them <= tau_k; the largest ones that carry p*S (>= p * top-k mass; 0.1% slack for float order) fail
    # top-p for all below them
    if tl.max((~done & (k_on | p_on)).to(tl.int32)) > 0:
        j = tl.arange(0, LANES)[None, :]
        per_row = NC * (LANES // NCP)
        lane = tl.load(lanes + rows * per_row + j, mask=ok & (j < per_row), other=_NEG)
        if tl.max((~done & k_on).to(tl.int32)) > 0:
            q_k = _value(_search(lane, tl.where(lane > _NEG, 1.0, 0.0), k, _ordered(mz).to(tl.int64), False))
        if tl.max((~done & p_on).to(tl.int32)) > 0:
            q_p = _value(_search(lane, tl.exp(lane - mz), p * S * 1.001, _ordered(mz).to(tl.int64), False))
            q_p = tl.where(p_on, q_p, _NEG)  # S is the tempered mass only on top-p rows (_pass1_kernel)

    # pass 2: gather every token that can survive; in registers, the exact thresholds and the draw
    q_g = tl.where(k_on, q_k, tl.maximum(tau_m, q_p))
    cands = tl.where(k_on, tl.where(q_k > _NEG, 2.0 * k, _POS), S * tl.exp(mz - q_g))  # ~ #tokens >= q_g
    on = ~done & (k_on | p_on) & (tl.minimum(cands, V) <= CAP)
    if tl.max(on.to(tl.int32)) > 0:
        n = _gather(row, V, inv_t, q_g, on, part, rows, ok, NC, slots, R, BLOCK, TPC, CAP)
        tl.debug_barrier()  # other threads of this program wrote the slots: bar.sync makes the writes visible
        on = on & (n <= CAP)
        tok = tl.where(on, _finish(row, inv_t, mz, S, k, k_on, p, p_on, tau_m, n, on, slots, ka, kb, CAP, FAST),
                       tok)
        done = done | on

    # the rest: exact tau_k by bisection (top-k only), then rejection rounds from the pass-1 candidate
    tau_k = tl.full([R, 1], _NEG, tl.float32)
    mass = S
    on = ~done & k_on
    if tl.max(on.to(tl.int32)) > 0:
        t_k, m_k = _bisect(row, V, inv_t, mz, k, q_k, on, part, rows, ok, NC, R, BLOCK, TPC)
        tau_k = tl.where(on, t_k, tau_k)
        mass = tl.where(on, m_k, mass)
    tok = _rejection(row, V, inv_t, mz, tl.maximum(tl.maximum(tau_k, q_p), tau_m), p, p_on, mass, tok, done, part,
                     rows, ok, NC, ka, kb, R, BLOCK, TPC, FAST)

    tok = tl.minimum(tok, V - 1)
    tl.store(tok_p + rows, tok.to(tl.int64), mask=ok)
    tl.store(lp_p + rows, tl.load(row + tok, mask=ok, other=0.0).to(tl.float32) - lse, mask=ok)


def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2


def sample_triton(logits, temperature, top_k, top_p, min_p, seed, offset, *, block=None, rows=None, cap=None,
                  chunk=None, split=None):
    """The Triton kernels. block / rows / cap / chunk override the tile width, rows per program, gather slots and
    pass-1 chunk width, split the pass-1 programs per row (tests)."""
    B, V, args = _prepare(logits, temperature, top_k, top_p, min_p, seed, offset)
    tokens = torch.empty(B, dtype=torch.int64, device=logits.device)
    logprobs = torch.empty(B, dtype=torch.float32, device=logits.device)
    if B == 0:
        return tokens, logprobs
    gpu = logits.is_cuda
    BLOCK = block or min(2048, triton.next_power_of_2(V))  # 2048 lanes: 8 fp32 a thread at 8 warps
    # pass 1 reads CHUNK columns per step, 16 fp32 a thread at 8 warps (plus 16 prefetched): 4096 keeps the
    # kernel under 128 registers on sm_90 (bench/compile_report.py), 32 chunks of a 128k vocabulary
    CHUNK = max(BLOCK, chunk or min(4096, triton.next_power_of_2(V)))
    NC = triton.cdiv(V, CHUNK)
    NCP = triton.next_power_of_2(NC)
    LANES = max(NCP, min(4096, NCP * CHUNK))  # group maxima kept per row: LANES // NCP per chunk
    # rows per program depend on V only, so a row's float sums (and token) never depend on the batch around it;
    # the interpreter runs programs one by one and pays per op, not per element, hence its wide tiles
    R = rows or (1 if gpu else min(1024, max(1, 2**18 // CHUNK)))
    CAP = cap or min(2048, triton.next_power_of_2(V))
    programs = triton.cdiv(B, R)
    # pass-1 programs per row: enough for ~2 per SM when the batch alone is too small, at most one per chunk.
    # The chunk, not the program, is the unit of every partial result, so this changes no output bit.
    per_row = split or max(1, min(NC, triton.cdiv(2 * _num_sms(logits.device), programs)))
    per_prog = triton.cdiv(NC, per_row)
    part = torch.empty(B * NC * 4, dtype=torch.float32, device=logits.device)
    lanes = torch.empty(B * NC * (LANES // NCP), dtype=torch.float32, device=logits.device)
    scratch = torch.empty(B * CAP + B * NC, dtype=torch.int32, device=logits.device)  # gather slots, draw ids
    part_i = scratch[B * CAP:]
    t, k, p, mp, s, o = args
    warps = 8 if R * BLOCK >= 2048 else 4
    _pass1_kernel[(programs, triton.cdiv(NC, per_prog))](
        logits, logits.stride(0), t, k, p, s, o, part, part_i, lanes, B, V, NC, per_prog, R=R, CHUNK=CHUNK,
        G=LANES // NCP, FAST=gpu, num_warps=warps)
    _sample_kernel[(programs,)](logits, logits.stride(0), *args, tokens, logprobs, part, part_i, lanes, scratch, B,
                                V, NC, R=R, BLOCK=BLOCK, TPC=CHUNK // BLOCK, NCP=NCP, LANES=LANES, CAP=CAP, FAST=gpu,
                                num_warps=warps)
    return tokens, logprobs


def sample(logits, temperature, top_k, top_p, min_p, seed, offset):
    """logits [B, V] float32/bfloat16/float16 (math in float32); the rest [B] tensors or Python scalars (temperature <= 0: greedy; top_k <= 0
    or >= V, top_p >= 1, min_p <= 0: off). Returns tokens int64 [B] and their raw log-probabilities float32 [B].
    Deterministic per (logits row, seed, offset); no host synchronization (CUDA-graph safe)."""
    impl = sample_triton if use_triton(logits) else sample_torch
    return impl(logits, temperature, top_k, top_p, min_p, seed, offset)


# ------------------------------------------------------------------------------------------------ argument checks
_KINDS = {"temperature": torch.float32, "top_k": torch.int64, "top_p": torch.float32, "min_p": torch.float32,
          "seed": torch.int64, "offset": torch.int64}


def _per_row(name, v, B, device):
    dtype = _KINDS[name]
    if isinstance(v, torch.Tensor):
        if v.device != device:
            raise UserError(f"{name} is on {v.device} but logits are on {device}")
        if v.dim() == 0:
            v = v.expand(B)
        if tuple(v.shape) != (B,):
            raise UserError(f"{name} must be a scalar or a [{B}] tensor, got shape {list(v.shape)}")
        if dtype == torch.int64 and (v.is_floating_point() or v.is_complex()):
            raise UserError(f"{name} must be an integer tensor, got {v.dtype}")
        return v.to(dtype).contiguous()
    if isinstance(v, bool) or not isinstance(v, Integral if dtype == torch.int64 else Real):
        raise UserError(f"{name} must be {'an int' if dtype == torch.int64 else 'a number'} or a tensor, got {v!r}")
    return torch.full((B,), v, dtype=dtype, device=device)


def _prepare(logits, *values):
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise UserError(f"logits must be a [B, V] tensor, got {getattr(logits, 'shape', type(logits).__name__)}")
    if logits.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise UserError(f"logits must be float32, bfloat16 or float16, got {logits.dtype}")
    B, V = logits.shape
    if V == 0:
        raise UserError("logits has an empty vocabulary dimension")
    if V > 1 and logits.stride(1) != 1:
        raise UserError(f"logits rows must be contiguous (stride(1) == 1), got strides {logits.stride()}")
    names = ("temperature", "top_k", "top_p", "min_p", "seed", "offset")
    return B, V, [_per_row(n, v, B, logits.device) for n, v in zip(names, values)]


__all__ = ["sample", "sample_torch", "sample_triton", "processed_probs", "gumbel_noise", "gumbel_argmax"]
