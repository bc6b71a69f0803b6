"""The run's optional evaluation stages (config `eval`): a tiny `metareward run` on tiny-random writes the
held-out answers of M_0 and of the trained model, judges them in both orders and reports a win rate (and the
judge's agreement with human labels) that `metareward report` draws; the stages called directly: which
answers are the baseline, and a judge that gives no verdict at all."""
import functools
import json
from pathlib import Path

import pytest

import metareward.eval.serving as serving
import metareward.eval.stages as stages
from metareward import load_model
from metareward.cli import main
from metareward.config import RunConfig
from metareward.engine import Engine, SamplingParams
from metareward.eval.config import EvalConfig, JudgeAgreementConfig, WinRateConfig
from metareward.stage import Context
from metareward.trainer.distributed import Dist

ROOT = Path(__file__).resolve().parents[2]
EVAL_PROMPTS = ROOT / "examples" / "eval_prompts.jsonl"
SETTINGS = ["iterations=1", "prompts_per_iteration=2", "actor.n=2", "actor.max_tokens=8", "judge.n=2",
            "judge.max_tokens=4", "judge.score_mode=expected", "meta_judge.max_tokens=4",
            "meta_judge.winner_mode=expected", "dpo.lr=1e-4", "dpo.batch_size=2", "dpo.max_length=4096",
            "engine.kv_cache_memory=67108864", f"eval.winrate.prompts={EVAL_PROMPTS}", "eval.winrate.num_prompts=3",
            "eval.winrate.max_tokens=8", "eval.winrate.judge_max_tokens=4", "eval.winrate.verdict_mode=expected"]
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


def test_run_with_eval_stage_and_report(tmp_path, capsys, monkeypatch, shared_data):
    calls = []  # answer() batches: one per eval stage, not one per prompt
    real = stages.answer
    monkeypatch.setattr(stages, "answer", lambda engine, ps, *a: calls.append(len(ps)) or real(engine, ps, *a))
    out = tmp_path / "run"
    llmbar = shared_data / "llmbar_pairwise_judge_eval.jsonl"
    rc = main(["run", "--model", "tiny-random", "--prompts", str(ROOT / "examples" / "prompts.jsonl"),
               "--output-dir", str(out), *SETTINGS, f"eval.judge_agreement.data={llmbar}",
               "eval.judge_agreement.limit=2", "eval.judge_agreement.mode=expected",
               "eval.judge_agreement.max_tokens=4", f"eval.ifeval.data={shared_data / 'ifeval_input_data.jsonl'}",
               "eval.ifeval.limit=3", "eval.ifeval.max_tokens=8"])
    assert rc == 0, capsys.readouterr().err[-3000:]
    assert calls == [3, 3]
    d = out / "iter_1"
    held = [json.loads(x) for x in EVAL_PROMPTS.read_text().splitlines()[:3]]
    base, new = rows_of(d / "eval_initial_answers.jsonl"), rows_of(d / "eval_answers.jsonl")
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
        assert (r["model_answer"], r["baseline_answer"]) == (n["answer"], b["answer"])
        assert r["len_model"] == len(tok.encode(n["answer"], add_special_tokens=False))
        assert r["len_baseline"] == len(tok.encode(b["answer"], add_special_tokens=False))
    prefs = [VALUE[a] if a == b else 0.5 for a, b in ((r["verdict_model_first"], r["verdict_baseline_first"])
                                                       for r in judged)]
    s = json.loads((d / "summary.json").read_text())
    w = s["eval"]["winrate"]
    assert w["baseline"] == "M_0" and w["judge"] == "M_0" and w["n"] == 3 and w["n_excluded"] == 0
    assert w["win_rate"] == pytest.approx(sum(prefs) / 3)
    assert w["position_consistency"] == pytest.approx(
        sum(r["verdict_model_first"] == r["verdict_baseline_first"] for r in judged) / 3)
    assert w["win_rate_ci95"][0] <= w["win_rate"] <= w["win_rate_ci95"][1] and 0 <= w["lc_win_rate"] <= 1
    for e in (s["eval"], s["eval_initial"]):  # M_1's and M_0's agreement with LLMBar's human labels
        j = e["judge_agreement"]
        assert j["n"] == 2 and j["mode"] == "expected" and 0 <= j["pairwise"]["accuracy"] <= 1

    # IFEval of M_0 and M_1: greedy answers to the first 3 prompts, scored by lm-eval's checks
    from metareward.eval import ifeval
    data = ifeval.load_data(shared_data / "ifeval_input_data.jsonl", 3)
    for name, key, weights in (("eval_initial_ifeval_responses.jsonl", "eval_initial", "tiny-random"),
                               ("eval_ifeval_responses.jsonl", "eval", str(d / "checkpoint"))):
        recs = rows_of(d / name)
        assert [r["key"] for r in recs] == [r["key"] for r in data]
        assert [r["response"] for r in recs] == greedy(*load_model(weights), [r["prompt"] for r in data], 8)
        _, want = ifeval.score(data, recs, seed=0)
        got = s[key]["ifeval"]
        assert got["num_prompts"] == 3 and got["generation"]["output_tokens"] == sum(r["num_tokens"] for r in recs)
        for m in ifeval.METRICS:
            assert got[m] == want[m] and got["ci95"][m] == want["ci95"][m]

    assert main(["report", str(out)]) == 0
    assert (out / "report" / "eval.png").stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert "eval.png" in html and "judge agreement" in html and "valid judgments" in html
    md = (out / "report.md").read_text().splitlines()
    assert md[0].startswith("| iteration | trained |") and md[2].startswith("| 1 | yes |")
    assert any(line.startswith("M_0: IFEval prompt / inst strict") for line in md)
    total = md[-1].split("|")[-2].strip()  # the stage table's last column: the iteration's wall time
    assert float(total) == pytest.approx(sum(v["seconds"] for v in s["stages"].values()), abs=0.1)


