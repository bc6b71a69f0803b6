"""`tiny-random`: a ~3M-parameter Llama with seeded random weights and a byte-level tokenizer, built in
code. It is what runs on a fresh machine with no files and no downloads."""
from __future__ import annotations

import torch

from .config import ModelConfig
from .decoder import CausalLM
from .tokenizer import tiny_tokenizer

NAME = "tiny-random"
SEED = 0
STD = 0.1


def tiny_config(vocab_size: int, bos: int, eos: int) -> ModelConfig:
    hf = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab_size,
        "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 8,
        "num_key_value_heads": 4, "head_dim": 32, "hidden_act": "silu", "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True, "attention_bias": False,
        "bos_token_id": bos, "eos_token_id": eos,
    }
    return ModelConfig.from_hf(hf, {"bos_token_id": bos, "eos_token_id": eos})


def tiny_random(dtype: torch.dtype, device: torch.device):
    tok = tiny_tokenizer()
    cfg = tiny_config(len(tok), tok.bos_token_id, tok.eos_token_id)
    g = torch.Generator().manual_seed(SEED)
    model = CausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                continue  # RMSNorm weights stay 1
            # std 0.1, not transformers' 0.02: at 0.02 the next-token distribution barely depends on the
            # context (a meta-judge verdict comes out the same whatever the judgments say), at 0.1 it does.
            # Drawn on the CPU so that every device gets the same weights.
            p.copy_(torch.randn(p.shape, generator=g) * STD)
    return model.to(device=device, dtype=dtype), tok
