"""Attention backends over the paged KV cache, handed to the model's layers by the model runner.
Cache per layer: k_cache, v_cache [num_blocks, block_size, num_kv_heads, head_dim]."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kernels.paged_attention import paged_attention_decode, store_kv
from ..model.attention import flash_attn_varlen_func, sdpa


@dataclass
class PagedPrefill:
    """New tokens of several sequences (whole prompts or chunks of them). Each attends causally to its
    sequence's earlier tokens, which may sit in cached blocks (a shared prefix, an earlier chunk)."""
    kv: torch.Tensor  # [2, L, num_blocks, block_size, Hkv, D]
    slot_mapping: torch.Tensor  # [N] where the new tokens' K/V go
    context_slots: torch.Tensor  # [K] the slots of every sequence's tokens [0, start + q_len), concatenated
    q_lens: list[int]
    k_lens: list[int]  # start + q_len per sequence
    cu_q: torch.Tensor | None = None  # int32 [S+1], flash-attn only
    cu_k: torch.Tensor | None = None

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q: [N, Hq, D], k/v: [N, Hkv, D]
        kc, vc = self.kv[0, layer], self.kv[1, layer]
        store_kv(k, v, kc, vc, self.slot_mapping)
        # One gather of every context (new tokens included, just stored): reading the prefix once is what
        # attention over it costs anyway, and it works for any block size (flash-attn's own paged path
        # needs blocks of 256 tokens, which would waste most of a judge prompt's shared prefix).
        k_ctx = kc.view(-1, *kc.shape[2:])[self.context_slots]
        v_ctx = vc.view(-1, *vc.shape[2:])[self.context_slots]
        if flash_attn_varlen_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
            # causal=True aligns the mask bottom-right when q_len < k_len: query i sees keys <= start + i
            return flash_attn_varlen_func(q, k_ctx, v_ctx, self.cu_q, self.cu_k, max(self.q_lens),
                                          max(self.k_lens), causal=True)
        outs = []
        for qi, ki, vi, n, m in zip(q.split(self.q_lens), k_ctx.split(self.k_lens), v_ctx.split(self.k_lens),
                                    self.q_lens, self.k_lens):
            if n == m:
                outs.append(sdpa(qi[None], ki[None], vi[None])[0])
            else:  # query i sits at position m - n + i
                mask = torch.arange(m, device=q.device)[None, :] <= torch.arange(m - n, m, device=q.device)[:, None]
                outs.append(sdpa(qi[None], ki[None], vi[None], mask=mask)[0])
        return torch.cat(outs)


@dataclass
class PagedDecode:
    """One new token per sequence. Padding rows (CUDA-graph batches) have slot -1 and context length 0."""
    kv: torch.Tensor
    slot_mapping: torch.Tensor  # [B]
    block_tables: torch.Tensor  # int32 [B, max_blocks]
    context_lens: torch.Tensor  # int32 [B]

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        kc, vc = self.kv[0, layer], self.kv[1, layer]
        store_kv(k, v, kc, vc, self.slot_mapping)
        return paged_attention_decode(q, kc, vc, self.block_tables, self.context_lens, q.shape[-1] ** -0.5)
