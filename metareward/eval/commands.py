"""The three `metareward eval` jobs: head-to-head win rate, judge agreement with human labels, and answer
files for the official benchmark tools."""
from __future__ import annotations

from pathlib import Path

from ..engine import SamplingParams
from ..errors import UserError
from ..io import atomic_write, write_json, write_jsonl
from . import formats, stats
from .serving import answer, pairwise, pointwise, serving
from .templates import load_pairwise_template


def _is_model(ref: str) -> bool:
    return ref == "tiny-random" or Path(ref).is_dir()


def _require_empty(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output directory {out} is not empty")


def _require_same_questions(prompts, path: str) -> None:
    # AlpacaEval rows have no ids: both files are keyed by row index, so a subset of the questions (the first
    # rows excepted) would be judged against the answers to other questions; compare the texts where the
    # answers file has them (Arena-Hard / FastChat answer files carry question ids only)
    try:
        theirs = {p.id: p.turns[0] for p in formats.read_prompts(path)}
    except UserError:
        return
    for p in prompts:
        if p.id in theirs and theirs[p.id] != p.turns[0]:
            raise UserError(f"prompt {p.id!r}: the question in {path} is not the one in the prompts file "
                            f"(AlpacaEval rows are matched by row index: use the same file, or its first rows)")


def head_to_head(questions, ids, model_answers, baseline_answers, engine, mode, max_tokens, template=None,
                 n_boot=1000, seed=0) -> tuple[list[dict], dict]:
    """Judge every (model, baseline) answer pair in both orders -> (per-question rows, win-rate report)."""
    n = len(questions)
    v1, t1 = pairwise(engine, questions, model_answers, baseline_answers, mode, max_tokens, template,
                      "judge (model first)")
    v2, t2 = pairwise(engine, questions, baseline_answers, model_answers, mode, max_tokens, template,
                      "judge (baseline first)")
    first = [stats.model_side(v, True) for v in v1]
    second = [stats.model_side(v, False) for v in v2]
    count = engine.tokenizer
    lm = [len(count.encode(a, add_special_tokens=False)) for a in model_answers]
    lb = [len(count.encode(a, add_special_tokens=False)) for a in baseline_answers]
    pref, consistent = stats.preferences(first, second)
    rows = [{"id": ids[i], "question": questions[i], "model_answer": model_answers[i],
             "baseline_answer": baseline_answers[i], "verdict_model_first": first[i],
             "verdict_baseline_first": second[i], "preference": None if pref[i] != pref[i] else float(pref[i]),
             "len_model": lm[i], "len_baseline": lb[i], "judge_text_model_first": t1[i],
             "judge_text_baseline_first": t2[i]} for i in range(n)]
    return rows, stats.win_rate_report(first, second, lm, lb, n_boot=n_boot, seed=seed)


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


def winrate(model: str, baseline: str, judge: str, prompts_path: str, output: str, max_tokens: int = 512,
            temperature: float = 0.0, verdict_mode: str = "parse", judge_max_tokens: int = 512,
            template: str | None = None, dtype=None, device=None, n_boot: int = 1000, seed: int = 0) -> dict:
    out = Path(output)
    _require_empty(out)
    prompts = formats.read_prompts(prompts_path)
    tmpl = load_pairwise_template(template)
    for name, ref in (("model", model), ("judge", judge)):
        if not _is_model(ref):
            raise UserError(f"{name}: model directory not found: {ref}")
    reference = None
    if not _is_model(baseline):
        if not Path(baseline).is_file():
            raise UserError(f"baseline: neither a model directory nor an answers file: {baseline}")
        reference = formats.read_reference_answers(baseline)
        formats.require_answers(prompts, reference, baseline)
        _require_same_questions(prompts, baseline)
    params = SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed)
    with serving(model, dtype, device) as (_, _, engine):
        mine = {k: v[0] for k, v in answer(engine, prompts, params, "model answers").items()}
    if reference is None:
        with serving(baseline, dtype, device) as (_, _, engine):
            reference = {k: v[0] for k, v in answer(engine, prompts, params, "baseline answers").items()}
    ids = [p.id for p in prompts]
    with serving(judge, dtype, device) as (_, _, engine):
        rows, report = head_to_head([p.turns[0] for p in prompts], ids, [mine[i] for i in ids],
                                    [reference[i] for i in ids], engine, verdict_mode, judge_max_tokens, tmpl,
                                    n_boot, seed)
    report.update(model=model, baseline=baseline, judge=judge, prompts=str(prompts_path), verdict_mode=verdict_mode)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "judgments.jsonl", rows)
    write_json(out / "summary.json", report)
    with atomic_write(out / "summary.md") as f:
        f.write(markdown(report, f"{model} vs {baseline} (judge: {judge})"))
    return report


