"""`metareward eval winrate | judge | export` through the CLI, in-process, on tiny-random: the files each job
writes, the win rate recomputed from the per-question verdicts, the two presentation orders, the judge
report recomputed from its per-row output, each export format field by field, and bad input → one line
`error: ...`, exit code 2, nothing written."""
import functools
import json
from pathlib import Path

import pytest
import torch

import metareward.eval.commands as commands
import metareward.eval.serving as serving
from metareward import load_model, save_model
from metareward.cli import main
from metareward.engine import Engine, SamplingParams
from metareward.judging import Judged, load_template, scores, verdicts
from metareward.model.tokenizer import chat_ids
from metareward.prompts import Prompt


def pairwise_prompt(q, a, b):
    return load_template("pairwise").render(question=q, response_a=a, response_b=b)

CI_KEYS = ("win_rate", "lc_win_rate", "position_consistency", "mean_len_model", "mean_len_baseline")
ROW_KEYS = {"id", "question", "model_answer", "baseline_answer", "verdict_model_first", "verdict_baseline_first",
            "preference", "len_model", "len_baseline", "judge_text_model_first", "judge_text_baseline_first"}
WIN = ["--max-tokens", "8", "--judge-max-tokens", "4", "--verdict-mode", "expected", "--bootstrap", "200"]
VALUE = {"model": 1.0, "baseline": 0.0, "tie": 0.5}
PROMPTS = [{"id": f"q{i}", "prompt": p} for i, p in
           enumerate(["What is 2+2?", "Name a color.", "Say hi.", "Why is the sky blue?"])]
ALPACA = [{"instruction": f"Question number {i}?", "dataset": "koala", "reference_output": f"Answer {i}."}
          for i in range(4)]
MT = [{"question_id": 81, "category": "writing", "turns": ["Write a haiku.", "Now make it rhyme."]},
      {"question_id": 82, "category": "math", "turns": ["What is 3+4?", "And times 2?"]}]


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ok(capsys, *args) -> str:
    """Run the CLI, expect exit 0, return stderr."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert rc == 0, err[-3000:]
    return err


def fails(capsys, *args) -> str:
    """Run the CLI, expect exit 2 with exactly one stderr line `error: ...`; return it."""
    capsys.readouterr()
    assert main([str(a) for a in args]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def preference(first, second):
    # the documented rule: one verdict in both orders counts as itself (model 1, baseline 0, tie 0.5), two
    # different verdicts (position-inconsistent) 0.5; one order without a verdict: the other; neither: excluded
    if first is None or second is None:
        v = second if first is None else first
        return None if v is None else VALUE[v]
    return VALUE[first] if first == second else 0.5


def check_report(out: Path, rows: list[dict]) -> dict:
    """summary.json against what judgments.jsonl's verdicts and lengths give by hand."""
    s = json.loads((out / "summary.json").read_text())
    prefs = [preference(r["verdict_model_first"], r["verdict_baseline_first"]) for r in rows]
    kept = [(r, p) for r, p in zip(rows, prefs) if p is not None]
    assert [r["preference"] for r in rows] == prefs
    assert s["n"] == len(kept) and s["n_excluded"] == len(rows) - len(kept)
    assert s["win_rate"] == pytest.approx(sum(p for _, p in kept) / len(kept), abs=1e-12)
    both = [r for r, _ in kept if r["verdict_model_first"] is not None and r["verdict_baseline_first"] is not None]
    assert s["n_one_order"] == len(kept) - len(both)
    cons = sum(r["verdict_model_first"] == r["verdict_baseline_first"] for r in both) / len(both) if both else None
    assert s["position_consistency"] == pytest.approx(cons, abs=1e-12)
    assert s["mean_len_model"] == pytest.approx(sum(r["len_model"] for r, _ in kept) / len(kept))
    assert s["mean_len_baseline"] == pytest.approx(sum(r["len_baseline"] for r, _ in kept) / len(kept))
    for k in CI_KEYS:
        lo, hi = s[f"{k}_ci95"]
        assert lo <= hi
    for k in ("win_rate", "lc_win_rate", "position_consistency"):
        assert all(0 <= v <= 1 for v in (s[k], *s[f"{k}_ci95"]))
    return s


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True, scope="module")
def small_kv_cache():
    # serving() gives each model the CPU default KV cache, 1 GiB zeroed on first use (~0.4 s of page faults
    # per model, about 25 models here); 64 MiB holds 16k tokens of tiny-random, as in tests/recipe
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(serving, "Engine", functools.partial(Engine, kv_cache_memory=2**26))
        yield


