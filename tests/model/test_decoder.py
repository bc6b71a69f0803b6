import pytest
import torch

import metareward
from metareward.model import CausalLM, ModelConfig
from metareward.model.attention import Packed

from ..numerics import assert_within_torch_error
from .hf_configs import families, hf_model

FAMILIES = families()


def ours_from_hf(hf) -> CausalLM:
    cfg = ModelConfig.from_hf(hf.config.to_dict())
    m = CausalLM(cfg)
    missing, unexpected = m.load_state_dict(hf.state_dict(), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    m.tie_weights()
    return m.eval()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_logits_match_transformers(name):
    hf = hf_model(FAMILIES[name])
    ours = ours_from_hf(hf)
    ids = torch.randint(0, 101, (3, 77), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids)
        truth = hf.double()(ids).logits
    assert got.shape == (3, 77, 101)
    assert_within_torch_error(got, ref, truth)


def test_llama3_rope_scaling_changes_logits():
    # guard against a silently ignored rope_scaling: with the scaling the logits must differ from plain RoPE
    hf = hf_model(FAMILIES["llama3-rope"])
    d = hf.config.to_dict()
    d.pop("rope_scaling", None)
    d["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
    plain = CausalLM(ModelConfig.from_hf(d))
    plain.load_state_dict(hf.state_dict())
    ids = torch.randint(0, 101, (1, 200))
    with torch.no_grad():
        assert (plain(ids) - ours_from_hf(hf)(ids)).abs().max() > 1e-3


def test_packed_varlen_equals_separate_forwards():
    torch.manual_seed(0)
    model, _ = metareward.load_model("tiny-random")
    seqs = [torch.randint(0, 256, (n,)) for n in (5, 17, 1, 9)]
    pos = torch.cat([torch.arange(len(s)) for s in seqs])
    with torch.no_grad():
        h = model.hidden_states(torch.cat(seqs), pos, Packed([len(s) for s in seqs]))
        packed = model.compute_logits(h)
        separate = torch.cat([model(s[None])[0] for s in seqs])
        truth = torch.cat([model.double()(s[None])[0] for s in seqs])
    assert_within_torch_error(packed, separate, truth)


def test_tied_embeddings_share_one_tensor():
    model, _ = metareward.load_model("tiny-random")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert len(list(model.parameters())) == len({id(p) for p in model.parameters()})


def test_bfloat16_close_to_float32():
    hf = hf_model(FAMILIES["qwen3"])
    ours = ours_from_hf(hf)
    ids = torch.randint(0, 101, (2, 33))
    with torch.no_grad():
        ref = ours(ids)
        got = ours.to(torch.bfloat16)(ids).float()
    assert (got - ref).abs().max() <= 0.1  # bf16 keeps ~3 significant digits; logits here are O(1)


def test_mistral_sliding_window_refused():
    from transformers import MistralConfig
    from .hf_configs import BASE
    cfg = ModelConfig.from_hf(MistralConfig(**BASE, sliding_window=64).to_dict())
    with pytest.raises(metareward.UserError, match="sliding-window attention is not supported"):
        cfg.check_context(256)
    cfg.check_context(64)  # a context within the window is exact


def test_unsupported_architecture():
    with pytest.raises(metareward.UserError, match="unsupported architecture"):
        ModelConfig.from_hf({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_num_params_formula(name):
    m = ours_from_hf(hf_model(FAMILIES[name]))
    assert m.config.num_params == sum(p.numel() for p in m.parameters())
