"""GGUF import: the real SmolLM2 file against transformers' own GGUF model, and the error paths."""
import json

import numpy as np
import pytest
import torch

import metareward
from metareward.cli import main
from metareward.engine import Engine, SamplingParams

from ..numerics import assert_within_torch_error, max_err

pytest.importorskip("gguf", reason="the gguf extra is not installed")

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "List three prime numbers.",
           "Explain photosynthesis in one sentence.", "Translate 'good morning' into Spanish."]


def chats():
    return [[{"role": "user", "content": p}] for p in PROMPTS]


@pytest.fixture(scope="module")
def reference(smollm2_gguf):
    """transformers' own model and tokenizer from the same GGUF file (from_pretrained needs accelerate)."""
    pytest.importorskip("accelerate", reason="transformers' GGUF model needs accelerate")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    kw = dict(gguf_file=smollm2_gguf.name, local_files_only=True)
    hf = AutoModelForCausalLM.from_pretrained(str(smollm2_gguf.parent), dtype=torch.float32, **kw).eval()
    return hf, AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), **kw)


def test_import_layout(smollm2_dir):
    names = {p.name for p in smollm2_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "gguf_source.json"} <= names
    cfg = json.loads((smollm2_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["num_hidden_layers"] == 30
    assert cfg["hidden_size"] == 576 and cfg["num_key_value_heads"] == 3 and cfg["tie_word_embeddings"]
    assert json.loads((smollm2_dir / "generation_config.json").read_text())["eos_token_id"] == [2]  # <|im_end|>
    model, tok = metareward.load_model(smollm2_dir, device="cpu")
    assert model.dtype == torch.float32 and "<|im_start|>assistant" in tok.apply_chat_template(
        chats()[0], tokenize=False, add_generation_prompt=True)


def test_logits_match_transformers(smollm2_dir, reference):
    hf, hf_tok = reference
    model, tok = metareward.load_model(smollm2_dir, dtype="float32", device="cpu")
    ids = [tok.encode(tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True), add_special_tokens=False)
           for c in chats()]
    assert ids == [hf_tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False)
                   for c in chats()]
    x = torch.tensor([ids[0] + ids[1] + ids[2]])  # one sequence of 3 turns' tokens: [1, T]
    with torch.no_grad():
        ours, ref = model(x), hf(x).logits  # [1, T, V]
        truth_model = type(hf)(hf.config).to(torch.float64).eval()
        truth_model.load_state_dict({k: v.double() for k, v in hf.state_dict().items()})
        truth = truth_model(x).logits
    # The issue's bound is 1e-4; transformers' own float32 error against float64 is ~1e-4 on logits of magnitude
    # 40 (measured 1.04e-4 on this CPU), so the bound is whichever is larger, and our error against the float64
    # truth may not exceed a small multiple of transformers' (tests/numerics.py).
    assert max_err(ours, ref) <= max(1e-4, max_err(ref, truth))
    assert_within_torch_error(ours, ref, truth)


def test_greedy_matches_transformers(smollm2_dir, reference):
    hf, hf_tok = reference
    model, tok = metareward.load_model(smollm2_dir, dtype="float32", device="cpu")
    outs = Engine(model, tok).generate(chats(), SamplingParams(temperature=0.0, max_tokens=24), use_tqdm=False)
    for chat, out in zip(chats(), outs):
        ids = hf_tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
        with torch.no_grad():
            want = hf.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
        assert out.samples[0].token_ids == want, (chat, out.samples[0].text, hf_tok.decode(want))
    assert "Paris" in outs[0].samples[0].text


def test_load_model_imports_a_gguf_once(smollm2_gguf, smollm2_dir, tmp_path, monkeypatch):
    # The import itself is checked above; here: load_model takes a .gguf path, imports it into the cache once
    # (keyed by the file's hash and the dtype) and reads the cache afterwards.
    from metareward.model import gguf
    calls = []

    def read(path, *, dtype, device="cpu"):
        calls.append((path, dtype))
        return metareward.load_model(smollm2_dir, dtype=dtype, device=device)

    monkeypatch.setenv("METAREWARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf, "read_gguf", read)
    a, _ = metareward.load_model(smollm2_gguf, dtype="float32", device="cpu")
    b, _ = metareward.load_model(smollm2_gguf, dtype="float32", device="cpu")
    assert len(calls) == 1
    (cached,) = (tmp_path / "cache" / "gguf").iterdir()
    assert cached.name.endswith("-float32")
    assert json.loads((cached / "gguf_source.json").read_text())["sha256"] == gguf.sha256(smollm2_gguf)
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def _gguf(path, arch):
    import gguf
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_context_length(16)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _fails(args, capsys, *needles):
    assert main(["import-gguf", *map(str, args)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: "), err
    for n in needles:
        assert n in err, err


@pytest.mark.parametrize("arch, needle", [("foo", "unsupported GGUF architecture"),  # transformers refuses
                                          ("mamba", "unsupported architecture")])  # transformers reads, we refuse
def test_unsupported_architecture(tmp_path, capsys, arch, needle):
    _fails([_gguf(tmp_path / f"{arch}.gguf", arch), tmp_path / "out"], capsys, needle)
    assert not (tmp_path / "out").exists()


def test_not_gguf_and_missing(tmp_path, capsys):
    (tmp_path / "x.gguf").write_text("hello")
    _fails([tmp_path / "x.gguf", tmp_path / "out"], capsys, "not a GGUF file")
    _fails([tmp_path / "absent.gguf", tmp_path / "out"], capsys, "not found")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("keep", [300_000, 90_000_000])  # inside the vocabulary metadata; inside the tensor data
def test_truncated(smollm2_gguf, tmp_path, capsys, keep):
    cut = tmp_path / "cut.gguf"
    with open(smollm2_gguf, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(keep))
    _fails([cut, tmp_path / "out"], capsys, "cannot read GGUF file", "truncated")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["cut.gguf"]


def test_without_the_extra(tmp_path, capsys, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    _fails([_gguf(tmp_path / "m.gguf", "llama"), tmp_path / "out"], capsys, "pip install 'metareward[gguf]'")


def test_refuses_a_non_empty_output(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    _fails([_gguf(tmp_path / "m.gguf", "llama"), tmp_path / "out"], capsys, "--force")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