@pytest.fixture(scope="module")
def tok():
    return load_model("tiny-random")[1]


# ---- winrate ----

@pytest.fixture(scope="module")
def same_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("same")
    prompts, out = jsonl(d / "p.jsonl", PROMPTS), d / "out"
    assert main(["eval", "winrate", "--model", "tiny-random", "--baseline", "tiny-random", "--judge", "tiny-random",
                 "--prompts", str(prompts), "--output", str(out), *WIN]) == 0
    return out


def test_winrate_same_model_files_and_report(same_model, tok):
    assert sorted(p.name for p in same_model.iterdir()) == ["judgments.jsonl", "summary.json", "summary.md"]
    rows = rows_of(same_model / "judgments.jsonl")
    assert [r["id"] for r in rows] == [p["id"] for p in PROMPTS]
    assert [r["question"] for r in rows] == [p["prompt"] for p in PROMPTS]
    for r in rows:
        assert set(r) == ROW_KEYS
        assert r["len_model"] == len(tok.encode(r["model_answer"], add_special_tokens=False))
        assert r["len_baseline"] == len(tok.encode(r["baseline_answer"], add_special_tokens=False))
        # one greedy model twice: the same answers, so the two judge prompts are the same text and the
        # judge's letter is the same; read from the model's side the verdicts must then be opposite
        assert r["model_answer"] == r["baseline_answer"] and r["model_answer"]
        assert r["judge_text_model_first"] == r["judge_text_baseline_first"]
        assert {r["verdict_model_first"], r["verdict_baseline_first"]} == {"model", "baseline"}
    s = check_report(same_model, rows)
    assert s["win_rate"] == 0.5 and s["position_consistency"] == 0.0 and s["win_rate_ci95"] == [0.5, 0.5]
    assert s["lc_win_rate"] == pytest.approx(0.5) and s["n_boot"] == 200
    assert (s["model"], s["baseline"], s["judge"], s["verdict_mode"]) == ("tiny-random",) * 3 + ("expected",)

    md = (same_model / "summary.md").read_text().splitlines()
    assert "| statistic | value | 95% CI |" in md
    table = {c[1].strip(): (c[2].strip(), c[3].strip()) for c in (x.split("|") for x in md if x.count("|") == 4)}
    for k in CI_KEYS:
        lo, hi = s[f"{k}_ci95"]
        assert table[k] == (f"{s[k]:.3f}", f"[{lo:.3f}, {hi:.3f}]")


def test_winrate_judges_both_orders_with_the_answers_swapped(tmp_path, capsys, monkeypatch):
    prompts = jsonl(tmp_path / "p.jsonl", PROMPTS[:3])
    base = jsonl(tmp_path / "base.jsonl", [{"id": p["id"], "response": f"Baseline says {k}."}
                                          for k, p in enumerate(PROMPTS[:3])])
    shown, raw = [], []  # (question, response A, response B) of every judge prompt; (A answers, verdicts)
    real_verdicts = commands.verdicts

    def spy(engine, items, *args, **kw):
        got = real_verdicts(engine, items, *args, **kw)
        shown.extend(items)
        raw.append(([a for _, a, _ in items], [g[0].value if g else None for g in got]))
        return got

    monkeypatch.setattr(commands, "verdicts", spy)
    out = tmp_path / "out"
    ok(capsys, "eval", "winrate", "--model", "tiny-random", "--baseline", base, "--judge", "tiny-random",
       "--prompts", prompts, "--output", out, *WIN)
    rows = rows_of(out / "judgments.jsonl")
    m = [r["model_answer"] for r in rows]
    b = [f"Baseline says {k}." for k in range(3)]
    assert [r["baseline_answer"] for r in rows] == b and all(x not in b for x in m)
    q = [p["prompt"] for p in PROMPTS[:3]]
    assert shown == list(zip(q, m, b)) + list(zip(q, b, m))
    (a1, v1), (a2, v2) = raw
    assert a1 == m and a2 == b
    assert [r["verdict_model_first"] for r in rows] == [{"A": "model", "B": "baseline"}.get(v, v) for v in v1]
    assert [r["verdict_baseline_first"] for r in rows] == [{"A": "baseline", "B": "model"}.get(v, v) for v in v2]
    check_report(out, rows)


