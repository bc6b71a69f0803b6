"""Fused linear log-probabilities for DPO: logp[i] = log_softmax(hidden @ weight.T)[i, targets[i]] (0 where
targets[i] == ignore_index), never materializing the [N, V] logits.

Forward (as Cut Cross-Entropy does): a program keeps BLOCK_N x BLOCK_V logits tiles in registers (tl.dot over H
in BLOCK_K steps) and runs an online log-sum-exp over one split of the vocabulary; torch merges the splits' lse.
A second, small kernel takes each token's target logit as hidden[i] . W[targets[i]]. Only lse [N] is saved for the backward, and a no_grad call (DPO's reference log-probs) does nothing more.

Why not Liger-style (gradients computed inside the forward, chunked over tokens): the policy's upstream
grad_out[i] is a per-sequence coefficient that the DPO loss knows only after both forwards. grad_hidden could
be rescaled row by row afterwards, but grad_W = sum_i g_i dlogits_i^T hidden_i cannot (the bug Liger PR #1298
fixed for reduction="none"), and the reference pass would pay for gradients it throws away. So the backward
recomputes the logits: 8NHV FLOP executed (2 forward, 2 recompute, 4 gradients) for the 6NHV counted.

Backward: CCE adds both products of each recomputed tile into the gradients with atomics: at N=16384, H=4096,
V=128256 that is 128k tiles x (BLOCK_N + BLOCK_V) * H fp32 adds = 0.5 TB of atomic traffic, plus a [V, H]
fp32 grad_W (2.1 GB) to accumulate in fp32. Here, per vocabulary chunk c of Vc columns instead:
  1. a kernel recomputes the logits tiles and writes dlogits[:, c] = g * (onehot - softmax) in the input dtype;
  2. grad_W[c] = dlogits[:, c]^T @ hidden: the whole reduction over N in one fp32 accumulator, one cast;
  3. grad_hidden (fp32 [N, H]) += dlogits[:, c] @ W[c].
Chunking over V, not over tokens, keeps the fp32 accumulator at N*H instead of V*H. Steps 2-3 are Triton
matmuls, not cuBLAS, whose bf16 GEMMs may split K and reduce in bf16 (torch's default
allow_bf16_reduced_precision_reduction); here fp32 accumulation is guaranteed, and testable on CPU.
Extra memory at the target shape in bf16: dlogits chunk 128 MiB (Vc=4096) + fp32 grad_hidden 256 MiB + lse
splits 0.6 MiB = 385 MiB. The naive path's backward holds 3 fp32 [N, V] tensors (saved log_softmax, gather's
grad, log_softmax's grad) = 25.2 GB: 1.6%. Halving DLOGITS_CHUNK_BYTES saves 64 MiB but doubles the passes
over the grad_hidden accumulator (read + write 512 MiB per chunk: 16 GiB at Vc=4096, ~3.5 ms at 4.8 TB/s).
"""
from __future__ import annotations

import torch

from metareward.errors import UserError
from metareward.kernels.dispatch import HAS_TRITON, interpreting, tl, triton, use_triton

DLOGITS_CHUNK_BYTES = 128 << 20  # Triton backward: bytes of one dlogits chunk [N, Vc]
TORCH_CHUNK_ELEMENTS = 1 << 22  # torch reference: elements of one fp32 logits chunk [N, Vc] (16 MiB)
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_jit = triton.jit if HAS_TRITON else (lambda fn: fn)  # annotations stay strings (future import) without triton


@_jit
def _grouped(pid, num_m, num_n, GROUP_M: tl.constexpr):
    # Consecutive programs take GROUP_M row blocks x all column blocks, so the row blocks they share and the
    # column blocks they stream stay in L2 (the Triton matmul tutorial's grouped ordering).
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % size_m, (pid % per_group) // size_m


@_jit
def _cast(x, dtype: tl.constexpr, UPCAST: tl.constexpr):
    # x.to(dtype), rounding to nearest even as the GPU does; the interpreter truncates fp32 -> bf16 (even with
    # fp_downcast_rounding="rtne"), so under it round the fp32 bits first (the truncation is then exact)
    if UPCAST:
        if dtype == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
            x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@_jit
