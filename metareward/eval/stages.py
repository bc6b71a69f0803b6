"""The evaluation stages of a run (config `eval`): M_0 is measured once, before the first iteration
(eval_initial, in iter_1/), and every trained M_t after its iteration's training (eval, reading the weights
iteration t produced). Each measurement is optional: a win rate against the initial (or previous) model's
answers, judged in both orders by a judge model; IFEval; the model's agreement as a judge with human labels."""
from __future__ import annotations

import time

from ..engine import SamplingParams
from ..errors import UserError, warn
from ..io import read_jsonl
from ..judging import load_template
from ..prompts import read_prompts
from ..stage import Context, Stage, split
from ..trainer.distributed import gathered
from . import formats, ifeval
from .commands import agreement, head_to_head, report_of
from .serving import answer, serving

INITIAL_ANSWERS = "eval_initial_answers.jsonl"
ANSWERS = "eval_answers.jsonl"
REPORT_KEYS = ("n", "n_excluded", "win_rate", "win_rate_ci95", "lc_win_rate", "lc_win_rate_ci95",
               "position_consistency", "mean_len_model", "mean_len_baseline")


def _answers(ctx: Context, engine, name: str) -> None:
    w = ctx.cfg.eval.winrate
    prompts = read_prompts(w.prompts)[:w.num_prompts]
    params = SamplingParams(temperature=0, max_tokens=w.max_tokens)

    def share(ps):
        got = answer(engine, ps, params, f"iter {ctx.t} eval answers") if ps else {}
        return [got[p.id][0] for p in ps]
    texts = split(ctx.dist, prompts, share)
    ctx.write(name, [{"id": p.id, "question": p.question, "answer": a} for p, a in zip(prompts, texts)])


def _rows(path) -> dict[str, dict]:
    return {r["id"]: r for _, r in read_jsonl(path)}


def _winrate(ctx: Context) -> dict | None:
    """M_t's answers (already written) against the baseline's, judged in both orders."""
    w, cfg = ctx.cfg.eval.winrate, ctx.cfg
    base = ctx.run_dir / "iter_1" / INITIAL_ANSWERS
    if w.baseline == "previous" and ctx.t > 1:
        base = ctx.run_dir / f"iter_{ctx.t - 1}" / ANSWERS
    new, old = _rows(ctx.dir / ANSWERS), _rows(base)
    ids = [i for i in new if i in old]
    judge = cfg.model if w.judge == "initial" else w.judge
    template = load_template("pairwise", w.template)

    def judged(idx):
        if not idx:
            return []
        with serving(judge, dtype=cfg.dtype, device=cfg.device, chat_template=cfg.chat_template) as (_, _, eng):
            return head_to_head(eng, questions=[new[i]["question"] for i in idx], ids=idx,
                                model_answers=[new[i]["answer"] for i in idx],
                                baseline_answers=[old[i]["answer"] for i in idx], mode=w.verdict_mode,
                                max_tokens=w.judge_max_tokens, template=template)
    rows = split(ctx.dist, ids, judged)
    ctx.write("eval_judgments.jsonl", rows)
    try:
        report = report_of(rows, seed=cfg.seed)
    except UserError as err:  # no verdict at all: this iteration gets no point on the curve, the run goes on
        warn(f"iter {ctx.t} eval: {err}")
        return None
    return {**{k: report[k] for k in REPORT_KEYS}, "baseline": f"M_{0 if w.baseline == 'initial' else ctx.t - 1}",
            "judge": "M_0" if w.judge == "initial" else judge, "verdict_mode": w.verdict_mode}


def _ifeval(ctx: Context, engine, name: str) -> dict:
    """IFEval's accuracies of the model in hand (greedy answers, each process its share); the answers and
    their checks go to `name`, the scores (with 95% bootstrap intervals over prompts) into the stage's state."""
    c = ctx.cfg.eval.ifeval
    rows = ifeval.load_data(c.data, c.limit)
    t0 = time.perf_counter()
    answers = split(ctx.dist, rows, lambda rs: ifeval.answer(engine, rs, c.max_tokens, f"iter {ctx.t} IFEval"))
    records, scores = ifeval.score(rows, answers, seed=ctx.cfg.seed)
    ctx.write(name, records)
    return {**scores, "data": c.data, "generation": ifeval.generation_stats(answers, time.perf_counter() - t0,
                                                                             c.max_tokens)}


def _agreement(ctx: Context, engine) -> dict:
    c = ctx.cfg.eval.judge_agreement
    rows = formats.read_judge_pairs(c.data, c.format)[:c.limit]
    report, _ = agreement(engine, rows, mode=c.mode, max_tokens=c.max_tokens)
    return {"data": c.data, **report}


def _measure(ctx: Context, answers_name: str, prefix: str) -> dict:
    e = ctx.cfg.eval
    model, _, engine = ctx.model()
    out = {}
    with gathered(model):
        if e.winrate.prompts:
            _answers(ctx, engine, answers_name)
        if e.ifeval.data:
            out["ifeval"] = _ifeval(ctx, engine, f"{prefix}ifeval_responses.jsonl")
        if e.judge_agreement.data:
            out["judge_agreement"] = _agreement(ctx, engine)
    return out


def eval_initial(ctx: Context) -> dict:
    """M_0, before iteration 1 trains: its answers are the win rate's baseline; its IFEval and judge agreement
    are the starting point of the curves."""
    if ctx.t != 1 or not ctx.cfg.eval.enabled:
        return {"skipped": True}
    return _measure(ctx, INITIAL_ANSWERS, "eval_initial_")


def evaluate(ctx: Context) -> dict:
    if not ctx.cfg.eval.enabled:
        return {"skipped": True}
    out = _measure(ctx, ANSWERS, "eval_")
    if ctx.cfg.eval.winrate.prompts:
        _, _, engine = ctx.model()
        engine.release()  # the judge gets the memory while it works
        out["winrate"] = _winrate(ctx)
    return out


INITIAL = Stage("eval_initial", eval_initial, "input")
AFTER_TRAINING = Stage("eval", evaluate, "output")
