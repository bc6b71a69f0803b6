"""The decoder: Llama 2/3, Mistral, Qwen2, Qwen3 in one module with Hugging Face parameter names, so a
checkpoint's state dict loads as is. Tokens are packed: every layer sees [N, hidden] for N tokens of any
number of sequences, and attention is the caller's backend (model/attention.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..kernels.linear_logprobs import linear_logprobs
from .attention import Packed
from .config import ModelConfig
from .rope import apply_rope, cos_sin, inv_freq


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 statistics, then back to the input dtype before the weight (as transformers does)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer, self.nh, self.nkv, self.hd = layer, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        b = cfg.qkv_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.nh * self.hd, bias=b)
        self.k_proj = nn.Linear(cfg.hidden_size, self.nkv * self.hd, bias=b)
        self.v_proj = nn.Linear(cfg.hidden_size, self.nkv * self.hd, bias=b)
        self.o_proj = nn.Linear(self.nh * self.hd, cfg.hidden_size, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.hd, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.hd, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, attn):
        # x: [N, H] -> q: [N, nh, hd], k/v: [N, nkv, hd]
        n = x.shape[0]
        q = self.q_proj(x).view(n, self.nh, self.hd)
        k = self.k_proj(x).view(n, self.nkv, self.hd)
        v = self.v_proj(x).view(n, self.nkv, self.hd)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return self.o_proj(attn(self.layer, q, k, v).reshape(n, self.nh * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, i, b = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj = nn.Linear(h, i, bias=b)
        self.up_proj = nn.Linear(h, i, bias=b)
        self.down_proj = nn.Linear(i, h, bias=b)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.self_attn = Attention(cfg, layer)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, attn):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class CausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Transformer(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()
        self.gradient_checkpointing = False
        self.weights_version = 0  # bumped by every optimizer step; the engine drops stale prefix-cache KV on it
        self._inv_freq: dict[torch.device, torch.Tensor] = {}  # not a buffer: derived, never saved

    def tie_weights(self) -> None:
        # After loading with assign=True the embedding is a new Parameter: point lm_head at it again.
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def hidden_states(self, input_ids: torch.Tensor, positions: torch.Tensor, attn) -> torch.Tensor:
        # input_ids, positions: [N] (tokens of all sequences, packed) -> final-normed hidden [N, H]
        x = self.model.embed_tokens(input_ids)
        f = self._inv_freq.get(x.device)
        if f is None:
            f = self._inv_freq[x.device] = inv_freq(self.config).to(x.device)
        cos, sin = cos_sin(positions, f, x.dtype)
        for layer in self.model.layers:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, attn, use_reentrant=False)
            else:
                x = layer(x, cos, sin, attn)
        return self.model.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def token_logprobs(self, input_ids, positions, attn, index, targets) -> torch.Tensor:
        # -> float32 [M]: log p(targets[j] | tokens up to index[j]), without ever holding [M, V] logits
        h = self.hidden_states(input_ids, positions, attn)[index]
        return linear_logprobs(h, self.lm_head.weight, targets)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # input_ids: [B, T] -> logits [B, T, V]; plain causal forward, no cache, no padding
        b, t = input_ids.shape
        pos = torch.arange(t, device=input_ids.device).repeat(b)
        h = self.hidden_states(input_ids.reshape(-1), pos, Packed.uniform(b, t))
        return self.compute_logits(h).view(b, t, -1)