def test_winrate_counts_every_verdict_pair_by_the_rule(tmp_path, capsys, monkeypatch):
    # A scripted judge: each baseline answer names the verdicts the judge gives with the model's answer shown
    # first and second (M: model, B: baseline, T: tie, N: no verdict), so every combination is exercised.
    cases = ["MM", "MM", "BB", "MB", "BM", "TM", "TT", "NM", "NB", "NN"]
    ids = [f"c{i}" for i in range(len(cases))]
    prompts = jsonl(tmp_path / "p.jsonl", [{"id": i, "prompt": f"Case {i}?"} for i in ids])
    base = jsonl(tmp_path / "b.jsonl", [{"id": i, "response": f"case:{c}"} for i, c in zip(ids, cases)])

    def judge(engine, items, *args, **kw):
        out = []
        for _, x, y in items:
            baseline_first = x.startswith("case:")
            code = (x if baseline_first else y)[5:][baseline_first]
            side = {"M": "model", "B": "baseline", "T": "tie", "N": None}[code]
            model_letter, baseline_letter = ("B", "A") if baseline_first else ("A", "B")
            out.append([Judged("", {"model": model_letter, "baseline": baseline_letter}.get(side, side))])
        return out

    monkeypatch.setattr(commands, "verdicts", judge)
    out = tmp_path / "out"
    ok(capsys, "eval", "winrate", "--model", "tiny-random", "--baseline", base, "--judge", "tiny-random",
       "--prompts", prompts, "--output", out, *WIN)
    rows = rows_of(out / "judgments.jsonl")
    side = {"M": "model", "B": "baseline", "T": "tie", "N": None}
    assert [(r["verdict_model_first"], r["verdict_baseline_first"]) for r in rows] == [
        (side[c[0]], side[c[1]]) for c in cases]
    assert [r["preference"] for r in rows] == [1, 1, 0, 0.5, 0.5, 0.5, 0.5, 1, 0, None]
    s = check_report(out, rows)
    assert s["win_rate"] == pytest.approx(5 / 9) and s["n"] == 9 and s["n_excluded"] == 1
    assert s["position_consistency"] == pytest.approx(4 / 7) and s["n_one_order"] == 2


def test_winrate_alpaca_eval_reference_file_excludes_what_does_not_fit(tmp_path, capsys, shared_data, tok):
    # AlpacaEval rows, reference_output as the baseline: a 3.3 kB reference makes a judge prompt (with the
    # 1.3 kB template) longer than tiny-random's 4096 byte tokens, a 0.6 kB one fits
    every = rows_of(shared_data / "alpaca_eval.jsonl")
    size = [len(x["instruction"].encode()) + len(x["reference_output"].encode()) for x in every]
    src = [every[size.index(next(n for n in size if n < 600))], every[size.index(next(n for n in size if n > 3300))],
           every[size.index(next(n for n in size if 900 < n < 1200))]]
    file = jsonl(tmp_path / "alpaca.jsonl", src)
    out = tmp_path / "out"
    err = ok(capsys, "eval", "winrate", "--model", "tiny-random", "--baseline", file, "--judge", "tiny-random",
             "--prompts", file, "--output", out, *WIN)
    assert "warning: judge (model first): 1 of 3 prompts leave no room for the answer in the context" in err
    rows = rows_of(out / "judgments.jsonl")
    assert [r["id"] for r in rows] == ["0", "1", "2"]
    assert [r["question"] for r in rows] == [x["instruction"] for x in src]
    assert [r["baseline_answer"] for r in rows] == [x["reference_output"] for x in src]
    room = 4096 - 1 - 4 - 9  # context − the judge's 4 tokens − "\nWinner: "
    for r in rows:
        n = len(chat_ids(tok, [{"role": "user", "content": pairwise_prompt(r["question"], r["model_answer"],
                                                                           r["baseline_answer"])}]))
        assert (r["preference"] is None) == (n > room), (r["id"], n)
        assert (r["verdict_model_first"] is None) == (r["verdict_baseline_first"] is None) == (n > room)
    assert [r["id"] for r in rows if r["preference"] is not None] == ["0", "2"]
    s = check_report(out, rows)
    assert s["n"] == 2 and s["n_excluded"] == 1


