"""One attention call for every caller. The model hands each layer's q/k/v for the N tokens being
computed to a backend object chosen by the caller: `Packed` (causal within each of several packed
sequences: training, scoring, plain forward) or the engine's paged-cache backend."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:  # optional, CUDA only
    from flash_attn import flash_attn_varlen_func
except Exception:  # ImportError, or a CUDA/ABI mismatch: fall back to torch
    flash_attn_varlen_func = None


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
         mask: torch.Tensor | None = None) -> torch.Tensor:
    # q: [B, Tq, Hq, D], k/v: [B, Tk, Hkv, D] -> [B, Tq, Hq, D]. GQA by repeating kv heads: the CPU math
    # kernel has no native GQA, and the repeat is cheap next to the matmuls at these sizes.
    rep = q.shape[2] // k.shape[2]
    if rep > 1:
        k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask, is_causal=causal and mask is None)
    return out.transpose(1, 2)


@dataclass
class Packed:
    """Causal attention within each sequence of a packed batch. `lens` are host ints (known when the batch
    is built), so no device sync happens here."""
    lens: list[int]
    cu_seqlens: torch.Tensor | None = None  # int32 [S+1], only needed by flash-attn

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
        if len(set(self.lens)) == 1:  # one batched call
            b, t = len(self.lens), self.lens[0]
            return sdpa(q.view(b, t, *q.shape[1:]), k.view(b, t, *k.shape[1:]),
                        v.view(b, t, *v.shape[1:])).reshape(q.shape)
        outs = [sdpa(qi[None], ki[None], vi[None])[0]
                for qi, ki, vi in zip(q.split(self.lens), k.split(self.lens), v.split(self.lens))]
        return torch.cat(outs)
