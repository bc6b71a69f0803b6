"""The optional evaluation stages of a run (config `eval`): greedy answers of the starting model M_0 on the
held-out prompts (iteration 1), then after each iteration's training the new model's answers, judged
against the previous (or the initial) model's in both orders: win rate, LC win rate, CIs."""
from __future__ import annotations

from pathlib import Path

from ..engine import SamplingParams
from ..errors import UserError, warn
from ..eval import formats, stats
from ..eval.serving import answer, pairwise, serving
from ..trainer.distributed import gathered
from .roles import split
from .stages import Context

BASE_ANSWERS = "eval_base_answers.jsonl"


def _prompts(ctx: Context) -> list:
    return formats.read_prompts(ctx.cfg.eval.prompts)[:ctx.cfg.eval.num_prompts]


def _answers(ctx: Context, name: str) -> dict:
    model, tok, engine = ctx.model_fn()
    prompts = _prompts(ctx)
    params = SamplingParams(temperature=0, max_tokens=ctx.cfg.eval.max_tokens)

    def share(ps):  # one batch for this process's prompts
        got = answer(engine, ps, params, f"iter {ctx.t} eval answers") if ps else {}
        return [got[p.id][0] for p in ps]

    with gathered(model):
        got = split(ctx.dist, prompts, share)
    rows = [{"id": p.id, "question": p.turns[0], "answer": a} for p, a in zip(prompts, got)]
    ctx.write(name, rows)
    return {"eval_prompts": len(rows)}


def eval_base(ctx: Context) -> dict:
    if not ctx.cfg.eval.prompts or ctx.t != 1:
        return {"skipped": True}
    return _answers(ctx, BASE_ANSWERS)


def evaluate(ctx: Context) -> dict:
    e = ctx.cfg.eval
    if not e.prompts:
        return {"skipped": True}
    _answers(ctx, "eval_answers.jsonl")
    run = ctx.dir.parent
    base = run / "iter_1" / BASE_ANSWERS
    if e.baseline == "previous" and ctx.t > 1:
        base = run / f"iter_{ctx.t - 1}" / "eval_answers.jsonl"
    new = {r["id"]: r for r in _rows(ctx.dir / "eval_answers.jsonl")}
    old = {r["id"]: r for r in _rows(base)}
    ids = [i for i in new if i in old]
    judge = ctx.cfg.model if e.judge == "initial" else e.judge
    _, _, engine = ctx.model_fn()
    engine.release()  # the judge gets the memory while it works

    def judge_share(idx):
        if not idx:
            return []
        q = [new[i]["question"] for i in idx]
        a, b = [new[i]["answer"] for i in idx], [old[i]["answer"] for i in idx]
        with serving(judge, ctx.cfg.dtype, ctx.cfg.device, ctx.cfg.chat_template) as (_, tok, jeng):
            v1, _ = pairwise(jeng, q, a, b, e.verdict_mode, e.judge_max_tokens, desc=f"iter {ctx.t} eval judge")
            v2, _ = pairwise(jeng, q, b, a, e.verdict_mode, e.judge_max_tokens, desc=f"iter {ctx.t} eval judge")
            lens = [(len(tok.encode(x, add_special_tokens=False)), len(tok.encode(y, add_special_tokens=False)))
                    for x, y in zip(a, b)]
        return [(stats.model_side(x, True), stats.model_side(y, False), la, lb) for x, y, (la, lb)
                in zip(v1, v2, lens)]

    verdicts = split(ctx.dist, ids, judge_share)
    first, second, lm, lb = (list(c) for c in zip(*verdicts)) if verdicts else ([], [], [], [])
    ctx.write("eval_judgments.jsonl", [{"id": i, "verdict_new_first": f, "verdict_old_first": s, "len_new": x,
                                        "len_old": y} for i, f, s, x, y in zip(ids, first, second, lm, lb)])
    try:
        report = stats.win_rate_report(first, second, lm, lb, seed=ctx.cfg.seed)
    except UserError as err:
        # no verdict at all (parse mode, a judge that writes no "Winner:" line): a resumed run would stop here
        # again, so this iteration gets no point on the curve and the run goes on
        warn(f"iter {ctx.t} eval: {err}")
        return {"eval": None, "eval_baseline": e.baseline, "eval_judge": judge}
    return {"eval": {k: report[k] for k in ("n", "n_excluded", "win_rate", "win_rate_ci95", "lc_win_rate",
                                            "lc_win_rate_ci95", "position_consistency")},
            "eval_baseline": e.baseline, "eval_judge": judge}


def _rows(path: Path) -> list[dict]:
    from ..io import read_jsonl
    return [r for _, r in read_jsonl(path)]
