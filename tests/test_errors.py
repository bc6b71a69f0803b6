"""Bad input and broken environments: each case is one `error: ...` line on stderr, exit code 2, and an output
directory exactly as it was before (or not created at all)."""
import errno
import json
import os
import pathlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import metareward
from metareward.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["iterations=1", "prompts_per_iteration=2", "actor.n=2", "actor.max_tokens=4", "judge.n=2",
         "judge.max_tokens=4", "judge.score_mode=expected", "meta_judge.max_tokens=4",
         "meta_judge.winner_mode=expected", "dpo.batch_size=2", "engine.kv_cache_memory=67108864"]


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() if p.is_file() else None for p in sorted(d.rglob("*"))} \
        if d.exists() else None


def one_error(capsys, args, code=2) -> str:
    capsys.readouterr()
    assert main([str(a) for a in args]) == code
    err = capsys.readouterr().err
    errors = [x for x in err.splitlines() if x.startswith("error: ")]  # progress bars and warnings aside
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err[-3000:]
    assert "Traceback" not in err
    return errors[0]


def run_args(out, *extra):
    return ["run", "--model", "tiny-random", "--output-dir", out, *SMALL, *extra]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("m") / "model"
    model, tok = metareward.load_model("tiny-random")
    metareward.save_model(model, tok, d)
    return d


def broken(model_dir: Path, tmp_path: Path, how: str) -> Path:
    d = tmp_path / how
    d.mkdir()
    for f in model_dir.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    w = d / "model.safetensors"
    if how == "truncated":
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif how == "tiny":
        w.write_bytes(b"\x00" * 20)
    elif how == "pickle":
        import pickle
        w.write_bytes(pickle.dumps({"model.embed_tokens.weight": [1, 2, 3]}))
    elif how == "bin-index":
        w.rename(d / "pytorch_model.bin")
        (d / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {"model.embed_tokens.weight": "pytorch_model.bin"}}))
    return d


@pytest.mark.parametrize("how, message", [
    ("truncated", "is truncated: its header describes"),
    ("tiny", "is not a safetensors file"),
    ("pickle", "is not a safetensors file"),
    ("bin-index", "names non-safetensors weight files (pytorch_model.bin)"),
])
def test_corrupt_weights(model_dir, tmp_path, capsys, how, message):
    d = broken(model_dir, tmp_path, how)
    out = tmp_path / "out"
    err = one_error(capsys, ["run", "--model", d, "--output-dir", out, *SMALL])
    assert message in err, err
    assert not out.exists()  # checked before the run directory is created
    err = one_error(capsys, ["generate", "--model", d, "--prompts", ROOT / "examples" / "prompts.jsonl",
                             "--output", tmp_path / "g.jsonl"])
    assert message in err and not (tmp_path / "g.jsonl").exists()