def _logits_tile(h_ptr, w_ptr, rows, cols, N, V, H, stride_hn, stride_hk, stride_wv, stride_wk,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
                 UPCAST: tl.constexpr):
    # logits: [BLOCK_N, BLOCK_V] = hidden[rows] @ weight[cols]^T in the input dtype, fp32 accumulation over H
    ks = tl.arange(0, BLOCK_K)
    h_ptrs = h_ptr + rows[:, None].to(tl.int64) * stride_hn + ks[None, :] * stride_hk  # [BLOCK_N, BLOCK_K]
    w_ptrs = w_ptr + cols[None, :].to(tl.int64) * stride_wv + ks[:, None] * stride_wk  # [BLOCK_K, BLOCK_V]
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        a = tl.load(h_ptrs, mask=(rows[:, None] < N) & (ks[None, :] < H - k0), other=0.0)
        b = tl.load(w_ptrs, mask=(cols[None, :] < V) & (ks[:, None] < H - k0), other=0.0)
        if UPCAST:  # exact: bf16/fp16 products are exact in fp32
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        h_ptrs += BLOCK_K * stride_hk
        w_ptrs += BLOCK_K * stride_wk
    return acc


@_jit
def _forward_kernel(h_ptr, w_ptr, lse_ptr, N, V, H, split_v, num_splits, stride_hn, stride_hk, stride_wv, stride_wk,
                    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_N: tl.constexpr,
                    PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # One program: BLOCK_N rows x one split of split_v vocabulary columns; writes that split's lse. Splits keep
    # >= 8 programs per SM when N is small. The target logit is not picked out of the tiles here: that select
    # (a [BLOCK_N, BLOCK_V] compare + where + row sum per tile) took sm_90 from 159 to 255 registers and spilled;
    # _target_logit_kernel computes it from one row of W per token instead (2*N*H FLOP, ~0.01% of the forward).
    pid_n, pid_s = _grouped(tl.program_id(0), tl.cdiv(N, BLOCK_N), num_splits, GROUP_N)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    v_lo = pid_s * split_v
    v_hi = tl.minimum(v_lo + split_v, V)
    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_N,), tl.float32)
    for v0 in range(v_lo, v_hi, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        logits = _logits_tile(h_ptr, w_ptr, rows, cols, N, v_hi, H, stride_hn, stride_hk, stride_wv, stride_wk,
                              BLOCK_N, BLOCK_V, BLOCK_K, PRECISION, UPCAST)
        logits = tl.where(cols[None, :] < v_hi, logits, float("-inf"))
        m_new = tl.maximum(m, tl.max(logits, 1))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), 1)
        m = m_new
    tl.store(lse_ptr + pid_s * N + rows, m + tl.log(s), mask=rows < N)


