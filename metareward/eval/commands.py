"""The `metareward eval` jobs: head-to-head win rate, judge agreement with human labels, and answer files for
the official benchmark tools. head_to_head and agreement are also what a run's evaluation stage calls."""
from __future__ import annotations

from pathlib import Path

from ..engine import Engine, SamplingParams
from ..errors import UserError
from ..io import atomic_write, write_json, write_jsonl
from ..judging import load_template, scores, verdicts
from ..judging.templates import Template
from ..prompts import Prompt, read_prompts
from . import formats, stats
from .serving import answer, is_model, require_model, serving


def _require_empty(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output directory {out} is not empty")


def _require_same_questions(prompts: list[Prompt], path: str) -> None:
    # AlpacaEval rows have no ids: both files are keyed by row index, so a subset of the questions (the first
    # rows excepted) would be judged against the answers to other questions; compare the texts where the
    # answers file has them (Arena-Hard / FastChat answer files carry question ids only)
    try:
        theirs = {p.id: p.question for p in read_prompts(path)}
    except UserError:
        return
    for p in prompts:
        if p.id in theirs and theirs[p.id] != p.question:
            raise UserError(f"prompt {p.id!r}: the question in {path} is not the one in the prompts file "
                            f"(AlpacaEval rows are matched by row index: use the same file, or its first rows)")


def _first(judged) -> tuple[object, str]:
    return (judged[0].value, judged[0].text) if judged else (None, "")


def head_to_head(engine: Engine, *, questions: list[str], ids: list[str], model_answers: list[str],
                 baseline_answers: list[str], mode: str, max_tokens: int, template: Template | None = None,
                 ) -> list[dict]:
    """Judge every (model, baseline) answer pair in both orders (greedy) -> one row per question."""
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    a = verdicts(engine, list(zip(questions, model_answers, baseline_answers)), params, mode=mode,
                 template=template, desc="judge (model first)")
    b = verdicts(engine, list(zip(questions, baseline_answers, model_answers)), params, mode=mode,
                 template=template, desc="judge (baseline first)")
    (v1, t1), (v2, t2) = zip(*map(_first, a)), zip(*map(_first, b))
    first = [stats.model_side(v, True) for v in v1]
    second = [stats.model_side(v, False) for v in v2]
    count = engine.tokenizer
    lm = [len(count.encode(x, add_special_tokens=False)) for x in model_answers]
    lb = [len(count.encode(x, add_special_tokens=False)) for x in baseline_answers]
    pref, _ = stats.preferences(first, second)
    rows = [{"id": ids[i], "question": questions[i], "model_answer": model_answers[i],
             "baseline_answer": baseline_answers[i], "verdict_model_first": first[i],
             "verdict_baseline_first": second[i], "preference": None if pref[i] != pref[i] else float(pref[i]),
             "len_model": lm[i], "len_baseline": lb[i], "judge_text_model_first": t1[i],
             "judge_text_baseline_first": t2[i]} for i in range(len(questions))]
    return rows


def report_of(rows: list[dict], *, n_boot: int = 1000, seed: int = 0) -> dict:
    """The win-rate report of head_to_head's rows."""
    return stats.win_rate_report([r["verdict_model_first"] for r in rows], [r["verdict_baseline_first"] for r in rows],
                                 [r["len_model"] for r in rows], [r["len_baseline"] for r in rows],
                                 n_boot=n_boot, seed=seed)


def markdown(report: dict, title: str) -> str:
    def ci(k):
        c = report.get(f"{k}_ci95")
        return f"[{c[0]:.3f}, {c[1]:.3f}]" if c else "n/a"

    def val(k):
        return "n/a" if report.get(k) is None else f"{report[k]:.3f}"

    lines = [f"# {title}", "", f"questions: {report['n']} (excluded, no verdict: {report['n_excluded']})", "",
             "| statistic | value | 95% CI |", "|---|---|---|"]
    for k in stats.CI_KEYS:
        lines.append(f"| {k} | {val(k)} | {ci(k)} |")
    return "\n".join(lines) + "\n"


def winrate(*, model: str, baseline: str, judge: str, prompts: str, output: str, max_tokens: int = 512,
            temperature: float = 0.0, verdict_mode: str = "parse", judge_max_tokens: int = 512,
            template: str | None = None, dtype=None, device=None, n_boot: int = 1000, seed: int = 0) -> dict:
    out = Path(output)
    _require_empty(out)
    questions = read_prompts(prompts)
    tmpl = load_template("pairwise", template)
    require_model(model, "model")
    require_model(judge, "judge")
    reference = None
    if not is_model(baseline):
        if not Path(baseline).is_file():
            raise UserError(f"baseline: neither a model directory nor an answers file: {baseline}")
        reference = formats.read_reference_answers(baseline)
        formats.require_answers(questions, reference, baseline)
        _require_same_questions(questions, baseline)
    params = SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed)
    with serving(model, dtype=dtype, device=device) as (_, _, engine):
        mine = {k: v[0] for k, v in answer(engine, questions, params, "model answers").items()}
    if reference is None:
        with serving(baseline, dtype=dtype, device=device) as (_, _, engine):
            reference = {k: v[0] for k, v in answer(engine, questions, params, "baseline answers").items()}
    ids = [p.id for p in questions]
    with serving(judge, dtype=dtype, device=device) as (_, _, engine):
        rows = head_to_head(engine, questions=[p.question for p in questions], ids=ids,
                            model_answers=[mine[i] for i in ids], baseline_answers=[reference[i] for i in ids],
                            mode=verdict_mode, max_tokens=judge_max_tokens, template=tmpl)
    report = report_of(rows, n_boot=n_boot, seed=seed)
    report.update(model=model, baseline=baseline, judge=judge, prompts=str(prompts), verdict_mode=verdict_mode)
    write_jsonl(out / "judgments.jsonl", rows)
    write_json(out / "summary.json", report)
    with atomic_write(out / "summary.md") as f:
        f.write(markdown(report, f"{model} vs {baseline} (judge: {judge})"))
    return report


