"""The stages of one Meta-Rewarding iteration. Each reads its inputs from the iteration's folder, writes its
artifact there (atomically, rank 0 only) and returns its statistics for state.json."""
from __future__ import annotations

import os
import signal
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..io import read_jsonl, write_jsonl
from ..trainer.distributed import Dist, gathered
from . import elo, pairs, scoring
from .roles import generate_fitting, messages, question, read_next, sampling, seed_of, split, strip_stop
from .templates import load_template


@dataclass
class Context:
    cfg: object  # RunConfig of this iteration
    t: int  # 1-based iteration
    dir: Path  # iter_<t>/
    dist: Dist
    prompts: list  # this iteration's Prompt objects
    model_fn: Callable[[], tuple]  # -> (model, tokenizer, engine), loaded on first use
    info: dict = field(default_factory=dict)
    stage: str = ""

    def rows(self, name: str) -> list[dict]:
        return [r for _, r in read_jsonl(self.dir / name)] if (self.dir / name).stat().st_size else []

    def write(self, name: str, rows: list[dict]) -> None:
        fault_point(f"iter_{self.t}/{self.stage}")
        if self.dist.is_main:
            write_jsonl(self.dir / name, rows)

    def seed(self, *key) -> int:
        return seed_of(self.cfg.seed, self.t, *key)


def fault_point(where: str) -> None:
    """Fault injection for the resume tests: METAREWARD_FAULT=iter_<t>/<stage> kills the process (SIGKILL,
    as kill -9 would) inside that stage, after its work and before its artifact is written."""
    if os.environ.get("METAREWARD_FAULT") == where:
        os.kill(os.getpid(), signal.SIGKILL)


def _generation(ctx: Context, fn) -> dict:
    """Run fn(engine, tokenizer) with the model gathered (FSDP) and report the engine's throughput."""
    model, tok, engine = ctx.model_fn()
    s0 = (engine.stats.output_tokens, engine.stats.seconds, engine.stats.prompt_tokens, engine.stats.cached_tokens)
    t0 = time.perf_counter()
    with gathered(model):
        stats = fn(engine, tok)
    st = engine.stats
    out, sec = st.output_tokens - s0[0], st.seconds - s0[1]
    prompt, cached = st.prompt_tokens - s0[2], st.cached_tokens - s0[3]
    return {**stats, "seconds": time.perf_counter() - t0, "output_tokens": out, "tokens_per_s": out / max(sec, 1e-9),
            "prompt_tokens": prompt, "prefix_cache_hit_rate": cached / max(prompt, 1)}


def actor(ctx: Context) -> dict:
    c = ctx.cfg.actor

    def run(engine, tok):
        def gen(ps):
            params = [sampling(c, c.n, ctx.seed("actor", p.id)) for p in ps]
            outs = engine.generate([p.messages for p in ps], params, desc=f"iter {ctx.t} actor")
            return [[{"prompt_id": p.id, "prompt": p.prompt, "response_index": j, "text": s.text,
                      "num_tokens": len(s.token_ids), "finish_reason": s.finish_reason}
                     for j, s in enumerate(o.samples)] for p, o in zip(ps, outs)]
        rows = [r for group in split(ctx.dist, ctx.prompts, gen) for r in group]
        ctx.write("responses.jsonl", rows)
        return {"prompts": len(ctx.prompts), "responses": len(rows)}
    return _generation(ctx, run)