@_jit
def _target_logit_kernel(h_ptr, w_ptr, t_ptr, out_ptr, N, V, H, stride_hn, stride_hk, stride_wv, stride_wk,
                         BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    # out[i] = hidden[i] . weight[targets[i]] with fp32 products and sums (0 where the target is ignored)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    t = tl.load(t_ptr + rows, mask=rows < N, other=-1)
    ok = (rows < N) & (t >= 0) & (t < V)
    ks = tl.arange(0, BLOCK_H)
    h_ptrs = h_ptr + rows[:, None].to(tl.int64) * stride_hn + ks[None, :] * stride_hk  # [BLOCK_R, BLOCK_H]
    w_ptrs = w_ptr + tl.where(ok, t, 0)[:, None].to(tl.int64) * stride_wv + ks[None, :] * stride_wk
    acc = tl.zeros((BLOCK_R, BLOCK_H), tl.float32)  # per-lane partial sums: one reduction at the end
    for k0 in range(0, H, BLOCK_H):
        mask = ok[:, None] & (ks[None, :] < H - k0)
        a = tl.load(h_ptrs, mask=mask, other=0.0).to(tl.float32)
        acc += a * tl.load(w_ptrs, mask=mask, other=0.0).to(tl.float32)
        h_ptrs += BLOCK_H * stride_hk
        w_ptrs += BLOCK_H * stride_wk
    tl.store(out_ptr + rows, tl.sum(acc, 1), mask=rows < N)


@_jit
def _dlogits_kernel(h_ptr, w_ptr, t_ptr, lse_ptr, g_ptr, d_ptr, N, V, H, v_lo, stride_hn, stride_hk, stride_wv,
                    stride_wk, stride_dn, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
                    GROUP_N: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # d[:, v - v_lo] = g * (onehot - softmax) = g * dlogp/dlogits for columns v in [v_lo, V), logits recomputed
    pid_n, pid_v = _grouped(tl.program_id(0), tl.cdiv(N, BLOCK_N), tl.cdiv(V - v_lo, BLOCK_V), GROUP_N)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = v_lo + pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    logits = _logits_tile(h_ptr, w_ptr, rows, cols, N, V, H, stride_hn, stride_hk, stride_wv, stride_wk,
                          BLOCK_N, BLOCK_V, BLOCK_K, PRECISION, UPCAST)
    lse = tl.load(lse_ptr + rows, mask=rows < N, other=0.0)
    g = tl.load(g_ptr + rows, mask=rows < N, other=0.0)
    t = tl.load(t_ptr + rows, mask=rows < N, other=-1)
    onehot = tl.where(cols[None, :] == t[:, None], 1.0, 0.0)
    d = g[:, None] * (onehot - tl.exp(logits - lse[:, None]))
    d_ptrs = d_ptr + rows[:, None].to(tl.int64) * stride_dn + (cols - v_lo)[None, :]
    tl.store(d_ptrs, _cast(d, d_ptr.dtype.element_ty, UPCAST), mask=(rows[:, None] < N) & (cols[None, :] < V))


@_jit
def _matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                   ACCUMULATE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   GROUP_M: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # c (+)= a @ b: fp32 accumulation over all of K, one cast to c's dtype at the end
    pid_m, pid_n = _grouped(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rm[:, None].to(tl.int64) * stride_am + rk[None, :].to(tl.int64) * stride_ak
    b_ptrs = b_ptr + rk[:, None].to(tl.int64) * stride_bk + rn[None, :].to(tl.int64) * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = tl.load(a_ptrs, mask=(rm[:, None] < M) & (rk[None, :] < K - k0), other=0.0)
        b = tl.load(b_ptrs, mask=(rk[:, None] < K - k0) & (rn[None, :] < N), other=0.0)
        if UPCAST:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    c_ptrs = c_ptr + rm[:, None].to(tl.int64) * stride_cm + rn[None, :] * stride_cn
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    if ACCUMULATE:
        acc += tl.load(c_ptrs, mask=mask, other=0.0)
    tl.store(c_ptrs, _cast(acc, c_ptr.dtype.element_ty, UPCAST), mask=mask)


def _config(dtype: torch.dtype, forward: bool = False) -> dict:
    if interpreting():  # numpy runs every tl op, and its tl.dot multiplies bf16 bit patterns as uint16: upcast
        return dict(BLOCK_N=64, BLOCK_V=64, BLOCK_K=32, GROUP_N=2, UPCAST=True, num_warps=4, num_stages=1)
    # 128x128 fp32 accumulator = 64 registers/thread over 8 warps, leaving room for the lse epilogue (forward)
    # and the fp32 C tile (grad_hidden accumulation); BLOCK_K=64 bf16 = 3 stages x 32 KiB of shared memory.
    # sm_90 (bench/compile_report.py): bf16 forward 159 registers, no spill. fp32 ("ieee": FMA, no tensor cores)
    # holds both operand tiles in registers too: 128 rows reach 255 registers and spill 40 B, 64 rows take 196.
    rows = 64 if forward and dtype == torch.float32 else 128
    return dict(BLOCK_N=rows, BLOCK_V=128, BLOCK_K=32 if dtype == torch.float32 else 64, GROUP_N=8,
                UPCAST=False, num_warps=8, num_stages=3)


def _tf32() -> bool:
    # torch >= 2.9 spells the switch fp32_precision ("tf32", "ieee", or "none": inherit, i.e. ieee by default)
    # and raises on a read of the legacy allow_tf32 once the new API has set anything; fp32_precision itself
    # reads right whichever API set it (torch.set_float32_matmul_precision("high") too). Older torch: allow_tf32.
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)
    return matmul.allow_tf32 if precision is None else precision == "tf32"


def _precision(dtype: torch.dtype) -> str:  # fp32 matmuls follow torch's TF32 switch, as the naive path does
    return "ieee" if dtype == torch.float32 and not _tf32() else "tf32"


def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2


def _triton_forward(hidden, weight, targets, ignore_index):
    (N, H), V = hidden.shape, weight.shape[0]
    cfg = _config(hidden.dtype, forward=True)
    bn, bv = cfg["BLOCK_N"], cfg["BLOCK_V"]
    num_n = triton.cdiv(N, bn)
    num_splits = min(triton.cdiv(V, bv), triton.cdiv(8 * _num_sms(hidden.device), num_n))
    split_v = triton.cdiv(triton.cdiv(V, num_splits), bv) * bv
    num_splits = triton.cdiv(V, split_v)
    lse_parts = torch.empty(num_splits, N, device=hidden.device, dtype=torch.float32)  # [S, N]
    tgt = torch.empty(N, device=hidden.device, dtype=torch.float32)
    _forward_kernel[(num_n * num_splits,)](
        hidden, weight, lse_parts, N, V, H, split_v, num_splits, *hidden.stride(), *weight.stride(),
        PRECISION=_precision(hidden.dtype), **cfg)
    # 16 rows x 128 columns a step, 16 values a thread: 45 (bf16) / 64 (fp32) registers on sm_90
    _target_logit_kernel[(triton.cdiv(N, 16),)](hidden, weight, targets, tgt, N, V, H, *hidden.stride(),
                                                 *weight.stride(), BLOCK_R=16, BLOCK_H=128, num_warps=4)
    lse = torch.logsumexp(lse_parts, 0)  # [N]
    return torch.where(targets != ignore_index, tgt - lse, 0.0), lse


def _triton_matmul(a, b, c, accumulate: bool, cfg: dict) -> None:
    (M, K), N = a.shape, b.shape[1]
    grid = (triton.cdiv(M, cfg["BLOCK_N"]) * triton.cdiv(N, cfg["BLOCK_V"]),)
    _matmul_kernel[grid](a, b, c, M, N, K, *a.stride(), *b.stride(), *c.stride(), ACCUMULATE=accumulate,
                         BLOCK_M=cfg["BLOCK_N"], BLOCK_N=cfg["BLOCK_V"], BLOCK_K=cfg["BLOCK_K"],
                         GROUP_M=cfg["GROUP_N"], PRECISION=_precision(a.dtype), UPCAST=cfg["UPCAST"],
                         num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def _triton_backward(hidden, weight, targets, lse, g, need_hidden: bool, need_weight: bool):
    (N, H), V = hidden.shape, weight.shape[0]
    cfg = _config(hidden.dtype)
    bn, bv = cfg["BLOCK_N"], cfg["BLOCK_V"]
    vc = min(V, max(bv, DLOGITS_CHUNK_BYTES // (max(N, 1) * hidden.element_size()) // bv * bv))
    d = torch.empty(N, vc, device=hidden.device, dtype=hidden.dtype)  # dlogits chunk [N, Vc]
    grad_h = torch.empty(N, H, device=hidden.device, dtype=torch.float32) if need_hidden else None
    grad_w = torch.empty_like(weight, memory_format=torch.contiguous_format) if need_weight else None
    for v0 in range(0, V, vc):
        v1 = min(v0 + vc, V)
        dc = d[:, : v1 - v0]
        _dlogits_kernel[(triton.cdiv(N, bn) * triton.cdiv(v1 - v0, bv),)](
            hidden, weight, targets, lse, g, dc, N, v1, H, v0, *hidden.stride(), *weight.stride(), dc.stride(0),
            PRECISION=_precision(hidden.dtype), **cfg)
        if need_weight:  # grad_W[c]: [Vc, H] = dc^T [Vc, N] @ hidden [N, H]
            _triton_matmul(dc.t(), hidden, grad_w[v0:v1], False, cfg)
        if need_hidden:  # grad_h: [N, H] += dc [N, Vc] @ W[c] [Vc, H]
            _triton_matmul(dc, weight[v0:v1], grad_h, v0 > 0, cfg)
    return (grad_h.to(hidden.dtype) if need_hidden else None), grad_w


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    # CPUs without AMX run bf16 matmuls several times slower than fp32, and fp32 is the more exact reference
    return hidden.dtype if hidden.is_cuda else torch.float32


def _torch_logit_chunks(h, weight):
    # yields (v0, logits [N, Vc] fp32) with Vc chosen so one chunk holds TORCH_CHUNK_ELEMENTS
    vc = max(1, TORCH_CHUNK_ELEMENTS // max(h.shape[0], 1))
    for v0 in range(0, weight.shape[0], vc):
        yield v0, (h @ weight[v0:v0 + vc].to(h.dtype).t()).float()


def _torch_forward(hidden, weight, targets, ignore_index):
    h = hidden.to(_compute_dtype(hidden))
    lse = torch.full((hidden.shape[0],), float("-inf"), device=hidden.device)
    tgt = torch.zeros(hidden.shape[0], device=hidden.device)
    for v0, logits in _torch_logit_chunks(h, weight):
        lse = torch.logaddexp(lse, torch.logsumexp(logits, 1))
        inside = (targets >= v0) & (targets < v0 + logits.shape[1])
        idx = torch.where(inside, targets - v0, 0)[:, None]
        tgt += torch.where(inside, logits.gather(1, idx)[:, 0], 0.0)
    return torch.where(targets != ignore_index, tgt - lse, 0.0), lse


def _torch_backward(hidden, weight, targets, lse, g, need_hidden: bool, need_weight: bool):
    h = hidden.to(_compute_dtype(hidden))
    grad_h = torch.zeros(hidden.shape, device=hidden.device) if need_hidden else None
    grad_w = torch.empty_like(weight, memory_format=torch.contiguous_format) if need_weight else None
    for v0, logits in _torch_logit_chunks(h, weight):
        v1 = v0 + logits.shape[1]
        d = logits.sub_(lse[:, None]).exp_().neg_()  # -softmax chunk [N, Vc], in place: one chunk alive
        inside = (targets >= v0) & (targets < v1)
        d.scatter_add_(1, torch.where(inside, targets - v0, 0)[:, None], inside.float()[:, None])  # + onehot
        d = d.mul_(g[:, None]).to(h.dtype)
        if need_hidden:  # on CUDA a bf16 product per chunk, summed in fp32: good enough for a reference
            grad_h += d @ weight[v0:v1].to(h.dtype)
        if need_weight:
            grad_w[v0:v1] = d.t() @ h
    return (grad_h.to(hidden.dtype) if need_hidden else None), grad_w


def _function(name: str, forward_impl, backward_impl) -> type:
    def forward(ctx, hidden, weight, targets, ignore_index):
        logp, lse = forward_impl(hidden, weight, targets, ignore_index)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.ignore_index = ignore_index
        return logp

    def backward(ctx, grad_out):
        hidden, weight, targets, lse = ctx.saved_tensors
        # grad_out may be an expanded (stride-0) view, e.g. from logp.sum(); ignored rows contribute nothing
        g = torch.where(targets != ctx.ignore_index, grad_out.float(), 0.0).contiguous()
        grad_h, grad_w = backward_impl(hidden, weight, targets, lse, g, *ctx.needs_input_grad[:2])
        return grad_h, grad_w, None, None

    methods = {"forward": staticmethod(forward), "backward": staticmethod(backward)}
    return type(name, (torch.autograd.Function,), methods)


_TritonLinearLogprobs = _function("_TritonLinearLogprobs", _triton_forward, _triton_backward)
_TorchLinearLogprobs = _function("_TorchLinearLogprobs", _torch_forward, _torch_backward)


def _check(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    where = "linear_logprobs"
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise UserError(f"{where}: need hidden [N, H] and weight [V, H], got {tuple(hidden.shape)} and "
                        f"{tuple(weight.shape)} (flatten leading dims of hidden first)")
    if targets.shape != (hidden.shape[0],):
        raise UserError(f"{where}: targets must be [N]={hidden.shape[0]}, got {tuple(targets.shape)}")
    if hidden.dtype not in _DTYPES or weight.dtype != hidden.dtype:
        raise UserError(f"{where}: hidden and weight must share one dtype of float32/bfloat16/float16, got "
                        f"{hidden.dtype} and {weight.dtype}")
    if targets.dtype not in (torch.int64, torch.int32):
        raise UserError(f"{where}: targets must be int64 (or int32), got {targets.dtype}")
    if not (hidden.device == weight.device == targets.device):
        raise UserError(f"{where}: hidden, weight, targets on different devices: "
                        f"{hidden.device}, {weight.device}, {targets.device}")
    if weight.shape[0] == 0:
        raise UserError(f"{where}: empty vocabulary (weight has 0 rows)")
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= weight.shape[0]))
    if bad.any():  # one device sync; an out-of-range target would otherwise read garbage silently
        raise UserError(f"{where}: target {int(targets[bad][0])} outside [0, {weight.shape[0]}) "
                        f"and not ignore_index={ignore_index}")
    return targets.to(torch.int64).contiguous()


def linear_logprobs_torch(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          ignore_index: int = -100) -> torch.Tensor:
    # hidden: [N, H], weight: [V, H], targets: [N] -> logp: [N] fp32, 0 where targets == ignore_index
    targets = _check(hidden, weight, targets, ignore_index)
    return _TorchLinearLogprobs.apply(hidden, weight, targets, ignore_index)


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    ignore_index: int = -100) -> torch.Tensor:
    # hidden: [N, H], weight: [V, H], targets: [N] -> logp: [N] fp32, 0 where targets == ignore_index
    targets = _check(hidden, weight, targets, ignore_index)
    fn = _TritonLinearLogprobs if hidden.shape[0] and use_triton(hidden) else _TorchLinearLogprobs  # N=0: no grid
    return fn.apply(hidden, weight, targets, ignore_index)