def test_winrate_arena_hard_baseline_file(tmp_path, capsys, shared_data):
    questions = rows_of(shared_data / "arena_hard_v0.1_question.jsonl")
    base_file = shared_data / "arena_hard_v0.1_baseline_gpt-4-0314.jsonl"
    answers = {r["question_id"]: r["choices"][0]["turns"][0]["content"] for r in rows_of(base_file)}

    def size(q):
        return len(q["turns"][0]["content"].encode()), len(answers[q["question_id"]].encode())

    short = [q for q in questions if sum(size(q)) < 1000][:2]  # judge prompts of ~2.3 kB: fit
    long_answer = next(q for q in questions if size(q)[1] > 3500 and size(q)[0] < 500)  # judge prompt > 4.8 kB
    huge = next(q for q in questions if size(q)[0] > 4100)  # longer than the context: no answer either
    picked = [short[0], long_answer, short[1], huge]
    qfile = jsonl(tmp_path / "q.jsonl", picked)
    out = tmp_path / "out"
    err = ok(capsys, "eval", "winrate", "--model", "tiny-random", "--baseline", base_file, "--judge", "tiny-random",
             "--prompts", qfile, "--output", out, *WIN)
    assert f"exceed the model's context (4096 tokens) and get an empty answer: {huge['question_id']}" in err
    assert "2 of 4 prompts leave no room for the answer in the context" in err
    rows = rows_of(out / "judgments.jsonl")
    assert [r["id"] for r in rows] == [q["question_id"] for q in picked]
    assert [r["baseline_answer"] for r in rows] == [answers[q["question_id"]] for q in picked]
    assert rows[3]["model_answer"] == "" and all(r["model_answer"] for r in rows[:3])
    assert [r["preference"] is None for r in rows] == [False, True, False, True]
    s = check_report(out, rows)
    assert s["n"] == 2 and s["n_excluded"] == 2


def test_judge_prompts_at_the_context_limit_get_a_verdict_or_are_excluded(capsys):
    # expected mode reads the next token after prompt + the judge's text + "\nWinner: " (or "\nScore: "): a
    # prompt of exactly the room left gets a verdict, one token more is excluded with a warning, no crash
    model, tok = load_model("tiny-random")
    engine = Engine(model, tok, max_model_len=2048, kv_cache_memory=2**25)  # 2048: half the prefill work
    L, mt = engine.max_model_len, 4

    def length(text):
        return len(chat_ids(tok, [{"role": "user", "content": text}]))

    fixed = length(pairwise_prompt("", "x", "y"))
    for extra, fits in ((0, True), (1, False)):
        q = "q" * (L - 1 - mt - len("\nWinner: ") - fixed + extra)  # byte-level: one token per character
        got = verdicts(engine, [(q, "x", "y")], SamplingParams(temperature=0, max_tokens=mt), mode="expected")
        assert (got[0] is not None and got[0][0].value is not None) == fits
    fixed = length(load_template("judge").render(question="", response="x"))
    for extra, fits in ((0, True), (1, False)):
        q = "q" * (L - 1 - mt - len("\nScore: ") - fixed + extra)
        got = scores(engine, [(q, "x")], SamplingParams(temperature=0, max_tokens=mt), mode="expected")
        assert (got[0] is not None and got[0][0].value is not None) == fits
    assert capsys.readouterr().err.count("leave no room for the answer in the context (2048 tokens)") == 2


# ---- bad input ----

