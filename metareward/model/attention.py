"""One attention call for every caller. The model hands each layer's q/k/v for the N tokens being
computed to a backend object chosen by the caller: `Packed` (causal within each of several packed
sequences: training, scoring, plain forward) or the engine's paged-cache backend.

Without flash-attn, sequences of different lengths go through ONE torch SDPA call per layer: the packed
tokens are laid out as a padded [S, T] grid (`Padding`) and a boolean mask keeps each query to its own
sequence's keys. Per-sequence calls cost ~50 us each on a CPU whatever their size, which adds up to most
of a step for hundreds of short sequences."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:  # optional, CUDA only
    from flash_attn import flash_attn_varlen_func
except Exception:  # ImportError, or a CUDA/ABI mismatch: fall back to torch
    flash_attn_varlen_func = None


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
         mask: torch.Tensor | None = None, gqa: bool = False) -> torch.Tensor:
    # q: [B, Tq, Hq, D], k/v: [B, Tk, Hkv, D] -> [B, Tq, Hq, D]; mask: bool [B, 1, Tq, Tk], True = attend.
    # GQA: torch's own (gqa=True, inference: 1.4x faster than repeating on a 2-core CPU at 16 x 120 x 600
    # tokens) or by repeating kv heads (the training path, whose backward is the well-trodden one).
    rep = q.shape[2] // k.shape[2]
    if rep > 1 and not gqa:
        k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                         is_causal=causal and mask is None, enable_gqa=rep > 1 and gqa)
    return out.transpose(1, 2)


@dataclass
class Padding:
    """N packed tokens of S sequences in a padded [S, T] grid. index: int64 [N], each token's place in the
    flattened grid (sequence s, position i -> s * T + i)."""
    index: torch.Tensor
    batch: int
    width: int

    @classmethod
    def of(cls, lens: list[int], device) -> "Padding":
        width = max(lens)
        lens_t = torch.tensor(lens, device=device)
        grid = torch.arange(width, device=device)[None, :] < lens_t[:, None]  # [S, T]
        return cls(grid.view(-1).nonzero().squeeze(1), len(lens), width)

    @property
    def dense(self) -> bool:  # no padding at all: pad/unpad are views
        return self.index.numel() == self.batch * self.width

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        # [N, ...] -> [S, T, ...], zeros in the padding (out of place: autograd flows through)
        if self.dense:
            return x.view(self.batch, self.width, *x.shape[1:])
        grid = x.new_zeros(self.batch * self.width, *x.shape[1:])
        return grid.index_copy(0, self.index, x).view(self.batch, self.width, *x.shape[1:])

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        # [S, T, ...] -> [N, ...]
        x = x.reshape(self.batch * self.width, *x.shape[2:])
        return x if self.dense else x.index_select(0, self.index)


def causal_mask(lens: list[int], width: int, device) -> torch.Tensor:
    # bool [S, 1, T, T]: query i of sequence s sees keys j <= i with j < len_s. Padding rows (i >= len_s)
    # see every real key, so no row is empty (an all-masked row would give NaN).
    t = torch.arange(width, device=device)
    lens_t = torch.tensor(lens, device=device)
    return ((t[None, :] <= t[:, None])[None] & (t[None, None, :] < lens_t[:, None, None]))[:, None]


@dataclass
class Packed:
    """Causal attention within each sequence of a packed batch. `lens` are host ints (known when the batch
    is built), so no device sync happens here."""
    lens: list[int]
    cu_seqlens: torch.Tensor | None = None  # int32 [S+1], only needed by flash-attn
    _padding: Padding | None = None
    _mask: torch.Tensor | None = None

    @classmethod
    def uniform(cls, batch: int, seqlen: int) -> "Packed":
        return cls([seqlen] * batch)

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q: [N, Hq, D], k/v: [N, Hkv, D]
        if flash_attn_varlen_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
            if self.cu_seqlens is None:
                cu = torch.tensor([0] + self.lens, dtype=torch.int32).cumsum(0, dtype=torch.int32)
                self.cu_seqlens = cu.to(q.device, non_blocking=True)
            m = max(self.lens)
            return flash_attn_varlen_func(q, k, v, self.cu_seqlens, self.cu_seqlens, m, m, causal=True)
        if len(set(self.lens)) == 1:  # one batched call, no mask
            b, t = len(self.lens), self.lens[0]
            return sdpa(q.view(b, t, *q.shape[1:]), k.view(b, t, *k.shape[1:]),
                        v.view(b, t, *v.shape[1:])).reshape(q.shape)
        width = max(self.lens)
        if len(self.lens) * width * width > 2 * sum(n * n for n in self.lens):
            # padding would more than double the attention work (one long sequence among short ones)
            outs = [sdpa(qi[None], ki[None], vi[None])[0]
                    for qi, ki, vi in zip(q.split(self.lens), k.split(self.lens), v.split(self.lens))]
            return torch.cat(outs)
        if self._padding is None:  # built at the first layer, shared by the others
            self._padding = Padding.of(self.lens, q.device)
            self._mask = causal_mask(self.lens, width, q.device)
        p = self._padding
        return p.unpad(sdpa(p.pad(q), p.pad(k), p.pad(v), mask=self._mask))
