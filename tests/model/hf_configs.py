"""Random tiny configs of every supported family, built with transformers' own config classes (the
reference implementation), so tests can compare logits against transformers' models."""
import torch

BASE = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)


def families():
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config
    return {
        "llama2-gqa": LlamaConfig(**BASE),
        "llama-mha-tied": LlamaConfig(**{**BASE, "num_key_value_heads": 4}, tie_word_embeddings=True),
        "llama3-rope": LlamaConfig(**BASE, rope_theta=500000.0, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32}),
        "llama-mlp-bias": LlamaConfig(**BASE, attention_bias=True, mlp_bias=True),
        "mistral": MistralConfig(**BASE, sliding_window=None),
        "qwen2": Qwen2Config(**{**BASE, "num_key_value_heads": 1}, tie_word_embeddings=True),
        "qwen3": Qwen3Config(**BASE, head_dim=24, tie_word_embeddings=False),
    }


def hf_model(cfg, seed=0):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():  # transformers initializes norms to 1 and biases to 0: randomize so they are tested
        for name, p in m.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return m.eval()
