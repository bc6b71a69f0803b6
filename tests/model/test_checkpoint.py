import json

import pytest
import torch
from safetensors.torch import save_file

import metareward
from metareward.model.tokenizer import tiny_tokenizer

from ..numerics import assert_within_torch_error
from .hf_configs import families, hf_model

FAMILIES = families()
IDS = torch.randint(0, 101, (2, 19), generator=torch.Generator().manual_seed(3))


def hf_dir(tmp_path, name, **save_kwargs):
    hf = hf_model(FAMILIES[name])
    d = tmp_path / name
    hf.save_pretrained(d, **save_kwargs)
    tiny_tokenizer().save_pretrained(d)
    return hf, d


@pytest.mark.parametrize("name", ["llama3-rope", "qwen2", "qwen3"])
def test_transformers_save_metareward_load(tmp_path, name):
    hf, d = hf_dir(tmp_path, name)
    model, tok = metareward.load_model(d, device="cpu")
    assert model.dtype == torch.float32 and tok.chat_template
    with torch.no_grad():
        assert_within_torch_error(model(IDS), hf(IDS).logits, hf.double()(IDS).logits)


@pytest.mark.parametrize("name", ["llama2-gqa", "llama-mha-tied", "qwen3"])
def test_metareward_save_transformers_load(tmp_path, name):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    _, d = hf_dir(tmp_path, name)
    model, tok = metareward.load_model(d)
    out = tmp_path / "saved"
    metareward.save_model(model, tok, out)
    hf2 = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.equal(hf2(IDS).logits, model(IDS))
    assert AutoTokenizer.from_pretrained(out).chat_template == tok.chat_template
    assert not list(tmp_path.glob(".saved.tmp-*"))


def test_sharded_round_trip(tmp_path):
    from transformers import AutoModelForCausalLM
    hf, d = hf_dir(tmp_path, "llama2-gqa", max_shard_size="60KB")
    assert (d / "model.safetensors.index.json").is_file()
    model, tok = metareward.load_model(d)
    out = tmp_path / "resharded"
    metareward.save_model(model, tok, out, max_shard_size=50_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((out / s).is_file() for s in shards)
    assert index["metadata"]["total_size"] == sum(p.numel() * 4 for p in model.parameters())
    hf2 = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.equal(hf2(IDS).logits, hf(IDS).logits)  # the same weights through the same code


def test_load_in_bfloat16(tmp_path):
    _, d = hf_dir(tmp_path, "qwen2")
    model, _ = metareward.load_model(d, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in model.parameters())


def test_tiny_random_round_trip(tmp_path):
    model, tok = metareward.load_model("tiny-random")
    metareward.save_model(model, tok, tmp_path / "tiny")
    again, tok2 = metareward.load_model(tmp_path / "tiny")
    ids = torch.tensor([tok.encode("hello")])
    with torch.no_grad():
        assert torch.equal(model(ids), again(ids))
    assert tok2.encode("hello") == tok.encode("hello")


def test_tiny_random_is_seeded():
    a, _ = metareward.load_model("tiny-random")
    b, _ = metareward.load_model("tiny-random")
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert 1e6 < sum(p.numel() for p in a.parameters()) < 1e7


@pytest.mark.parametrize("case, message", [
    ("missing", "model directory not found"),
    ("pickle", "only pickle weights"),
    ("no_config", "no config.json"),
    ("arch", "unsupported architecture"),
    ("no_weights", "no .safetensors weights"),
    ("bad_json", "cannot read"),
])
def test_bad_model_directories(tmp_path, case, message):
    d = tmp_path / "m"
    if case != "missing":
        d.mkdir()
        (d / "config.json").write_text(json.dumps(FAMILIES["llama2-gqa"].to_dict()))
        tiny_tokenizer().save_pretrained(d)
    if case == "pickle":
        (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    if case == "no_config":
        (d / "config.json").unlink()
        save_file({"x": torch.zeros(1)}, str(d / "model.safetensors"))
    if case == "arch":
        (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    if case == "bad_json":
        (d / "config.json").write_text("{not json")
    with pytest.raises(metareward.UserError, match=message):
        metareward.load_model(d)


def test_http_model_name_is_not_fetched(tmp_path):
    with pytest.raises(metareward.UserError, match="model directory not found: meta-llama/Llama-3-8B"):
        metareward.load_model("meta-llama/Llama-3-8B")
