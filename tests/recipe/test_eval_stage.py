"""The run's optional evaluation stages (config `eval`): a tiny `metareward run` on tiny-random writes the
held-out answers of M_0 and of the trained model, judges them in both orders and reports a win rate that
`metareward report` draws; the stages called directly: which answers are the baseline, and a judge that
gives no verdict at all."""
import functools
import json
from pathlib import Path

import pytest

import metareward.eval.serving as serving
import metareward.recipe.evaluation as evaluation
from metareward import load_model
from metareward.cli import main
from metareward.config import EvalConfig, RunConfig
from metareward.engine import Engine, SamplingParams
from metareward.recipe.stages import Context
from metareward.trainer.distributed import Dist

ROOT = Path(__file__).resolve().parents[2]
EVAL_PROMPTS = ROOT / "examples" / "eval_prompts.jsonl"
SETTINGS = ["iterations=1", "prompts_per_iteration=2", "actor.n=2", "actor.max_tokens=8", "judge.n=2",
            "judge.max_tokens=4", "judge.score_mode=expected", "meta_judge.max_tokens=4",
            "meta_judge.winner_mode=expected", "dpo.lr=1e-4", "dpo.batch_size=2", "dpo.max_length=4096",
            "engine.kv_cache_memory=67108864", f"eval.prompts={EVAL_PROMPTS}", "eval.num_prompts=3",
            "eval.max_tokens=8", "eval.judge_max_tokens=4", "eval.verdict_mode=expected"]
VALUE = {"model": 1.0, "baseline": 0.0, "tie": 0.5}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def small_kv_cache(monkeypatch):
    # the judge is loaded through eval.serving, whose engines get the CPU default 1 GiB KV cache; 64 MiB
    # (16k tokens of tiny-random) is what the run's own engine gets here
    monkeypatch.setattr(serving, "Engine", functools.partial(Engine, kv_cache_memory=2**26))


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def greedy(model, tok, questions: list[str], max_tokens: int) -> list[str]:
    engine = Engine(model, tok, kv_cache_memory=2**26)
    outs = engine.generate([[{"role": "user", "content": q}] for q in questions],
                           SamplingParams(temperature=0, max_tokens=max_tokens))
    engine.release()
    return [o.samples[0].text for o in outs]


def test_run_with_eval_stage_and_report(tmp_path, capsys, monkeypatch):
    calls = []  # answer() batches: one per eval stage, not one per prompt
    real = evaluation.answer
    monkeypatch.setattr(evaluation, "answer", lambda engine, ps, *a: calls.append(len(ps)) or real(engine, ps, *a))
    out = tmp_path / "run"
    rc = main(["run", "--model", "tiny-random", "--prompts", str(ROOT / "examples" / "prompts.jsonl"),
               "--output-dir", str(out), *SETTINGS])
    assert rc == 0, capsys.readouterr().err[-3000:]
    assert calls == [3, 3]
    d = out / "iter_1"
    held = [json.loads(x) for x in EVAL_PROMPTS.read_text().splitlines()[:3]]
    base, new = rows_of(d / "eval_base_answers.jsonl"), rows_of(d / "eval_answers.jsonl")
    for rows in (base, new):
        assert [(r["id"], r["question"]) for r in rows] == [(h["id"], h["prompt"]) for h in held]
        assert all(set(r) == {"id", "question", "answer"} for r in rows)
    # M_0 answered before training, the trained model (the iteration's checkpoint) after it
    questions = [h["prompt"] for h in held]
    model, tok = load_model("tiny-random")
    assert [r["answer"] for r in base] == greedy(model, tok, questions, 8)
    assert [r["answer"] for r in new] == greedy(*load_model(str(d / "checkpoint")), questions, 8)

    judged = rows_of(d / "eval_judgments.jsonl")
    assert [r["id"] for r in judged] == [h["id"] for h in held]
    for r, b, n in zip(judged, base, new):
        assert set(r) == {"id", "verdict_new_first", "verdict_old_first", "len_new", "len_old"}
        assert r["len_new"] == len(tok.encode(n["answer"], add_special_tokens=False))
        assert r["len_old"] == len(tok.encode(b["answer"], add_special_tokens=False))
    prefs = [VALUE[a] if a == b else 0.5 for a, b in ((r["verdict_new_first"], r["verdict_old_first"]) for r in judged)]
    s = json.loads((d / "summary.json").read_text())
    e = s["eval"]
    assert s["eval_baseline"] == "previous" and e["n"] == 3 and e["n_excluded"] == 0
    assert e["win_rate"] == pytest.approx(sum(prefs) / 3)
    assert e["position_consistency"] == pytest.approx(
        sum(r["verdict_new_first"] == r["verdict_old_first"] for r in judged) / 3)
    assert e["win_rate_ci95"][0] <= e["win_rate"] <= e["win_rate_ci95"][1] and 0 <= e["lc_win_rate"] <= 1

    assert main(["report", str(out)]) == 0
    assert (out / "report" / "eval.png").stat().st_size > 1000
    assert "eval.png" in (out / "report.html").read_text()


def context(tmp_path: Path, t: int, loaded, **eval_cfg) -> Context:
    cfg = RunConfig(model="tiny-random", eval=EvalConfig(prompts=str(EVAL_PROMPTS), num_prompts=3, max_tokens=4,
                                                         judge_max_tokens=4, **eval_cfg))
    return Context(cfg, t, tmp_path / f"iter_{t}", Dist(), [], lambda: loaded)


def test_eval_stages_baselines_and_a_judge_without_verdicts(tmp_path, capsys):
    model, tok = load_model("tiny-random")
    loaded = (model, tok, Engine(model, tok, kv_cache_memory=2**26))
    # parse mode: tiny-random writes no "Winner:" line, so there is no verdict at all; the run goes on
    ctx = context(tmp_path, 1, loaded, verdict_mode="parse")
    assert evaluation.eval_base(ctx) == {"eval_prompts": 3}
    capsys.readouterr()
    got = evaluation.evaluate(ctx)
    assert got["eval"] is None and got["eval_judge"] == "tiny-random"
    assert "none of the 3 questions has a parseable judge verdict" in capsys.readouterr().err
    assert all(r["verdict_new_first"] is None is r["verdict_old_first"]
               for r in rows_of(tmp_path / "iter_1" / "eval_judgments.jsonl"))

    # iteration 2 against the previous iteration's answers, or against M_0's
    (tmp_path / "iter_1" / "eval_answers.jsonl").write_text("".join(
        json.dumps({"id": r["id"], "question": r["question"], "answer": "previous " * (k + 1)}) + "\n"
        for k, r in enumerate(rows_of(tmp_path / "iter_1" / "eval_base_answers.jsonl"))))
    m0 = [len(tok.encode(r["answer"], add_special_tokens=False))
          for r in rows_of(tmp_path / "iter_1" / "eval_base_answers.jsonl")]
    for baseline, lens in (("previous", [9, 18, 27]), ("initial", m0)):
        ctx = context(tmp_path, 2, loaded, verdict_mode="expected", baseline=baseline)
        got = evaluation.evaluate(ctx)
        assert got["eval_baseline"] == baseline and got["eval"]["n"] == 3
        assert [r["len_old"] for r in rows_of(tmp_path / "iter_2" / "eval_judgments.jsonl")] == lens
