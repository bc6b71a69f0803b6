"""The training stage: this iteration's pairs, in-place DPO against the weights it starts from, the checkpoint.
A non-finite loss or gradient stops the run: nothing is saved for the iteration (its input weights, on disk,
stay the last good ones), the failure is recorded in state.json, and a resume trains again from them."""
from __future__ import annotations

import time

from ..errors import RunFailed, warn
from ..model import save_model
from ..stage import Context, seed_of
from ..trainer.data import parse_pair, tokenize_pairs
from ..trainer.dpo import NonFiniteError
from ..trainer.dpo import train as dpo_train

PAIR_FILES = {"actor": "actor_pairs.jsonl", "judge": "judge_pairs.jsonl"}


class TrainingFailed(RunFailed):
    """DPO met a non-finite loss or gradient; the in-memory weights are no longer M_(t-1)."""


def train(ctx: Context) -> dict:
    model, tok, engine = ctx.model()
    raw = []
    for kind in ctx.cfg.train_on:
        for i, r in enumerate(ctx.rows(PAIR_FILES[kind]), 1):
            raw.append(parse_pair({k: r[k] for k in ("prompt", "chosen", "rejected")},
                                  f"{ctx.dir / PAIR_FILES[kind]}:{i}"))
    t0 = time.perf_counter()
    history, stats = [], {"pairs": len(raw), "kinds": list(ctx.cfg.train_on)}
    if raw:
        pairs, data = tokenize_pairs(tok, raw, ctx.cfg.dpo.max_length)
        stats.update(truncated=data.truncated, dropped_too_long=data.dropped)
        # the KV cache gives its memory to training; the engine takes it back (empty) when it next generates
        engine.release()
        cfg = ctx.cfg.dpo.model_copy(update={"seed": seed_of(ctx.cfg.seed, ctx.t, "dpo") % 2**31})
        try:
            history = dpo_train(model, pairs, cfg, ctx.dist) if pairs else []
        except NonFiniteError as e:
            raise TrainingFailed(f"iteration {ctx.t}: {e}; the checkpoint of iteration {ctx.t} was not written "
                                 f"and the run stops (lower dpo.lr, or check the pairs)") from None
    if not history:
        counts = {k: n for k, n in ((k, ctx.stages.get(f"{k}_pairs", {}).get(f"{k}_pairs")) for k in PAIR_FILES)
                  if n is not None}
        warn(f"iteration {ctx.t} is not trained: no pairs to train on (train_on {list(ctx.cfg.train_on)}; "
             + ", ".join(f"{n} {k} pairs" for k, n in counts.items()) + "); its checkpoint equals its input")
    ctx.write("train_metrics.jsonl", history)
    save_model(model, tok, ctx.dir / "checkpoint")
    last = history[-1] if history else {}
    stats.update(steps=len(history), trained=bool(history), seconds=time.perf_counter() - t0,
                 tokens_per_s=sum(m["tokens_per_s"] for m in history) / max(len(history), 1),
                 final={k: last.get(k) for k in ("loss", "rewards/accuracies", "rewards/margins")})
    return stats