def context(tmp_path: Path, t: int, loaded, **winrate) -> Context:
    cfg = RunConfig(model="tiny-random", eval=EvalConfig(winrate=WinRateConfig(
        prompts=str(EVAL_PROMPTS), num_prompts=3, max_tokens=4, judge_max_tokens=4, **winrate)))
    return Context(cfg, t, tmp_path / f"iter_{t}", Dist(), [], lambda k: loaded, reads="output")


def test_eval_stages_baselines_and_a_judge_without_verdicts(tmp_path, capsys):
    model, tok = load_model("tiny-random")
    loaded = (model, tok, Engine(model, tok, kv_cache_memory=2**26))
    # parse mode: tiny-random writes no "Winner:" line, so there is no verdict at all; the run goes on
    ctx = context(tmp_path, 1, loaded, verdict_mode="parse")
    assert stages.eval_initial(ctx) == {}
    capsys.readouterr()
    got = stages.evaluate(ctx)
    assert got["winrate"] is None
    assert "none of the 3 questions has a parseable judge verdict" in capsys.readouterr().err
    assert all(r["verdict_model_first"] is None is r["verdict_baseline_first"]
               for r in rows_of(tmp_path / "iter_1" / "eval_judgments.jsonl"))

    # iteration 2 against the previous iteration's answers, or against M_0's
    (tmp_path / "iter_1" / "eval_answers.jsonl").write_text("".join(
        json.dumps({"id": r["id"], "question": r["question"], "answer": "previous " * (k + 1)}) + "\n"
        for k, r in enumerate(rows_of(tmp_path / "iter_1" / "eval_initial_answers.jsonl"))))
    m0 = [len(tok.encode(r["answer"], add_special_tokens=False))
          for r in rows_of(tmp_path / "iter_1" / "eval_initial_answers.jsonl")]
    for baseline, name, lens in (("previous", "M_1", [9, 18, 27]), ("initial", "M_0", m0)):
        ctx = context(tmp_path, 2, loaded, verdict_mode="expected", baseline=baseline)
        got = stages.evaluate(ctx)
        assert got["winrate"]["baseline"] == name and got["winrate"]["n"] == 3
        assert [r["len_baseline"] for r in rows_of(tmp_path / "iter_2" / "eval_judgments.jsonl")] == lens


def test_judge_agreement_config_is_validated():
    with pytest.raises(Exception, match="greater than or equal to 1"):
        JudgeAgreementConfig(data="x", limit=0)