def test_output_dir_unwritable(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "cannot create the output directory" in one_error(capsys, run_args(afile / "run"))
    if Path("/sys").is_dir() and not os.access("/sys", os.W_OK | os.X_OK) or Path("/sys/class").is_dir():
        err = one_error(capsys, run_args("/sys/metareward-run"))  # sysfs: nothing can be created there
        assert "cannot create the output directory /sys/metareward-run" in err
    real = pathlib.Path.mkdir

    def read_only(self, *a, **kw):  # a read-only file system (the tests run as any user, root included)
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real(self, *a, **kw)
    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    assert "Read-only file system" in one_error(capsys, run_args(tmp_path / "ro" / "run"))


def test_disk_full_while_saving_a_checkpoint(tmp_path, capsys, monkeypatch):
    import metareward.model.checkpoint as checkpoint

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(checkpoint, "save_file", full)
    out = tmp_path / "run"
    err = one_error(capsys, run_args(out))
    assert "cannot write the checkpoint" in err and "No space left on device" in err
    state = json.loads((out / "state.json").read_text())
    assert "iter_1/train" not in state["completed"] and state["current"] == "iter_1/train"
    assert not list(out.rglob(".*tmp*")) and not (out / ".lock").exists()


def test_bad_model_or_long_prompt_leaves_nothing_behind(tmp_path, capsys):
    out = tmp_path / "run"
    assert "model directory not found" in one_error(capsys, ["run", "--model", tmp_path / "nope", "--output-dir",
                                                             out, *SMALL])
    assert not out.exists()
    p = tmp_path / "p.jsonl"
    p.write_text('{"id": "a", "prompt": "fine"}\n{"id": "b", "prompt": "' + "x" * 5000 + '"}\n')
    err = one_error(capsys, run_args(out, "--prompts", p))
    assert f"{p}:2: prompt 'b' has" in err and "the context is 4096" in err
    assert not out.exists()
    # the corrected command is not refused
    p.write_text('{"id": "a", "prompt": "fine"}\n')
    assert main([str(a) for a in run_args(out, "--prompts", p, "dpo.lr=1e-5")]) in (0, 1)


@pytest.mark.parametrize("args, message", [
    (["dpo.lr=.inf"], "config key dpo.lr: input should be a finite number"),
    (["dpo.lr=-1"], "config key dpo.lr: input should be greater than 0"),
    (["engine.kv_cache_memory=-1"], "config key engine.kv_cache_memory: input should be greater than 0"),
    (["engine.kv_cache_memory=1e15"], "bytes between 1 MiB and this machine's"),
    (["engine.block_size=100000"], "config key engine.block_size: input should be less than or equal to 4096"),
    (["engine.max_model_len=0"], "config key engine.max_model_len: input should be greater than or equal to 2"),
    (["iterations=100000000"], "config key iterations: input should be less than or equal to 1000"),
    (["actor.temprature=1"], "unknown config key 'actor.temprature' (did you mean 'actor.temperature'?)"),
    (["actor.top_p=abc"], "config key actor.top_p: input should be a valid number"),
    (["actor.top_p=1.5"], "config key actor.top_p: input should be less than or equal to 1"),
    (["actor.n=true"], "config key actor.n: input should be a valid integer"),
    (["judge.score_mode=vibes"], "config key judge.score_mode: input should be 'parse' or 'expected'"),
    (["iterations=0"], "config key iterations: input should be greater than or equal to 1"),
    (["train_on=[[actor,critic]]"], "config key train_on.1: input should be 'actor' or 'judge' (got 'critic')"),
    (["engine.block_size=[16,32]"], "config key engine.block_size is fixed for the whole run"),
    (["model=[a,b]"], "config key model is fixed for the whole run"),
    (["iterations=2", "dpo.lr=[1e-6,-1]"], "iteration 2: config key dpo.lr: input should be greater than 0"),
    (["dpo=1"], "config key 'dpo' is a section"),
    (["notakeyvalue"], "expected key=value"),
])
def test_bad_settings(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    err = one_error(capsys, run_args(out, *args))
    assert message in err, err
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["eval", "judge", "--model", "tiny-random", "--data", "x.jsonl", "--format", "llmbar", "--limit", "-1"],
     "Invalid value for '--limit': -1 is not in the range x>=1"),
    (["eval", "winrate", "--model", "tiny-random", "--baseline", "b", "--judge", "tiny-random", "--prompts", "p",
      "--output", "o", "--bootstrap", "-3"], "Invalid value for '--bootstrap': -3 is not in the range x>=0"),
    (["generate", "--prompts", "p", "--output", "o", "--top-p", "0"], "Invalid value for '--top-p'"),
    (["train-dpo", "--pairs", "p", "--output", "o", "--lr", "inf"], "option --lr: input should be a finite number"),
    (["train-dpo", "--pairs", "p", "--output", "o", "--beta", "0"], "option --beta: input should be greater than 0"),
])
def test_bad_command_options(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert message in one_error(capsys, args)
    assert list(tmp_path.iterdir()) == []


def test_prompt_files(tmp_path, capsys):
    out = tmp_path / "out"
    p = tmp_path / "bom.jsonl"
    p.write_bytes('\ufeff{"id": "a", "prompt": "hello"}\n{"id": "b", "prompt": "bye"}\n'.encode())
    from metareward.prompts import read_prompts
    assert [x.id for x in read_prompts(p)] == ["a", "b"]  # a byte-order mark is not data
    p.write_text('{"prompt": "a", "id": "1"}\n{"prompt": "b"}\n')
    err = one_error(capsys, run_args(out, "--prompts", p))
    assert f"{p}:2: prompt id '1' is used twice ({p}:1 and here), once as a row's index because that row has " \
           "no id" in err
    p.write_text('{"prompt": "fine"}\n{"prompt": ""}\n')
    assert f"{p}:2: empty prompt" in one_error(capsys, run_args(out, "--prompts", p))
    assert not out.exists()


def test_config_file_problems(tmp_path, capsys):
    out = tmp_path / "out"
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    assert "the config file is empty" in one_error(capsys, ["run", "--config", empty, "--output-dir", out])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    assert "not valid YAML" in one_error(capsys, ["run", "--config", bad])
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\nmodel: tiny-random\n")
    assert "`base` files include each other" in one_error(capsys, ["run", "--config", loop])
    t = tmp_path / "judge.txt"
    t.write_text("Grade this: {response}\nScore: <points>")
    assert "missing placeholder(s) {question}" in one_error(capsys, run_args(out, f"judge.template={t}"))
    assert not out.exists()


def test_existing_run_needs_resume_or_force_and_lock(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "state.json").write_text('{"completed": [], "stages": {}}')
    (out / "config.yaml").write_text("model: tiny-random\n")
    before = snapshot(out)
    assert "holds another run's state: use --resume" in one_error(capsys, run_args(out))
    # a live process holds the run's lock
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from metareward.rundir import RunDir
r = RunDir({str(out)!r}); r.lock(); print("locked", flush=True); time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        err = one_error(capsys, ["run", "--resume", "--output-dir", out])
        assert f"another run (pid {holder.pid}) is using {out}" in err
    finally:
        holder.kill()
        holder.wait()
    (out / ".lock").unlink()
    assert snapshot(out) == before


def test_resume_refuses_changed_settings(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("model: tiny-random\n")
    (out / "state.json").write_text('{"completed": [], "stages": {}}')
    before = snapshot(out)
    err = one_error(capsys, ["run", "--resume", "--output-dir", out, "actor.n=2"])
    assert "only --iterations may change (these differ: actor.n)" in err
    assert "nothing to resume" in one_error(capsys, ["run", "--resume", "--output-dir", tmp_path / "none"])
    assert snapshot(out) == before


def test_the_lock_is_taken_by_one_process_only(tmp_path):
    # many rounds of two processes racing for the lock: never both (the old lock wrote its pid after the
    # exclusive create, so a reader of the still-empty file took it for stale: 487 of 1000 rounds)
    script = """
import os, sys
from metareward.errors import UserError
from metareward.rundir import RunDir
won = 0
for i in range(int(sys.argv[1])):
    r = RunDir(sys.argv[2] + f"/r{i}")
    sys.stdout.write(f"{i} ")
    sys.stdout.flush()
    try:
        r.lock()
        sys.stdout.write("W\\n")
        sys.stdout.flush()
        sys.stdin.readline()  # hold the lock until the test says every round's contest is over
    except UserError:
        sys.stdout.write("L\\n")
        sys.stdout.flush()
        sys.stdin.readline()
    r.unlock()
"""
    rounds = 200
    procs = [subprocess.Popen([sys.executable, "-c", script, str(rounds), str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for i in range(rounds):
            results = [p.stdout.readline().split() for p in procs]
            assert all(r[0] == str(i) for r in results)
            assert sorted(r[1] for r in results) == ["L", "W"], (i, results)
            for p in procs:
                p.stdin.write("\n")
                p.stdin.flush()
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_nan_weights(tmp_path, capsys):
    model, tok = metareward.load_model("tiny-random")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    d = tmp_path / "nan-model"
    metareward.save_model(model, tok, d)
    err = one_error(capsys, ["generate", "--model", d, "--prompts", ROOT / "examples" / "prompts.jsonl",
                             "--output", tmp_path / "g.jsonl", "--max-tokens", "4"])
    assert "not finite" in err and not (tmp_path / "g.jsonl").exists()
    out = tmp_path / "run"
    err = one_error(capsys, ["run", "--model", d, "--output-dir", out, *SMALL])
    assert "not finite" in err


def test_non_finite_loss_stops_the_run_and_keeps_the_input_weights(tmp_path, capsys, monkeypatch):
    import metareward.trainer.dpo as dpo
    real, calls = dpo.dpo_loss, []

    def poisoned(lp, *a, **kw):  # the second optimizer step's loss is NaN (an overflow, a bad pair...)
        calls.append(1)
        out = real(lp, *a, **kw)
        if len(calls) > 1:
            out.losses = out.losses * float("nan")
        return out
    monkeypatch.setattr(dpo, "dpo_loss", poisoned)
    out = tmp_path / "run"
    err = one_error(capsys, run_args(out, "dpo.epochs=3", "prompts_per_iteration=4"), code=1)
    assert "non-finite" in err and "the checkpoint of iteration 1 was not written" in err, err
    state = json.loads((out / "state.json").read_text())
    assert state["failed"]["stage"] == "iter_1/train" and "iter_1/train" not in state["completed"]
    assert not (out / "iter_1" / "checkpoint").exists()
    for f in out.rglob("*.json*"):  # NaN is not JSON: nothing written may hold it
        text = f.read_text()
        assert "NaN" not in text and "Infinity" not in text, f


def test_a_run_that_trains_nothing_exits_non_zero(tmp_path, capsys):
    # parse mode on tiny-random: no judgment holds a "Score:" line, so no pair, no training step
    out = tmp_path / "run"
    capsys.readouterr()
    rc = main([str(a) for a in run_args(out, "judge.score_mode=parse")])
    err = capsys.readouterr().err
    assert rc == 1, err[-2000:]
    assert re.search(r"warning: iteration 1: 0 of \d+ judgments had a valid score \(no Score: line\); "
                     r"judge.score_mode=expected reads the score from the logits", err), err[-3000:]
    assert "iteration 1 is not trained" in err and "NOT TRAINED" in err
    assert err.strip().splitlines()[-1].startswith("error: no iteration trained")
    s = json.loads((out / "iter_1" / "summary.json").read_text())
    assert s["trained"] is False and s["valid_judgment_rate"] == 0.0
