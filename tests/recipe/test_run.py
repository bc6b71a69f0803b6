"""End to end on tiny-random: artifacts and their schemas, pairs recomputed from the recorded scores and
verdicts, resume after kill -9 inside every stage, two processes (torchrun, gloo) vs one."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metareward.cli import main
from metareward.recipe import elo, pairs, scoring

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ["iterations=2", "prompts_per_iteration=3", "actor.n=3", "actor.max_tokens=12", "judge.n=3",
            "judge.max_tokens=12", "judge.score_mode=expected", "meta_judge.max_tokens=8",
            "meta_judge.winner_mode=expected", "dpo.lr=1e-4", "dpo.batch_size=4", "dpo.max_length=4096",
            "train_on=[[actor,judge],[actor]]", "engine.kv_cache_memory=67108864"]
STAGES = ["eval_base", "actor", "judge", "actor_pairs", "meta_judge", "judge_pairs", "train", "eval", "summary"]
ARTIFACTS = ["responses.jsonl", "judgments.jsonl", "actor_pairs.jsonl", "meta_judgments.jsonl",
             "judge_pairs.jsonl", "train_metrics.jsonl", "summary.json"]


def run_cli(out: Path, *extra: str, env=None, torchrun: int = 0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "metareward", "run", "--model", "tiny-random", "--prompts",
           str(ROOT / "examples" / "prompts.jsonl"), "--output-dir", str(out), *extra, *SETTINGS]
    if torchrun:
        cmd[1:3] = ["-m", "torch.distributed.run", f"--nproc-per-node={torchrun}", "-m", "metareward"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=out.parent,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.stat().st_size else []


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    r = run_cli(out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_artifacts_and_schemas(reference_run):
    out = reference_run
    assert (out / "config.yaml").is_file() and not (out / ".lock").exists()
    state = json.loads((out / "state.json").read_text())
    assert state["completed"] == [f"iter_{t}/{s}" for t in (1, 2) for s in STAGES]
    for t in (1, 2):
        d = out / f"iter_{t}"
        assert all((d / a).is_file() for a in ARTIFACTS) and (d / "checkpoint" / "config.json").is_file()
        resp = rows(d / "responses.jsonl")
        assert len(resp) == 9 and set(resp[0]) == {"prompt_id", "prompt", "response_index", "text", "num_tokens",
                                                    "finish_reason"}
        judg = rows(d / "judgments.jsonl")
        assert len(judg) == 27 and set(judg[0]) == {"prompt_id", "response_index", "judgment_index", "text", "score"}
        assert all(s["score"] is None or 0 <= s["score"] <= 5 for s in judg)
        for r in rows(d / "actor_pairs.jsonl"):
            assert set(r) == {"prompt_id", "prompt", "chosen", "rejected", "chosen_index", "rejected_index",
                              "chosen_score", "rejected_score", "chosen_tokens", "rejected_tokens"}
        meta = rows(d / "meta_judgments.jsonl")
        assert meta and set(meta[0]) == {"prompt_id", "response_index", "first", "second", "winner", "text"}
        for r in rows(d / "judge_pairs.jsonl"):
            assert set(r) == {"prompt_id", "response_index", "prompt", "chosen", "rejected", "chosen_judgment",
                              "rejected_judgment", "chosen_elo", "rejected_elo", "chosen_score", "rejected_score"}
        s = json.loads((d / "summary.json").read_text())
        assert s["responses"] == 9 and s["judgments"] == 27 and set(s["pairs"]) == {"actor", "judge"}
        assert {"actor", "judge", "meta_judge", "train"} <= set(s["stages"])
    m = rows(out / "iter_1" / "train_metrics.jsonl")
    assert m and m[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_pairs_follow_from_recorded_scores_and_verdicts(reference_run):
    for t in (1, 2):
        d = reference_run / f"iter_{t}"
        resp, judg = rows(d / "responses.jsonl"), rows(d / "judgments.jsonl")
        scores = {}
        for j in judg:
            scores.setdefault((j["prompt_id"], j["response_index"]), {})[j["judgment_index"]] = j["score"]
        expected_actor = {}
        for pid in {r["prompt_id"] for r in resp}:
            rs = sorted((r for r in resp if r["prompt_id"] == pid), key=lambda r: r["response_index"])
            mean = [scoring.mean_score(list(scores[(pid, r["response_index"])].values())) for r in rs]
            pair, _ = pairs.actor_pair(mean, [r["num_tokens"] for r in rs], 0.0)
            if pair and rs[pair.chosen_index]["text"] != rs[pair.rejected_index]["text"]:
                expected_actor[pid] = (pair.chosen_index, pair.rejected_index)
        got = {r["prompt_id"]: (r["chosen_index"], r["rejected_index"]) for r in rows(d / "actor_pairs.jsonl")}
        assert got == expected_actor
        for r in rows(d / "actor_pairs.jsonl"):  # length control: chosen is the shortest of the top tier
            assert r["chosen_score"] > r["rejected_score"]
        meta = rows(d / "meta_judgments.jsonl")
        pw = elo.position_weights(m["winner"] for m in meta)
        for jp in rows(d / "judge_pairs.jsonl"):
            key = (jp["prompt_id"], jp["response_index"])
            sc = [scores[key][i] for i in sorted(scores[key])]
            res = [(m["first"], m["second"], m["winner"]) for m in meta
                   if (m["prompt_id"], m["response_index"]) == key]
            ratings = elo.judgment_ratings(sc, res, pw.w1, pw.w2)
            pair, reason = pairs.judge_pair(ratings, sc, [len(j["text"]) for j in judg
                                                          if (j["prompt_id"], j["response_index"]) == key])
            assert reason is None and (pair.chosen_index, pair.rejected_index) == (jp["chosen_judgment"],
                                                                                  jp["rejected_judgment"])
            assert jp["chosen_elo"] == pytest.approx(pair.chosen_rating)


def same_artifacts(a: Path, b: Path) -> None:
    for t in (1, 2):
        for name in ARTIFACTS[:-2]:  # generated text must match exactly; floats to float tolerance
            ra, rb = rows(a / f"iter_{t}" / name), rows(b / f"iter_{t}" / name)
            assert len(ra) == len(rb), name
            for x, y in zip(ra, rb):
                assert x.keys() == y.keys()
                for k in x:
                    if isinstance(x[k], float):
                        assert y[k] == pytest.approx(x[k], rel=1e-4, abs=1e-5), (name, k)
                    else:
                        assert x[k] == y[k], (name, k)
        ma, mb = rows(a / f"iter_{t}" / "train_metrics.jsonl"), rows(b / f"iter_{t}" / "train_metrics.jsonl")
        assert [m["loss"] for m in ma] == pytest.approx([m["loss"] for m in mb], abs=1e-4)
    import torch
    from safetensors.torch import load_file
    wa = load_file(str(a / "iter_2" / "checkpoint" / "model.safetensors"))
    wb = load_file(str(b / "iter_2" / "checkpoint" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_kill_inside_every_stage_then_resume(reference_run, tmp_path):
    out = tmp_path / "run"
    faults = [f"iter_1/{s}" for s in STAGES if not s.startswith("eval")] + ["iter_2/judge", "iter_2/train"]
    for i, fault in enumerate(faults):
        r = run_cli(out, *(["--resume"] if i else []), env={"METAREWARD_FAULT": fault})
        assert r.returncode == -9, (fault, r.returncode, r.stderr[-2000:])  # killed by SIGKILL inside the stage
        done = json.loads((out / "state.json").read_text())["completed"]
        assert fault not in done
    r = subprocess.run([sys.executable, "-m", "metareward", "run", "--resume", "--output-dir", str(out)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not list(out.rglob(".*.tmp*")) and not (out / ".lock").exists()
    same_artifacts(reference_run, out)


@pytest.mark.slow
def test_two_processes_give_the_same_artifacts(reference_run, tmp_path):
    out = tmp_path / "run"
    r = run_cli(out, torchrun=2)
    assert r.returncode == 0, r.stderr[-3000:]
    same_artifacts(reference_run, out)


def _run(tmp_path, *args):
    return main(["run", "--model", "tiny-random", "--output-dir", str(tmp_path / "out"), *args])


@pytest.mark.parametrize("args, message", [
    (["actor.temprature=1"], "unknown config key 'actor.temprature' (did you mean 'actor.temperature'?)"),
    (["actor.top_p=abc"], "config key actor.top_p: expected float"),
    (["actor.top_p=1.5"], "actor.top_p must be in (0, 1]"),
    (["judge.score_mode=vibes"], "judge.score_mode must be parse or expected"),
    (["iterations=0"], "iterations must be >= 1"),
    (["train_on=[[actor,critic]]"], "unknown pair kind 'critic'"),
    (["notakeyvalue"], "expected key=value"),
])
def test_bad_config(tmp_path, capsys, args, message):
    assert _run(tmp_path, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_bad_prompts_file_names_the_line(tmp_path, capsys):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "fine"}\n{"prompt": ""}\n')
    assert _run(tmp_path, "--prompts", str(p)) == 2
    assert f"{p}:2: empty prompt" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_template_missing_placeholder(tmp_path, capsys):
    t = tmp_path / "judge.txt"
    t.write_text("Grade this: {response}\nScore: <points>")
    assert _run(tmp_path, f"judge.template={t}") == 2
    assert "missing placeholder(s) {question}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_existing_run_needs_resume_or_force_and_lock(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "state.json").write_text('{"completed": [], "stages": {}}')
    (out / "config.yaml").write_text("model: tiny-random\noutput_dir: " + str(out) + "\n")
    assert _run(tmp_path) == 2
    assert "holds another run's state: use --resume" in capsys.readouterr().err
    (out / ".lock").write_text(str(os.getppid()))  # a live process holds the run
    assert _run(tmp_path, "--resume") == 2
    assert f"another run (pid {os.getppid()})" in capsys.readouterr().err
    assert (out / "state.json").read_text() == '{"completed": [], "stages": {}}'


def test_resume_refuses_changed_settings(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("model: tiny-random\n")
    (out / "state.json").write_text('{"completed": [], "stages": {}}')
    assert main(["run", "--resume", "--output-dir", str(out), "actor.n=2"]) == 2
    assert "only --iterations may change (these differ: actor.n)" in capsys.readouterr().err


def test_prompts_that_outgrow_the_context_cost_their_verdict_not_the_run(tmp_path):
    # the meta-judge prompt (rubric + question + response + two judgments) does not fit 1600 tokens of
    # tiny-random's byte-level context; the judge prompt does
    out = tmp_path / "run"
    r = run_cli(out, "iterations=1", "engine.max_model_len=1600")
    assert r.returncode == 0, r.stderr[-3000:]
    import re
    m = re.search(r"meta-judge: (\d+) of (\d+) prompts leave no room for the answer", r.stderr)
    assert m and m.group(1) == m.group(2), r.stderr[-2000:]
    meta = rows(out / "iter_1" / "meta_judgments.jsonl")
    assert meta and all(m["winner"] is None and m["text"] == "" for m in meta)
    assert all(j["score"] is not None for j in rows(out / "iter_1" / "judgments.jsonl"))