def test_bad_input_is_one_error_line_exit_2_and_nothing_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prompts = jsonl(tmp_path / "p.jsonl", PROMPTS[:3])
    out = tmp_path / "out"
    win = ["eval", "winrate", "--model", "tiny-random", "--judge", "tiny-random", "--prompts", prompts,
           "--output", out, *WIN]

    other_ids = jsonl(tmp_path / "b.jsonl", [{"id": f"x{i}", "response": "r"} for i in range(3)])
    assert "3 of 3 prompt ids have no answer" in fails(capsys, *win, "--baseline", other_ids)
    # AlpacaEval rows are keyed by row index: rows 2-3 as prompts against rows 0-3 as answers are other questions
    alpaca, part = jsonl(tmp_path / "a.jsonl", ALPACA), jsonl(tmp_path / "part.jsonl", ALPACA[2:])
    line = fails(capsys, "eval", "winrate", "--model", "tiny-random", "--judge", "tiny-random", "--prompts", part,
                 "--output", out, "--baseline", alpaca)
    assert "prompt '0': the question in" in line
    assert "neither a model directory nor an answers file" in fails(capsys, *win, "--baseline", tmp_path / "nope")
    assert "model directory not found" in fails(capsys, *win[:2], "--model", tmp_path / "missing", *win[4:],
                                                "--baseline", "tiny-random")
    assert "judge: model directory not found" in fails(capsys, *win[:4], "--judge", tmp_path / "missing",
                                                       *win[6:], "--baseline", "tiny-random")
    assert not out.exists()
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    line = fails(capsys, *win[:-len(WIN) - 2], "--output", full, *WIN, "--baseline", "tiny-random")
    assert "is not empty" in line and [p.name for p in full.iterdir()] == ["keep.txt"]

    # judge: format, labels, model, output
    llmbar = jsonl(tmp_path / "l.jsonl", [{"input": "q", "output_1": "a", "output_2": "b", "label": 1},
                                          {"input": "q", "output_1": "a", "output_2": "b", "label": 3}])
    judge = ["eval", "judge", "--model", "tiny-random", "--output", out, "--mode", "expected"]
    assert "'--format'" in fails(capsys, *judge, "--data", llmbar, "--format", "mtbench")
    assert f"{llmbar}:2: label must be one of 1, 2, got 3" in fails(capsys, *judge, "--data", llmbar,
                                                                     "--format", "llmbar")
    panda = jsonl(tmp_path / "pd.jsonl", [{"instruction": "q", "input": "", "response1": "a", "response2": "b",
                                           "annotator1": 1, "annotator2": 5, "annotator3": 1}])
    assert "annotator2 must be one of 0, 1, 2, got 5" in fails(capsys, *judge, "--data", panda, "--format", "pandalm")
    good = jsonl(tmp_path / "g.jsonl", [{"input": "q", "output_1": "a", "output_2": "b", "label": 1}])
    assert "model directory not found" in fails(capsys, "eval", "judge", "--model", tmp_path / "missing",
                                                "--data", good, "--format", "llmbar", "--output", out)
    assert "is not empty" in fails(capsys, *judge, "--data", good, "--format", "llmbar", "--output", full)
    assert not out.exists() and [p.name for p in full.iterdir()] == ["keep.txt"]

    # export
    mt = jsonl(tmp_path / "mt.jsonl", MT)
    exp = ["eval", "export", "--prompts", alpaca, "--output", out / "a.json", "--max-tokens", "4"]
    assert "'--format'" in fails(capsys, *exp, "--model", "tiny-random", "--format", "vicuna")
    assert "model directory not found" in fails(capsys, *exp, "--model", tmp_path / "missing",
                                                "--format", "alpaca_eval")
    assert "either --model DIR or --run" in fails(capsys, *exp, "--format", "alpaca_eval")
    run = tmp_path / "run"
    (run / "iter_1" / "checkpoint").mkdir(parents=True)
    assert "--run needs --iteration" in fails(capsys, *exp, "--run", run, "--format", "alpaca_eval")
    assert "has no checkpoint for iteration 2" in fails(capsys, *exp, "--run", run, "--iteration", "2",
                                                        "--format", "alpaca_eval")
    assert "--iteration needs --run" in fails(capsys, *exp, "--model", "tiny-random", "--iteration", "1",
                                              "--format", "alpaca_eval")
    line = fails(capsys, "eval", "export", "--model", "tiny-random", "--prompts", mt, "--output", out / "a.json",
                 "--format", "alpaca_eval")
    assert "needs the alpaca_eval question set; prompt '81' was read as 'mt_bench'" in line
    assert not out.exists()