def agreement(engine: Engine, rows: list[formats.JudgePair], *, mode: str, max_tokens: int) -> tuple[dict, list]:
    """The model as a judge of human-labelled pairs, greedy: the pointwise rubric on each answer alone, and
    the pairwise prompt in both orders -> (report, per-row records)."""
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    q, a1, a2 = [r.question for r in rows], [r.answer_1 for r in rows], [r.answer_2 for r in rows]
    s1 = [_first(x)[0] for x in scores(engine, list(zip(q, a1)), params, mode=mode, desc="pointwise (answer 1)")]
    s2 = [_first(x)[0] for x in scores(engine, list(zip(q, a2)), params, mode=mode, desc="pointwise (answer 2)")]
    v12 = [_first(x)[0] for x in verdicts(engine, list(zip(q, a1, a2)), params, mode=mode, desc="pairwise (1 first)")]
    v21 = [_first(x)[0] for x in verdicts(engine, list(zip(q, a2, a1)), params, mode=mode, desc="pairwise (2 first)")]
    human = [r.label for r in rows]
    report = {"n": len(rows), "mode": mode, "pointwise": stats.pointwise_agreement(human, s1, s2),
              "pairwise": stats.pairwise_agreement(human, v12, v21)}
    records = [{"question": r.question, "label": r.label, "score_1": x, "score_2": y, "verdict_1_first": a,
                "verdict_2_first": b} for r, x, y, a, b in zip(rows, s1, s2, v12, v21)]
    return report, records


def judge_agreement(*, model: str, data: str, fmt: str, output: str | None = None, limit: int | None = None,
                    mode: str = "parse", max_tokens: int = 512, seed: int = 0, dtype=None, device=None) -> dict:
    if fmt not in formats.JUDGE_READERS:
        raise UserError(f"unknown format {fmt!r}: choose one of {', '.join(formats.JUDGE_READERS)}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    if output:  # its summary.json would replace another job's (a win rate's) without a word
        _require_empty(Path(output))
    rows = formats.read_judge_pairs(data, fmt, seed=seed)[:limit]
    require_model(model)
    with serving(model, dtype=dtype, device=device) as (_, _, engine):
        report, records = agreement(engine, rows, mode=mode, max_tokens=max_tokens)
    report = {"model": model, "data": str(data), "format": fmt, **report}
    if output:
        out = Path(output)
        write_jsonl(out / "judge_eval.jsonl", records)
        write_json(out / "summary.json", report)
    return report


EXPORTERS = {  # (path, prompts, answers per turn, first answers, token counts, model id)
    "alpaca_eval": lambda path, p, turns, first, lens, mid: formats.export_alpaca_eval(path, p, first, mid),
    "arena_hard": lambda path, p, turns, first, lens, mid: formats.export_arena_hard(path, p, first, mid, lens),
    "mt_bench": lambda path, p, turns, first, lens, mid: formats.export_mt_bench(path, p, turns, mid),
}


def export(*, prompts: str, fmt: str, output: str, model: str | None = None, run: str | None = None,
           iteration: int | None = None, max_tokens: int = 2048, model_id: str | None = None, dtype=None,
           device=None) -> Path:
    if fmt not in EXPORTERS:
        raise UserError(f"unknown format {fmt!r}: choose one of {', '.join(EXPORTERS)}")
    if (model is None) == (run is None):
        raise UserError("give either --model DIR or --run RUN_DIR --iteration T")
    if iteration is not None and run is None:
        raise UserError("--iteration needs --run RUN_DIR")
    if run is not None:
        if iteration is None:
            raise UserError("--run needs --iteration T")
        model = str(Path(run) / f"iter_{iteration}" / "checkpoint")
        if not Path(model).is_dir():
            raise UserError(f"{run} has no checkpoint for iteration {iteration} ({model})")
        model_id = model_id or f"{Path(run).resolve().name}-iter{iteration}"  # resolve: --run . has no name
    else:
        require_model(model)
    model_id = model_id or Path(model).resolve().name
    questions = read_prompts(prompts)
    formats._require_format(questions, fmt)
    with serving(model, dtype=dtype, device=device) as (_, tok, engine):
        answers = answer(engine, questions, SamplingParams(temperature=0, max_tokens=max_tokens), "answers")
        lens = {k: len(tok.encode(v[0], add_special_tokens=False)) for k, v in answers.items()}
    first = {k: v[0] for k, v in answers.items()}
    EXPORTERS[fmt](output, questions, answers, first, lens, model_id)
    return Path(output)
