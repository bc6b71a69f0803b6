from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")
_ARCH = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
         "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool  # Qwen2 always; Llama / Qwen3 when attention_bias
    o_bias: bool  # Llama / Qwen3 when attention_bias (Qwen2 never)
    mlp_bias: bool  # Llama only
    qk_norm: bool  # per-head RMSNorm on q and k before RoPE (Qwen3)
    sliding_window: int | None
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    # The config.json as read, written back on save so that unknown keys survive a round trip.
    hf: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_hf(cls, d: dict, generation_config: dict | None = None) -> "ModelConfig":
        mt = d.get("model_type")
        if mt is None and d.get("architectures"):
            mt = _ARCH.get(d["architectures"][0])
        if mt not in SUPPORTED:
            arch = (d.get("architectures") or [None])[0]
            raise UserError(f"unsupported architecture: model_type={mt!r} architectures={arch!r} "
                            f"(supported: {', '.join(SUPPORTED)})")
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise UserError(f"unsupported hidden_act {act!r} (only silu)")
        try:
            heads = int(d["num_attention_heads"])
            hidden = int(d["hidden_size"])
            rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
            theta = float(rope.pop("rope_theta", d.get("rope_theta", 10000.0)))
            rtype = rope.get("rope_type", rope.get("type", "default"))
            if rtype not in ROPE_TYPES:
                raise UserError(f"unsupported rope_type {rtype!r} (supported: {', '.join(ROPE_TYPES)})")
            rope["rope_type"] = rtype
            window = d.get("sliding_window")
            if mt in ("qwen2", "qwen3") and not d.get("use_sliding_window", False):
                window = None
            cfg = cls(
                model_type=mt,
                vocab_size=int(d["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(d["intermediate_size"]),
                num_layers=int(d["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(d.get("num_key_value_heads") or heads),
                head_dim=int(d.get("head_dim") or hidden // heads),
                rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
                rope_theta=theta,
                rope_scaling=None if rtype == "default" else rope,
                max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
                tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                qkv_bias=mt == "qwen2" or (mt != "mistral" and bool(d.get("attention_bias", False))),
                o_bias=mt in ("llama", "qwen3") and bool(d.get("attention_bias", False)),
                mlp_bias=mt == "llama" and bool(d.get("mlp_bias", False)),
                qk_norm=mt == "qwen3",
                sliding_window=int(window) if window else None,
                eos_token_ids=_eos_ids(d, generation_config or {}),
                bos_token_id=d.get("bos_token_id"),
                hf=dict(d),
            )
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, UserError):
                raise
            raise UserError(f"bad config.json: {type(e).__name__}: {e}") from None
        if cfg.num_heads % cfg.num_kv_heads:
            raise UserError(f"bad config.json: num_attention_heads={cfg.num_heads} is not a multiple of "
                            f"num_key_value_heads={cfg.num_kv_heads}")
        return cfg

    def check_context(self, max_model_len: int) -> None:
        if self.sliding_window is not None and self.sliding_window < max_model_len:
            raise UserError(f"sliding-window attention is not supported: this {self.model_type} config has "
                            f"sliding_window={self.sliding_window}, shorter than the context {max_model_len} "
                            "it would run at")

    @property
    def num_params(self) -> int:
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attn = h * q * 2 + h * kv * 2 + (q + 2 * kv if self.qkv_bias else 0) + (h if self.o_bias else 0)
        mlp = 3 * h * i + (2 * i + h if self.mlp_bias else 0)
        layer = attn + mlp + 2 * h + (2 * self.head_dim if self.qk_norm else 0)
        return self.num_layers * layer + v * h * (1 if self.tie_word_embeddings else 2) + h


def _eos_ids(config: dict, generation_config: dict) -> tuple[int, ...]:
    ids: list[int] = []
    for src in (generation_config, config):
        e = src.get("eos_token_id")
        for x in (e if isinstance(e, list) else [e]):
            if isinstance(x, int) and x not in ids:
                ids.append(x)
    return tuple(ids)