# ---- judge ----

LLMBAR = [{"subset": "s", "input": "Name a fruit.", "output_1": "Apple.", "output_2": "Chair.", "label": 1},
          {"subset": "s", "input": "2+2?", "output_1": "5", "output_2": "4", "label": 2},
          {"subset": "s", "input": "Say hi.", "output_1": "Hi!", "output_2": "Bye.", "label": 1}]
PANDALM = [{"instruction": "Fix: teh cat.", "input": "", "response1": "The cat.", "response2": "Teh cat.",
            "annotator1": a, "annotator2": b, "annotator3": c} for a, b, c in ((1, 1, 2), (2, 2, 0), (0, 0, 1),
                                                                                (1, 2, 0))][1:]
PAIRS = [{"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Rome."},
         {"prompt": "Opposite of hot?", "chosen": "Cold.", "rejected": "Tall."},
         {"prompt": "Color of grass?", "chosen": "Green.", "rejected": "Blue."}]
SECTION_KEYS = {"n", "n_unparsed", "n_human_ties", "accuracy", "judge_tie_rate", "agreement_with_ties",
                "agreement_without_ties", "n_without_ties"}


def ratio(a, b):
    return a / b if b else None


def agreement(pairs: list[tuple[int, int | None]]) -> dict:
    # by hand: accuracy over human non-ties (a judge tie or no judgment is wrong); agreement over judged rows
    decided = [(h, j) for h, j in pairs if h != 0]
    parsed = [(h, j) for h, j in pairs if j is not None]
    both = [(h, j) for h, j in parsed if h != 0 and j != 0]
    return {"n": len(pairs), "n_unparsed": len(pairs) - len(parsed), "n_human_ties": len(pairs) - len(decided),
            "accuracy": ratio(sum(h == j for h, j in decided), len(decided)),
            "judge_tie_rate": ratio(sum(j == 0 for _, j in parsed), len(parsed)),
            "agreement_with_ties": ratio(sum(h == j for h, j in parsed), len(parsed)),
            "agreement_without_ties": ratio(sum(h == j for h, j in both), len(both)), "n_without_ties": len(both)}


def check_judge_report(capsys, out: Path, *args) -> tuple[dict, list[dict]]:
    capsys.readouterr()
    assert main(["eval", "judge", "--model", "tiny-random", "--mode", "expected", "--max-tokens", "4",
                 "--output", str(out), *map(str, args)]) == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((out / "summary.json").read_text())
    assert printed == report and sorted(p.name for p in out.iterdir()) == ["judge_eval.jsonl", "summary.json"]
    rows = rows_of(out / "judge_eval.jsonl")
    assert report["n"] == len(rows) and report["mode"] == "expected"
    for r in rows:
        assert set(r) == {"question", "label", "score_1", "score_2", "verdict_1_first", "verdict_2_first"}
        assert r["verdict_1_first"] in ("A", "B", None) and r["verdict_2_first"] in ("A", "B", None)
    point = [(r["label"], None if r["score_1"] is None or r["score_2"] is None
              else 1 if r["score_1"] > r["score_2"] else 2 if r["score_2"] > r["score_1"] else 0) for r in rows]
    assert set(report["pointwise"]) == SECTION_KEYS
    assert report["pointwise"] == pytest.approx(agreement(point))
    # pairwise: "A" with answer 1 shown first means 1, with answer 2 first means 2; the orders disagreeing is a
    # tie, one order missing leaves the other
    pair, consistent = [], []
    for r in rows:
        a = {"A": 1, "B": 2}.get(r["verdict_1_first"])
        b = {"A": 2, "B": 1}.get(r["verdict_2_first"])
        pair.append((r["label"], b if a is None else a if b is None or a == b else 0))
        if a is not None and b is not None:
            consistent.append(a == b)
    assert set(report["pairwise"]) == SECTION_KEYS | {"position_consistency"}
    assert report["pairwise"] == pytest.approx(agreement(pair) | {
        "position_consistency": ratio(sum(consistent), len(consistent))})
    return report, rows


