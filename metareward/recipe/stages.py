"""The stages of one Meta-Rewarding iteration. Each reads its inputs from the iteration's folder, writes one
artifact there (atomically, rank 0 only) and returns its statistics for state.json. A stage that leaves the
iteration with nothing to learn from says so at once, with the reason and the setting that would help."""
from __future__ import annotations

import time
from collections import Counter, defaultdict

from ..engine import SamplingParams
from ..errors import warn
from ..judging import load_template, mean_score, scores, winners
from ..prompts import question_of
from ..stage import Context, Stage, split
from ..trainer.distributed import gathered
from . import elo, pairs
from .rows import ActorPair, JudgePair, Judgment, MetaJudgment, Response
from .training import train


def sampling(c, n: int, seed: int) -> SamplingParams:
    return SamplingParams(n=n, temperature=c.temperature, top_p=c.top_p, max_tokens=c.max_tokens, seed=seed)


def _generation(ctx: Context, fn) -> dict:
    """fn(engine) with the model gathered (FSDP), plus the engine's throughput over the call."""
    model, _, engine = ctx.model()
    st = engine.stats
    s0 = (st.output_tokens, st.seconds, st.prompt_tokens, st.cached_tokens)
    t0 = time.perf_counter()
    with gathered(model):
        stats = fn(engine)
    mine = (st.output_tokens - s0[0], st.seconds - s0[1], st.prompt_tokens - s0[2], st.cached_tokens - s0[3])
    parts = ctx.dist.all_gather_object(mine)  # the whole stage's counts: every process generates its share
    out, prompt, cached = (sum(p[i] for p in parts) for i in (0, 2, 3))
    sec = max(p[1] for p in parts)  # side by side
    return {**stats, "seconds": time.perf_counter() - t0, "output_tokens": out, "tokens_per_s": out / max(sec, 1e-9),
            "prompt_tokens": prompt, "prefix_cache_hit_rate": cached / max(prompt, 1)}


def actor(ctx: Context) -> dict:
    c = ctx.cfg.actor

    def run(engine):
        def gen(ps):  # -> per prompt, its responses
            params = [sampling(c, c.n, ctx.seed("actor", p.id)) for p in ps]
            outs = engine.generate([p.messages() for p in ps], params, desc=f"iter {ctx.t} actor")
            groups = []
            for p, o in zip(ps, outs):
                dup = duplicate_of([x.text for x in o.samples])
                groups.append([Response(p.id, p.raw, j, x.text, len(x.token_ids), x.finish_reason, dup[j])
                               for j, x in enumerate(o.samples)])
            return groups
        rows = [r for group in split(ctx.dist, ctx.prompts, gen) for r in group]
        ctx.write("responses.jsonl", rows)
        return {"prompts": len(ctx.prompts), "responses": len(rows),
                "duplicates": sum(r.duplicate_of is not None for r in rows)}
    return _generation(ctx, run)


def duplicate_of(texts: list[str]) -> list[int | None]:
    """For each text, the index of an identical earlier one (None for the first of its kind)."""
    first: dict[str, int] = {}
    out = []
    for j, t in enumerate(texts):
        out.append(first.get(t))
        first.setdefault(t, j)
    return out