def judge(ctx: Context) -> dict:
    c = ctx.cfg.judge
    template = load_template("judge", c.template)
    responses = ctx.rows("responses.jsonl")

    def run(engine, tok):
        def gen(rs):
            ids = [engine.encode(messages(template.render(question=question(r["prompt"]), response=r["text"])))
                   for r in rs]
            params = [sampling(c, c.n, ctx.seed("judge", r["prompt_id"], r["response_index"])) for r in rs]
            expected = c.score_mode == "expected"
            outs = generate_fitting(engine, ids, params, "\n" + scoring.SCORE_PREFIX if expected else "",
                                    f"iter {ctx.t} judge")
            texts = [[s.text for s in o.samples] if o else [""] * c.n for o in outs]
            if not expected:
                scores = [[scoring.parse_score(x) if o else None for x in row] for o, row in zip(outs, texts)]
            else:
                ctxs = [o.prompt_token_ids + strip_stop(engine, s.token_ids) for o in outs if o for s in o.samples]
                lps = iter(read_next(engine, ctxs, "\n" + scoring.SCORE_PREFIX, scoring.SCORE_CANDIDATES,
                                     f"iter {ctx.t} judge scores") if ctxs else [])
                scores = [[scoring.expected_value(next(lps)) if o else None for _ in row]
                          for o, row in zip(outs, texts)]
            return [[{"prompt_id": r["prompt_id"], "response_index": r["response_index"], "judgment_index": j,
                      "text": x, "score": s} for j, (x, s) in enumerate(zip(tx, sc))]
                    for r, tx, sc in zip(rs, texts, scores)]
        rows = [r for group in split(ctx.dist, responses, gen) for r in group]
        ctx.write("judgments.jsonl", rows)
        invalid = sum(r["score"] is None for r in rows)
        return {"judgments": len(rows), "invalid_judgments": invalid}
    return _generation(ctx, run)


def _by_response(judgments: list[dict]) -> dict[tuple, list[dict]]:
    g = defaultdict(list)
    for j in judgments:
        g[(j["prompt_id"], j["response_index"])].append(j)
    return {k: sorted(v, key=lambda j: j["judgment_index"]) for k, v in g.items()}


def _by_prompt(responses: list[dict]) -> dict[str, list[dict]]:
    g = defaultdict(list)
    for r in responses:
        g[r["prompt_id"]].append(r)
    return {k: sorted(v, key=lambda r: r["response_index"]) for k, v in g.items()}


def _trainable(chosen: str, rejected: str) -> str | None:
    # what the DPO trainer would refuse; counted as drops here so the artifact holds only usable pairs
    if not chosen.strip() or not rejected.strip():
        return "empty_text"
    return "identical_text" if chosen == rejected else None


def actor_pairs(ctx: Context) -> dict:
    responses, judged = ctx.rows("responses.jsonl"), _by_response(ctx.rows("judgments.jsonl"))
    rows, drops, dropped_responses = [], Counter(), 0
    for pid, rs in _by_prompt(responses).items():
        scores = [scoring.mean_score([j["score"] for j in judged.get((pid, r["response_index"]), [])]) for r in rs]
        dropped_responses += sum(s is None for s in scores)
        pair, reason = pairs.actor_pair(scores, [r["num_tokens"] for r in rs], ctx.cfg.pairs.rho)
        if pair:
            ch, rj = rs[pair.chosen_index], rs[pair.rejected_index]
            reason = _trainable(ch["text"], rj["text"])
        if reason:
            drops[reason] += 1
            continue
        rows.append({"prompt_id": pid, "prompt": ch["prompt"], "chosen": ch["text"], "rejected": rj["text"],
                     "chosen_index": pair.chosen_index, "rejected_index": pair.rejected_index,
                     "chosen_score": pair.chosen_score, "rejected_score": pair.rejected_score,
                     "chosen_tokens": pair.chosen_tokens, "rejected_tokens": pair.rejected_tokens})
    ctx.write("actor_pairs.jsonl", rows)
    return {"actor_pairs": len(rows), "actor_drops": dict(drops), "unscored_responses": dropped_responses}