def test_judge_llmbar_pandalm_pairs(tmp_path, capsys):
    rep, rows = check_judge_report(capsys, tmp_path / "l", "--data", jsonl(tmp_path / "l.jsonl", LLMBAR),
                                   "--format", "llmbar", "--limit", "2")
    assert rep["format"] == "llmbar" and [r["label"] for r in rows] == [1, 2]
    assert [r["question"] for r in rows] == [x["input"] for x in LLMBAR[:2]]
    assert all(r["score_1"] is not None and 0 <= r["score_1"] <= 5 for r in rows)

    rep, rows = check_judge_report(capsys, tmp_path / "p", "--data", jsonl(tmp_path / "p.jsonl", PANDALM),
                                   "--format", "pandalm")
    assert [r["label"] for r in rows] == [2, 0, 0]  # majority of the three annotators, none: tie
    assert rep["pointwise"]["n_human_ties"] == rep["pairwise"]["n_human_ties"] == 2

    rep, rows = check_judge_report(capsys, tmp_path / "r", "--data", jsonl(tmp_path / "r.jsonl", PAIRS),
                                   "--format", "pairs", "--limit", "2")
    assert rep["n"] == 2 and [r["question"] for r in rows] == [x["prompt"] for x in PAIRS[:2]]
    assert {r["label"] for r in rows} <= {1, 2}


def test_judge_real_rows(tmp_path, capsys, shared_data):
    for name, fmt in (("llmbar_pairwise_judge_eval.jsonl", "llmbar"), ("pandalm_testset_v1_human.jsonl", "pandalm")):
        src = [r for r in rows_of(shared_data / name) if len(json.dumps(r)) < 700][:2]  # short rows: fast
        rep, rows = check_judge_report(capsys, tmp_path / fmt, "--data", jsonl(tmp_path / name, src), "--format", fmt)
        assert rep["n"] == 2
        if fmt == "llmbar":
            assert [r["label"] for r in rows] == [x["label"] for x in src]
        else:
            assert [r["question"] for r in rows] == [x["instruction"] + ("\n\n" + x["input"] if x["input"] else "")
                                                     for x in src]


# ---- export ----

def greedy(model, tok, messages: list[list[dict]], max_tokens: int) -> list[str]:
    engine = Engine(model, tok)
    try:
        return [o.samples[0].text for o in engine.generate(messages, SamplingParams(temperature=0,
                                                                                    max_tokens=max_tokens))]
    finally:
        engine.release()


def test_export_alpaca_eval(tmp_path, capsys, shared_data):
    src = rows_of(shared_data / "alpaca_eval.jsonl")[:3]
    out = tmp_path / "model_outputs.json"
    ok(capsys, "eval", "export", "--model", "tiny-random", "--prompts", jsonl(tmp_path / "a.jsonl", src),
       "--format", "alpaca_eval", "--output", out, "--max-tokens", "8")
    got = json.loads(out.read_text())
    assert isinstance(got, list) and len(got) == 3
    for g, s in zip(got, src):
        assert list(g) == ["instruction", "output", "generator", "dataset"]
        assert (g["instruction"], g["generator"], g["dataset"]) == (s["instruction"], "tiny-random", s["dataset"])
    model, tok = load_model("tiny-random")
    assert [g["output"] for g in got] == greedy(model, tok, [[{"role": "user", "content": s["instruction"]}]
                                                             for s in src], 8)


def test_export_arena_hard(tmp_path, capsys, shared_data, tok):
    src = rows_of(shared_data / "arena_hard_v0.1_question.jsonl")[:3]
    baseline = rows_of(shared_data / "arena_hard_v0.1_baseline_gpt-4-0314.jsonl")[0]
    qfile = jsonl(tmp_path / "q.jsonl", src)
    outs = []
    for k in range(2):
        out = tmp_path / f"a{k}.jsonl"
        ok(capsys, "eval", "export", "--model", "tiny-random", "--prompts", qfile, "--format", "arena_hard",
           "--output", out, "--max-tokens", "8", "--model-id", "tiny-ours")
        outs.append(rows_of(out))

    def shape(obj):  # keys in order, nesting and value types, not values
        if isinstance(obj, dict):
            return [(k, shape(v)) for k, v in obj.items()]
        if isinstance(obj, list):
            return [shape(x) for x in obj]
        return type(obj).__name__

    rows = outs[0]
    assert [r["question_id"] for r in rows] == [s["question_id"] for s in src]
    for r in rows:
        assert shape(r) == shape(baseline)
        assert r["model_id"] == "tiny-ours" and r["choices"][0]["index"] == 0
        turn = r["choices"][0]["turns"][0]
        assert turn["token_len"] == len(tok.encode(turn["content"], add_special_tokens=False)) > 0
    assert [r["answer_id"] for r in outs[1]] == [r["answer_id"] for r in rows]  # deterministic
    assert len({r["answer_id"] for r in rows}) == 3


