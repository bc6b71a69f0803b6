"""The training stage: this iteration's pairs, in-place DPO against the current weights, the checkpoint."""
from __future__ import annotations

import dataclasses
import json
import time

from ..model import save_model
from ..trainer.data import parse_pair, tokenize_pairs
from ..trainer.dpo import train as dpo_train
from .roles import seed_of
from .stages import Context

PAIR_FILES = {"actor": "actor_pairs.jsonl", "judge": "judge_pairs.jsonl"}


def train(ctx: Context) -> dict:
    model, tok, engine = ctx.model_fn()
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
        cfg = dataclasses.replace(ctx.cfg.dpo, seed=seed_of(ctx.cfg.seed, ctx.t, "dpo") % 2**31)
        history = dpo_train(model, pairs, cfg, ctx.dist)
    ctx.write("train_metrics.jsonl", history)
    save_model(model, tok, ctx.dir / "checkpoint")
    last = history[-1] if history else {}
    stats.update(steps=len(history), seconds=time.perf_counter() - t0,
                 tokens_per_s=sum(m["tokens_per_s"] for m in history) / max(len(history), 1),
                 final={k: last.get(k) for k in ("loss", "rewards/accuracies", "rewards/margins")})
    return json.loads(json.dumps(stats))