def judge(ctx: Context) -> dict:
    c = ctx.cfg.judge
    template = load_template("judge", c.template)
    todo = [r for r in ctx.rows("responses.jsonl", Response)
            if not (ctx.cfg.actor.drop_duplicates and r.duplicate_of is not None)]

    def run(engine):
        def gen(rs):
            params = [sampling(c, c.n, ctx.seed("judge", r.prompt_id, r.response_index)) for r in rs]
            got = scores(engine, [(question_of(r.prompt), r.text) for r in rs], params, mode=c.score_mode,
                         template=template, desc=f"iter {ctx.t} judge")
            return [[Judgment(r.prompt_id, r.response_index, j, x.text, x.value)
                     for j, x in enumerate(g or [_NONE] * c.n)] for r, g in zip(rs, got)]
        rows = [j for group in split(ctx.dist, todo, gen) for j in group]
        ctx.write("judgments.jsonl", rows)
        valid = sum(j.score is not None for j in rows)
        if rows and not valid:
            hint = ("judge.score_mode=expected reads the score from the logits" if c.score_mode == "parse" else
                    "a larger judge.max_tokens, or a judge template the model follows")
            warn(f"iteration {ctx.t}: 0 of {len(rows)} judgments had a valid score "
                 f"({'no Score: line' if c.score_mode == 'parse' else 'no finite score read'}); {hint}")
        return {"judgments": len(rows), "invalid_judgments": len(rows) - valid}
    return _generation(ctx, run)


class _Unjudged:  # a prompt that outgrew the context: its judgments have no text and no score
    text, value = "", None


_NONE = _Unjudged()


def _by_response(judgments: list[Judgment]) -> dict[tuple, list[Judgment]]:
    g = defaultdict(list)
    for j in judgments:
        g[(j.prompt_id, j.response_index)].append(j)
    return {k: sorted(v, key=lambda j: j.judgment_index) for k, v in g.items()}


def _by_prompt(responses: list[Response]) -> dict[str, list[Response]]:
    g = defaultdict(list)
    for r in responses:
        g[r.prompt_id].append(r)
    return {k: sorted(v, key=lambda r: r.response_index) for k, v in g.items()}


def _trainable(chosen: str, rejected: str) -> str | None:
    # what the DPO trainer would refuse; counted as drops here so the artifact holds only usable pairs
    if not chosen.strip() or not rejected.strip():
        return "empty_text"
    return "identical_text" if chosen == rejected else None


def actor_pairs(ctx: Context) -> dict:
    responses, judged = ctx.rows("responses.jsonl", Response), _by_response(ctx.rows("judgments.jsonl", Judgment))
    rows, drops, unscored = [], Counter(), 0
    for pid, rs in _by_prompt(responses).items():
        s = [mean_score([j.score for j in judged.get((pid, r.response_index), [])]) for r in rs]
        unscored += sum(x is None and r.duplicate_of is None for x, r in zip(s, rs))
        pair, reason = pairs.actor_pair(s, [r.num_tokens for r in rs], ctx.cfg.pairs.rho)
        if pair:
            ch, rj = rs[pair.chosen_index], rs[pair.rejected_index]
            reason = _trainable(ch.text, rj.text)
        if reason:
            drops[reason] += 1
            continue
        rows.append(ActorPair(pid, ch.prompt, ch.text, rj.text, pair.chosen_index, pair.rejected_index,
                              pair.chosen_score, pair.rejected_score, pair.chosen_tokens, pair.rejected_tokens))
    ctx.write("actor_pairs.jsonl", rows)
    if not rows and "actor" in ctx.cfg.train_on:
        why = ", ".join(f"{n} {k}" for k, n in drops.most_common()) or "no prompts"
        warn(f"iteration {ctx.t}: 0 actor pairs ({why}); more responses (actor.n) or judgments (judge.n) "
             "give more prompts a score spread")
    return {"actor_pairs": len(rows), "actor_drops": dict(drops), "unscored_responses": unscored,
            "chosen_tokens_mean": _mean([r.chosen_tokens for r in rows]),
            "rejected_tokens_mean": _mean([r.rejected_tokens for r in rows])}


def _mean(xs: list) -> float | None:
    return sum(xs) / len(xs) if xs else None