def test_export_mt_bench_second_turn_sees_the_first_answer(tmp_path, capsys, monkeypatch):
    calls = []  # (question id, answers so far, the messages built for the next turn)
    real = Prompt.messages

    def spy(prompt, answers=()):
        messages = real(prompt, answers)
        calls.append((prompt.id, list(answers), messages))
        return messages

    monkeypatch.setattr(Prompt, "messages", spy)
    out = tmp_path / "mt.jsonl"
    ok(capsys, "eval", "export", "--model", "tiny-random", "--prompts", jsonl(tmp_path / "q.jsonl", MT),
       "--format", "mt_bench", "--output", out, "--max-tokens", "8")
    rows = rows_of(out)
    assert [r["question_id"] for r in rows] == [81, 82]
    for r, q in zip(rows, MT):  # FastChat's model_answer rows (shared/data/mt_bench_reference_answer_gpt-4.jsonl)
        assert list(r) == ["question_id", "answer_id", "model_id", "choices", "tstamp"]
        assert list(r["choices"][0]) == ["index", "turns"] and isinstance(r["tstamp"], float)
        assert r["model_id"] == "tiny-random" and r["choices"][0]["index"] == 0
        t1, t2 = r["choices"][0]["turns"]
        assert isinstance(t1, str) and isinstance(t2, str) and t1
        qid = str(q["question_id"])
        assert (qid, [], [{"role": "user", "content": q["turns"][0]}]) in calls
        assert (qid, [t1], [{"role": "user", "content": q["turns"][0]}, {"role": "assistant", "content": t1},
                            {"role": "user", "content": q["turns"][1]}]) in calls
    assert len(calls) == 4
    # turn 2 is what the model writes after its turn 1 answer (the same two batches on one engine)
    model, tok = load_model("tiny-random")
    engine, params = Engine(model, tok), SamplingParams(temperature=0, max_tokens=8)
    first = [o.samples[0].text for o in engine.generate([[{"role": "user", "content": q["turns"][0]}] for q in MT],
                                                        params)]
    second = engine.generate([[{"role": "user", "content": q["turns"][0]}, {"role": "assistant", "content": a},
                               {"role": "user", "content": q["turns"][1]}] for q, a in zip(MT, first)], params)
    assert [[a, o.samples[0].text] for a, o in zip(first, second)] == [r["choices"][0]["turns"] for r in rows]


def test_export_from_a_run_iteration(tmp_path, capsys, monkeypatch):
    model, tok = load_model("tiny-random")
    msgs = [[{"role": "user", "content": a["instruction"]}] for a in ALPACA[:3]]
    builtin = greedy(model, tok, msgs, 8)
    with torch.no_grad():  # other weights than the built-in model's, so its answers tell which model spoke
        g = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    run = tmp_path / "myrun"
    save_model(model, tok, run / "iter_1" / "checkpoint")
    prompts = jsonl(tmp_path / "a.jsonl", ALPACA[:3])
    monkeypatch.chdir(run)  # --run . is named after the directory
    ok(capsys, "eval", "export", "--run", ".", "--iteration", "1", "--prompts", prompts, "--format", "alpaca_eval",
       "--output", tmp_path / "run.json", "--max-tokens", "8")
    got = json.loads((tmp_path / "run.json").read_text())
    assert [g["generator"] for g in got] == ["myrun-iter1"] * 3
    assert [g["instruction"] for g in got] == [a["instruction"] for a in ALPACA[:3]]
    assert [g["output"] for g in got] == greedy(*load_model(str(run / "iter_1" / "checkpoint")), msgs, 8) != builtin
