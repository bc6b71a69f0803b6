import json

import pytest
import torch
from safetensors.torch import save_file

import metareward
from metareward.cli import main
from metareward.model.tokenizer import tiny_tokenizer

from ..model.hf_configs import families

FIELDS = {"prompt_id", "sample_index", "prompt", "text", "token_ids", "finish_reason", "num_prompt_tokens",
          "num_generated_tokens", "num_cached_tokens", "cumulative_logprob"}


@pytest.fixture
def prompts(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text('{"id": "a", "prompt": "Say hi."}\n\n{"prompt": [{"role": "user", "content": "Count to 3."}]}\n')
    return p


def test_generate_writes_one_line_per_sample(tmp_path, prompts, capsys):
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--prompts", str(prompts), "--output", str(out), "--n", "3", "--max-tokens", "8",
                 "--temperature", "0.7", "--seed", "1"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 6 and all(set(r) == FIELDS for r in rows)
    assert [(r["prompt_id"], r["sample_index"]) for r in rows] == [("a", 0), ("a", 1), ("a", 2), ("1", 0),
                                                                   ("1", 1), ("1", 2)]
    assert rows[1]["num_cached_tokens"] == rows[1]["num_prompt_tokens"]  # the 2nd sample shares the prefill
    assert all(r["num_generated_tokens"] == len(r["token_ids"]) <= 8 for r in rows)
    again = tmp_path / "again.jsonl"
    main(["generate", "--prompts", str(prompts), "--output", str(again), "--n", "3", "--max-tokens", "8",
          "--temperature", "0.7", "--seed", "1"])
    assert [json.loads(x)["token_ids"] for x in again.read_text().splitlines()] == [r["token_ids"] for r in rows]


def test_raw_skips_the_chat_template(tmp_path, prompts):
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--prompts", str(prompts), "--output", str(out), "--raw", "--max-tokens", "2",
                 "--temperature", "0"]) == 0
    first = json.loads(out.read_text().splitlines()[0])
    assert first["num_prompt_tokens"] == len(tiny_tokenizer().encode("Say hi."))


@pytest.mark.parametrize("content, args, message", [
    (None, [], "file not found"),
    ("", [], "is empty"),
    ('{"prompt": "ok"}\n{"prompt": "ok", \n', [], ":2: not valid JSON"),
    ('{"prompt": "ok"}\n{"text": "no prompt"}\n', [], ":2: missing field 'prompt'"),
    ('{"prompt": "   "}\n', [], ":1: empty prompt"),
    ('{"prompt": "' + "x" * 5000 + '"}\n', [], ":1: prompt has"),
    ('{"prompt": "ok"}\n', ["--temperature", "-1"], "Invalid value for '--temperature'"),
    ('{"prompt": "ok"}\n', ["--top-p", "0"], "Invalid value for '--top-p'"),
    ('{"prompt": "ok"}\n', ["--top-p", "1.01"], "Invalid value for '--top-p'"),
    ('{"prompt": "ok"}\n', ["--n", "0"], "Invalid value for '--n'"),
    ('{"prompt": "ok"}\n', ["--bogus"], "No such option"),
])
def test_bad_generate_inputs(tmp_path, capsys, content, args, message):
    p = tmp_path / "p.jsonl"
    if content is not None:
        p.write_text(content)
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--prompts", str(p), "--output", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl*"))


def test_skip_long_counts_and_continues(tmp_path, capsys):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "' + "x" * 5000 + '"}\n{"prompt": "short"}\n')
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--prompts", str(p), "--output", str(out), "--skip-long", "--max-tokens", "2"]) == 0
    assert len(out.read_text().splitlines()) == 1
    assert '"skipped_long": 1' in capsys.readouterr().err


def _model_dir(tmp_path, case):
    d = tmp_path / "m"
    if case == "missing":
        return d
    d.mkdir()
    cfg = families()["llama2-gqa"]
    (d / "config.json").write_text(json.dumps(cfg.to_dict()))
    tok = tiny_tokenizer()
    if case == "no_chat_template":
        tok.chat_template = None
    tok.save_pretrained(d)
    if case == "pickle":
        (d / "pytorch_model.bin").write_bytes(b"\x80\x04")
    elif case == "no_config":
        (d / "config.json").unlink()
    elif case == "arch":
        (d / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    else:
        from transformers import AutoModelForCausalLM
        cfg.vocab_size = len(tok)
        (d / "config.json").write_text(json.dumps(cfg.to_dict()))
        m = AutoModelForCausalLM.from_config(cfg)
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(d / "model.safetensors"),
                  metadata={"format": "pt"})
        if case == "no_chat_template":
            for f in d.glob("chat_template*"):
                f.unlink()
    return d


@pytest.mark.parametrize("case, message", [
    ("missing", "model directory not found"),
    ("pickle", "only pickle weights"),
    ("no_config", "no config.json"),
    ("arch", "unsupported architecture"),
    ("no_chat_template", "has no chat template: pass --chat-template FILE"),
])
def test_bad_models_one_line_exit_2(tmp_path, prompts, capsys, case, message):
    d = _model_dir(tmp_path, case)
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--model", str(d), "--prompts", str(prompts), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_chat_template_file_fixes_a_tokenizer_without_one(tmp_path, prompts):
    d = _model_dir(tmp_path, "no_chat_template")
    t = tmp_path / "t.jinja"
    t.write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--model", str(d), "--prompts", str(prompts), "--output", str(out), "--chat-template",
                 str(t), "--max-tokens", "2"]) == 0
    model, tok = metareward.load_model(d, chat_template=t)
    first = json.loads(out.read_text().splitlines()[0])
    assert first["num_prompt_tokens"] == len(tok.encode("Say hi.\n", add_special_tokens=False))
    assert torch.is_tensor(model(torch.tensor([[1, 2]])))
