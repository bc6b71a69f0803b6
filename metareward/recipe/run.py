"""`metareward run`: T iterations of act -> judge -> meta-judge -> DPO on one model, resumable at every stage
boundary. Each iteration's model M_t generates, judges and meta-judges, then is trained in place into
M_{t+1}; the engine keeps generating from the same tensors."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..config import RunConfig, dump_yaml, merge, validate
from ..errors import UserError, warn
from ..io import atomic_write
from ..model.tiny import NAME as TINY
from ..prompts import read_prompts
from ..trainer.distributed import Dist, init_from_env, shard
from . import stages
from .evaluation import eval_base, evaluate
from .roles import seed_of
from .rundir import RunDir
from .summary import render, summary
from .templates import load_template
from .training import train

STAGES = [("eval_base", eval_base), ("actor", stages.actor), ("judge", stages.judge),
          ("actor_pairs", stages.actor_pairs), ("meta_judge", stages.meta_judge), ("judge_pairs", stages.judge_pairs),
          ("train", train), ("eval", evaluate), ("summary", summary)]
REPO = Path(__file__).resolve().parents[2]


def resolve_prompts(path: str) -> Path:
    p = Path(path)
    if not p.exists() and not p.is_absolute() and (REPO / p).exists():
        return REPO / p  # the bundled examples/, when run from outside the clone
    return p


def iteration_prompts(all_prompts: list, cfg: RunConfig, t: int) -> list:
    """Iteration t's prompts: consecutive slices of one seeded shuffle, wrapping around when the file runs
    out; all of them (with a warning) when the file has fewer than prompts_per_iteration."""
    import random
    order = list(range(len(all_prompts)))
    random.Random(seed_of(cfg.seed, "prompts")).shuffle(order)
    k = cfg.prompts_per_iteration
    if k >= len(order):
        return [all_prompts[i] for i in order]
    start = (t - 1) * k
    return [all_prompts[order[(start + i) % len(order)]] for i in range(k)]


class Models:
    """The one model of the run, loaded when a stage first needs it: the base model for iteration 1, the
    previous iteration's checkpoint when a resumed run starts later."""

    def __init__(self, cfg: RunConfig, rd: RunDir, dist: Dist, device: str | None):
        self.cfg, self.rd, self.dist, self.device = cfg, rd, dist, device
        self.loaded = None
        self.t = 1

    def get(self):
        if self.loaded is None:
            from ..engine import Engine
            from ..model import load_model
            path = self.cfg.model if self.t == 1 else self.rd.path / f"iter_{self.t - 1}" / "checkpoint"
            device = self.device or self.cfg.device
            # several GPUs: FSDP2 keeps float32 shards (the master weights) and gathers them in bf16
            mixed = (self.dist.enabled and self.cfg.dtype is None and self.cfg.dpo.master_weights
                     and str(device).startswith("cuda"))
            model, tok = load_model(path, dtype="float32" if mixed else self.cfg.dtype, device=device,
                                    chat_template=self.cfg.chat_template, max_model_len=self.cfg.engine.max_model_len)
            if self.dist.enabled:
                shard(model, self.dist, mixed_precision=mixed)
            e = self.cfg.engine
            engine = Engine(model, tok, max_model_len=e.max_model_len, block_size=e.block_size,
                            max_num_seqs=e.max_num_seqs, max_num_batched_tokens=e.max_num_batched_tokens,
                            kv_cache_memory=e.kv_cache_memory, cuda_graphs=False if self.dist.enabled else e.cuda_graphs,
                            seed=self.cfg.seed)
            self.loaded = (model, tok, engine)
        return self.loaded


def run(raw: dict, resume: bool = False, force: bool = False) -> Path:
    dist, device = init_from_env()
    configs = validate(raw)
    c0 = configs[0]
    # everything a user can get wrong is checked before the output directory is touched
    for c in configs:
        load_template("judge", c.judge.template)
        load_template("meta_judge", c.meta_judge.template)
    if c0.model != TINY and not Path(c0.model).is_dir():
        raise UserError(f"model directory not found: {c0.model}")
    all_prompts = read_prompts(resolve_prompts(c0.prompts))
    if c0.eval.prompts:
        from ..eval.formats import read_prompts as read_eval_prompts
        read_eval_prompts(resolve_prompts(c0.eval.prompts))
        raw = merge(raw, {"eval": {"prompts": str(resolve_prompts(c0.eval.prompts))}}, "eval")
        configs = validate(raw)
        if c0.eval.judge != "initial" and not Path(c0.eval.judge).is_dir() and c0.eval.judge != TINY:
            raise UserError(f"eval.judge: model directory not found: {c0.eval.judge}")
    rd = RunDir(c0.output_dir)
    error = None
    if dist.is_main:
        try:
            rd.prepare(resume, force)
            rd.lock()
        except UserError as e:
            error = str(e)
    error = dist.broadcast_object(error)
    if error:
        raise UserError(error)
    try:
        if dist.is_main:
            if resume:
                rd.load_state()
                rd.clean_temporaries()
            else:
                if force:
                    rd.clear()
                with atomic_write(rd.path / "config.yaml") as f:
                    f.write(dump_yaml(raw))
                rd.save_state()
        rd.state = dist.broadcast_object(rd.state)
        if c0.prompts_per_iteration > len(all_prompts):
            warn(f"{c0.prompts} has {len(all_prompts)} prompts, fewer than prompts_per_iteration="
                          f"{c0.prompts_per_iteration}: every iteration uses all of them")
        models = Models(c0, rd, dist, device)
        for t in range(1, c0.iterations + 1):
            cfg = configs[t - 1]
            ctx = stages.Context(cfg, t, rd.iteration(t), dist, iteration_prompts(all_prompts, cfg, t), models.get)
            for name, stage in STAGES:
                key = f"iter_{t}/{name}"
                if rd.done(key):
                    continue
                models.t = t  # a model loaded now starts from the previous iteration's checkpoint
                ctx.stage = name
                ctx.info["stages"] = {k: v for k, v in rd.state["stages"].items() if k.startswith(f"iter_{t}/")}
                t0 = time.perf_counter()
                stats = stage(ctx)
                stats.setdefault("seconds", time.perf_counter() - t0)
                rd.mark(key, stats, save=dist.is_main)  # every process keeps the state; rank 0 writes it
                dist.barrier()
            if dist.is_main:
                import json
                print(render(json.loads((ctx.dir / "summary.json").read_text())), file=sys.stderr)
    finally:
        if dist.is_main:
            rd.unlock()
    return rd.path