def meta_judge(ctx: Context) -> dict:
    c = ctx.cfg.meta_judge
    template = load_template("meta_judge", c.template)
    responses = {(r["prompt_id"], r["response_index"]): r for r in ctx.rows("responses.jsonl")}
    judged = _by_response(ctx.rows("judgments.jsonl"))
    tasks, skipped = [], 0
    for pid, rs in _by_prompt(list(responses.values())).items():
        per_response = [[j["score"] for j in judged.get((pid, r["response_index"]), [])] for r in rs]
        ri = elo.select_response(per_response)
        if ri is None:
            skipped += 1  # no response with two valid judgments
            continue
        js = judged[(pid, ri)]
        for first, second in elo.battles(per_response[ri]):
            tasks.append((responses[(pid, ri)], js[first], js[second]))

    def run(engine, tok):
        def gen(ts):
            ids = [engine.encode(messages(template.render(question=question(r["prompt"]), response=r["text"],
                                                          judgment_a=a["text"], judgment_b=b["text"])))
                   for r, a, b in ts]
            params = [sampling(c, 1, ctx.seed("meta_judge", r["prompt_id"], r["response_index"],
                                              a["judgment_index"], b["judgment_index"])) for r, a, b in ts]
            expected = c.winner_mode == "expected"
            outs = generate_fitting(engine, ids, params, "\n" + scoring.WINNER_PREFIX if expected else "",
                                    f"iter {ctx.t} meta-judge")
            texts = [o.samples[0].text if o else "" for o in outs]
            if not expected:
                winners = [scoring.parse_winner(x) if o else None for o, x in zip(outs, texts)]
            else:
                ctxs = [o.prompt_token_ids + strip_stop(engine, o.samples[0].token_ids) for o in outs if o]
                lps = iter(read_next(engine, ctxs, "\n" + scoring.WINNER_PREFIX, scoring.WINNER_CANDIDATES,
                                     f"iter {ctx.t} meta-judge verdicts") if ctxs else [])
                winners = [scoring.expected_winner(*next(lps)) if o else None for o in outs]
            return [{"prompt_id": r["prompt_id"], "response_index": r["response_index"],
                     "first": a["judgment_index"], "second": b["judgment_index"], "winner": w, "text": x}
                    for (r, a, b), w, x in zip(ts, winners, texts)]
        rows = split(ctx.dist, tasks, gen)
        ctx.write("meta_judgments.jsonl", rows)
        return {"battles": len(rows), "invalid_verdicts": sum(r["winner"] is None for r in rows),
                "prompts_without_battles": skipped}
    return _generation(ctx, run)


def judge_pairs(ctx: Context) -> dict:
    p = ctx.cfg.pairs
    template = load_template("judge", ctx.cfg.judge.template)
    responses = {(r["prompt_id"], r["response_index"]): r for r in ctx.rows("responses.jsonl")}
    judged = _by_response(ctx.rows("judgments.jsonl"))
    battles = ctx.rows("meta_judgments.jsonl")
    pw = elo.position_weights(b["winner"] for b in battles)
    results = defaultdict(list)
    for b in battles:
        results[(b["prompt_id"], b["response_index"])].append((b["first"], b["second"], b["winner"]))
    rows, drops, spreads = [], Counter(), []
    for key, res in results.items():
        js = judged[key]
        scores = [j["score"] for j in js]
        ratings = elo.judgment_ratings(scores, res, pw.w1, pw.w2, p.elo_l2)
        rated = [r for r in ratings if r is not None]
        spreads.append(max(rated) - min(rated) if rated else 0.0)
        pair, reason = pairs.judge_pair(ratings, scores, [len(j["text"]) for j in js], p.drop_same_score,
                                        p.max_judgment_chars)
        if pair:
            reason = _trainable(js[pair.chosen_index]["text"], js[pair.rejected_index]["text"])
        if reason:
            drops[reason] += 1
            continue
        r = responses[key]
        rows.append({"prompt_id": key[0], "response_index": key[1],
                     "prompt": template.render(question=question(r["prompt"]), response=r["text"]),
                     "chosen": js[pair.chosen_index]["text"], "rejected": js[pair.rejected_index]["text"],
                     "chosen_judgment": pair.chosen_index, "rejected_judgment": pair.rejected_index,
                     "chosen_elo": pair.chosen_rating, "rejected_elo": pair.rejected_rating,
                     "chosen_score": pair.chosen_score, "rejected_score": pair.rejected_score})
    ctx.write("judge_pairs.jsonl", rows)
    return {"judge_pairs": len(rows), "judge_drops": dict(drops), "w1": pw.w1, "w2": pw.w2,
            "wins_first": pw.wins_first, "wins_second": pw.wins_second,
            "elo_spread_mean": sum(spreads) / len(spreads) if spreads else None}