def judge_agreement(model: str, data: str, fmt: str, output: str | None = None, limit: int | None = None,
                    mode: str = "parse", max_tokens: int = 512, seed: int = 0, dtype=None, device=None) -> dict:
    if fmt not in formats.JUDGE_READERS:
        raise UserError(f"unknown format {fmt!r}: choose one of {', '.join(formats.JUDGE_READERS)}")
    if output:  # its summary.json would replace another job's (a win rate's) without a word
        _require_empty(Path(output))
    rows = formats.read_judge_pairs(data, fmt, seed=seed)[:limit]
    if not _is_model(model):
        raise UserError(f"model directory not found: {model}")
    q = [r.question for r in rows]
    a1, a2 = [r.answer_1 for r in rows], [r.answer_2 for r in rows]
    with serving(model, dtype, device) as (_, _, engine):
        s1 = pointwise(engine, q, a1, mode, max_tokens, "pointwise (answer 1)")
        s2 = pointwise(engine, q, a2, mode, max_tokens, "pointwise (answer 2)")
        v12, _ = pairwise(engine, q, a1, a2, mode, max_tokens, desc="pairwise (1 first)")
        v21, _ = pairwise(engine, q, a2, a1, mode, max_tokens, desc="pairwise (2 first)")
    human = [r.label for r in rows]
    report = {"model": model, "data": str(data), "format": fmt, "mode": mode, "n": len(rows),
              "pointwise": stats.pointwise_agreement(human, s1, s2),
              "pairwise": stats.pairwise_agreement(human, v12, v21)}
    if output:
        out = Path(output)
        write_jsonl(out / "judge_eval.jsonl", [{"question": r.question, "label": r.label, "score_1": x, "score_2": y,
                                                "verdict_1_first": a, "verdict_2_first": b}
                                               for r, x, y, a, b in zip(rows, s1, s2, v12, v21)])
        write_json(out / "summary.json", report)
    return report


EXPORTERS = {  # (path, prompts, answers per turn, first answers, token counts, model id)
    "alpaca_eval": lambda path, p, turns, first, lens, mid: formats.export_alpaca_eval(path, p, first, mid),
    "arena_hard": lambda path, p, turns, first, lens, mid: formats.export_arena_hard(path, p, first, mid, lens),
    "mt_bench": lambda path, p, turns, first, lens, mid: formats.export_mt_bench(path, p, turns, mid),
}


def export(prompts_path: str, fmt: str, output: str, model: str | None = None, run: str | None = None,
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
    elif not _is_model(model):
        raise UserError(f"model directory not found: {model}")
    model_id = model_id or Path(model).resolve().name
    prompts = formats.read_prompts(prompts_path)
    formats._require_format(prompts, fmt)
    with serving(model, dtype, device) as (_, tok, engine):
        answers = answer(engine, prompts, SamplingParams(temperature=0, max_tokens=max_tokens), "answers")
        lens = {k: len(tok.encode(v[0], add_special_tokens=False)) for k, v in answers.items()}
    first = {k: v[0] for k, v in answers.items()}
    EXPORTERS[fmt](output, prompts, answers, first, lens, model_id)
    return Path(output)