def meta_judge(ctx: Context) -> dict:
    c = ctx.cfg.meta_judge
    template = load_template("meta_judge", c.template)
    responses = {(r.prompt_id, r.response_index): r for r in ctx.rows("responses.jsonl", Response)}
    judged = _by_response(ctx.rows("judgments.jsonl", Judgment))
    tasks, skipped = [], 0
    for pid, rs in _by_prompt(list(responses.values())).items():
        per_response = [[j.score for j in judged.get((pid, r.response_index), [])] for r in rs]
        ri = elo.select_response(per_response)
        if ri is None:
            skipped += 1  # no response with two valid judgments
            continue
        js = judged[(pid, rs[ri].response_index)]
        for first, second in elo.battles(per_response[ri]):
            tasks.append((rs[ri], js[first], js[second]))

    def run(engine):
        def gen(ts):
            params = [sampling(c, 1, ctx.seed("meta_judge", r.prompt_id, r.response_index, a.judgment_index,
                                              b.judgment_index)) for r, a, b in ts]
            got = winners(engine, [(question_of(r.prompt), r.text, a.text, b.text) for r, a, b in ts], params,
                          mode=c.winner_mode, template=template, desc=f"iter {ctx.t} meta-judge")
            return [MetaJudgment(r.prompt_id, r.response_index, a.judgment_index, b.judgment_index,
                                 (g or [_NONE])[0].value, (g or [_NONE])[0].text) for (r, a, b), g in zip(ts, got)]
        rows = split(ctx.dist, tasks, gen)
        ctx.write("meta_judgments.jsonl", rows)
        invalid = sum(r.winner is None for r in rows)
        if rows and invalid == len(rows) and "judge" in ctx.cfg.train_on:
            warn(f"iteration {ctx.t}: 0 of {len(rows)} meta-judgments had a valid verdict"
                 + ("; meta_judge.winner_mode=expected reads it from the logits" if c.winner_mode == "parse" else ""))
        return {"battles": len(rows), "invalid_verdicts": invalid, "prompts_without_battles": skipped}
    return _generation(ctx, run)


def judge_pairs(ctx: Context) -> dict:
    p = ctx.cfg.pairs
    template = load_template("judge", ctx.cfg.judge.template)
    responses = {(r.prompt_id, r.response_index): r for r in ctx.rows("responses.jsonl", Response)}
    judged = _by_response(ctx.rows("judgments.jsonl", Judgment))
    battles = ctx.rows("meta_judgments.jsonl", MetaJudgment)
    pw = elo.position_weights(b.winner for b in battles)
    results = defaultdict(list)
    for b in battles:
        results[(b.prompt_id, b.response_index)].append((b.first, b.second, b.winner))
    rows, drops, spreads = [], Counter(), []
    for key, res in results.items():
        js = judged[key]
        s = [j.score for j in js]
        ratings = elo.judgment_ratings(s, res, pw.w1, pw.w2, p.elo_l2)
        rated = [r for r in ratings if r is not None]
        spreads.append(max(rated) - min(rated) if rated else 0.0)
        pair, reason = pairs.judge_pair(ratings, s, [len(j.text) for j in js], p.drop_same_score,
                                        p.max_judgment_chars)
        if pair:
            reason = _trainable(js[pair.chosen_index].text, js[pair.rejected_index].text)
        if reason:
            drops[reason] += 1
            continue
        r = responses[key]
        rows.append(JudgePair(key[0], key[1], template.render(question=question_of(r.prompt), response=r.text),
                              js[pair.chosen_index].text, js[pair.rejected_index].text, pair.chosen_index,
                              pair.rejected_index, pair.chosen_rating, pair.rejected_rating, pair.chosen_score,
                              pair.rejected_score))
    ctx.write("judge_pairs.jsonl", rows)
    return {"judge_pairs": len(rows), "judge_drops": dict(drops), "w1": pw.w1, "w2": pw.w2,
            "wins_first": pw.wins_first, "wins_second": pw.wins_second,
            "elo_spread_mean": _mean(spreads)}


STAGES = [Stage("actor", actor, "input"), Stage("judge", judge, "input"), Stage("actor_pairs", actor_pairs, None),
          Stage("meta_judge", meta_judge, "input"), Stage("judge_pairs", judge_pairs, None),
          Stage("train", train, "input")]
