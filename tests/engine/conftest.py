import pytest
import torch

from metareward.model import CausalLM, ModelConfig
from metareward.model.tokenizer import tiny_tokenizer

from ..model.hf_configs import BASE


def hf_family_configs():
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config
    base = {**BASE, "vocab_size": len(tiny_tokenizer()), "bos_token_id": 256, "eos_token_id": 257,
            "max_position_embeddings": 512, "initializer_range": 0.3}  # peaky logits: no near-ties in argmax
    return {
        "llama": LlamaConfig(**base),
        "llama3": LlamaConfig(**base, rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        "mistral": MistralConfig(**base, sliding_window=None),
        "qwen2": Qwen2Config(**{**base, "num_key_value_heads": 1}, tie_word_embeddings=True),
        "qwen3": Qwen3Config(**base, head_dim=24),
    }


def pair(cfg, seed=0):
    """(transformers model, metareward model with the same weights)"""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    ours = CausalLM(ModelConfig.from_hf(cfg.to_dict(), {"eos_token_id": cfg.eos_token_id}))
    ours.load_state_dict(hf.state_dict(), strict=False)
    ours.tie_weights()
    return hf, ours.eval()


@pytest.fixture(scope="session")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def llama_pair():
    return pair(hf_family_configs()["llama"])
