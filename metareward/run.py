"""`metareward run`: T iterations of act -> judge -> meta-judge -> DPO on one model, resumable at every stage
boundary. Iteration t starts from M_(t-1) (M_0: the configured model) and its training turns the weights in
memory into M_t in place; every stage declares the weights it reads, so a run resumed anywhere loads exactly
those (the base model or an iteration's checkpoint) and ends with the artifacts of an uninterrupted run."""
from __future__ import annotations

import contextlib
import json
import random
import signal
import sys
import time
from pathlib import Path

from .config import TINY, RunConfig, dump_yaml, resumed_config, run_config, validate
from .errors import Interrupted, RunFailed, UserError, warn
from .eval import stages as eval_stages
from .io import atomic_write
from .prompts import Prompt, read_prompts
from .recipe.stages import STAGES as RECIPE
from .recipe.summary import STAGE as SUMMARY
from .recipe.summary import render
from .recipe.training import TrainingFailed
from .rundir import RunDir
from .stage import Context, seed_of
from .trainer.distributed import Dist, init_from_env, shard

STAGES = [eval_stages.INITIAL, *RECIPE, eval_stages.AFTER_TRAINING, SUMMARY]


def iteration_prompts(all_prompts: list, cfg: RunConfig, t: int) -> list:
    """Iteration t's prompts: consecutive slices of one seeded shuffle, wrapping around when the file runs
    out; all of them (with a warning) when the file has fewer than prompts_per_iteration."""
    order = list(range(len(all_prompts)))
    random.Random(seed_of(cfg.seed, "prompts")).shuffle(order)
    k = cfg.prompts_per_iteration
    if k >= len(order):
        return [all_prompts[i] for i in order]
    start = (t - 1) * k
    return [all_prompts[order[(start + i) % len(order)]] for i in range(k)]


class Models:
    """The one model of the run in memory, with the engine over it. M_k is loaded when a stage asks for it and
    another one is in memory; training in place turns M_(t-1) into M_t without a reload."""

    def __init__(self, cfg: RunConfig, rd: RunDir, dist: Dist, device: str | None):
        self.cfg, self.rd, self.dist, self.device = cfg, rd, dist, device
        self.loaded, self.k = None, None

    def path(self, k: int) -> str:
        return self.cfg.model if k == 0 else str(self.rd.path / f"iter_{k}" / "checkpoint")

    def get(self, k: int) -> tuple:
        if self.k != k:
            self.drop()
            self.loaded, self.k = self._load(self.path(k)), k
        return self.loaded

    def trained(self, t: int) -> None:
        if self.loaded is not None:
            self.k = t  # the weights in memory are now M_t (also saved as iter_t/checkpoint)

    def drop(self) -> None:
        if self.loaded is not None:
            self.loaded[2].release()
        self.loaded, self.k = None, None

    def _load(self, path: str) -> tuple:
        from .engine import Engine
        from .model import load_model
        device = self.device or self.cfg.device
        # several GPUs: FSDP2 keeps float32 shards (the master weights) and gathers them in bf16
        mixed = (self.dist.enabled and self.cfg.dtype is None and self.cfg.dpo.master_weights
                 and str(device).startswith("cuda"))
        e = self.cfg.engine
        model, tok = load_model(path, dtype="float32" if mixed else self.cfg.dtype, device=device,
                                chat_template=self.cfg.chat_template, max_model_len=e.max_model_len)
        if self.dist.enabled:
            shard(model, self.dist, mixed_precision=mixed)
        engine = Engine(model, tok, max_model_len=e.max_model_len, block_size=e.block_size,
                        max_num_seqs=e.max_num_seqs, max_num_batched_tokens=e.max_num_batched_tokens,
                        kv_cache_memory=e.kv_cache_memory, cuda_graphs=False if self.dist.enabled else e.cuda_graphs,
                        seed=self.cfg.seed)
        return model, tok, engine


# -- before the run directory is touched -------------------------------------------------------------------

def check_inputs(configs: list[RunConfig], device: str | None) -> list[Prompt]:
    """Everything a user can get wrong, checked before the output directory is touched: templates, the model
    (config, weight headers, tokenizer), the prompts (each one's length against the context), evaluation
    files, and settings that depend on the machine. -> the prompts."""
    from .eval import formats
    from .judging import load_template
    from .model import inspect_model, resolve_device
    c0 = configs[0]
    for c in {id(c): c for c in configs}.values():
        load_template("judge", c.judge.template)
        load_template("meta_judge", c.meta_judge.template)
    model_cfg, tok = inspect_model(c0.model, chat_template=c0.chat_template)
    context = min(c0.engine.max_model_len or model_cfg.max_position_embeddings, model_cfg.max_position_embeddings)
    _check_memory(c0, resolve_device(device or c0.device))
    prompts = read_prompts(c0.prompts)
    from .model.tokenizer import chat_ids
    for p in prompts:
        n = len(chat_ids(tok, p.messages()))
        if n >= context:
            raise UserError(f"{p.where}: prompt {p.id!r} has {n} tokens; the context is {context} "
                            "(engine.max_model_len, or the model's): shorten it or leave it out")
    w = c0.eval.winrate
    if w.prompts:
        read_prompts(w.prompts)
        load_template("pairwise", w.template)
        if w.judge not in ("initial", TINY):
            inspect_model(w.judge)
    if c0.eval.ifeval.data:
        from .eval.ifeval import load_data
        load_data(c0.eval.ifeval.data)
    if c0.eval.judge_agreement.data:
        formats.read_judge_pairs(c0.eval.judge_agreement.data, c0.eval.judge_agreement.format)
    return prompts


def _check_memory(c: RunConfig, device) -> None:
    import os
    m = c.engine.kv_cache_memory
    if m is None:
        return
    if device.type == "cuda":
        if not m <= 1:
            raise UserError(f"config key engine.kv_cache_memory: on CUDA a fraction of free memory in (0, 1], got {m}")
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if not 2**20 <= m <= total:
            raise UserError(f"config key engine.kv_cache_memory: on the CPU, bytes between 1 MiB and this machine's "
                            f"{total / 2**30:.1f} GiB, got {m:g}")


# -- the run ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _signals():
    """SIGTERM ends the run like Ctrl-C: the current write is abandoned (its temporary file removed), the lock
    released, and the exception carries the signal."""
    def raise_(signum, _frame):
        raise KeyboardInterrupt(signum)
    old = signal.signal(signal.SIGTERM, raise_)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run(*, config_file: str | None = None, options: dict | None = None, overrides: list[str] = (),
        resume: bool = False, force: bool = False) -> Path:
    dist, device = init_from_env()
    raw = run_config(config_file, options or {}, list(overrides))
    out = Path(raw["output_dir"])
    if resume:
        if not (out / "config.yaml").is_file():
            raise UserError(f"nothing to resume in {out}: no config.yaml")
        raw = resumed_config(out / "config.yaml", config_file, options or {}, list(overrides))
        raw["output_dir"] = str(out)  # the directory given, wherever the run was first started
    configs = validate(raw)
    all_prompts = check_inputs(configs, device)
    rd = RunDir(out)
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
    models = Models(configs[0], rd, dist, device)
    try:
        with _signals():
            _prepare_state(rd, raw, resume, force, dist)
            if configs[0].prompts_per_iteration > len(all_prompts):
                warn(f"{configs[0].prompts} has {len(all_prompts)} prompts, fewer than prompts_per_iteration="
                     f"{configs[0].prompts_per_iteration}: every iteration uses all of them")
            trained = _iterations(configs, rd, dist, models, all_prompts)
    except KeyboardInterrupt as e:
        signum = e.args[0] if e.args and isinstance(e.args[0], int) else signal.SIGINT
        where = rd.state.get("current", "a stage boundary")
        raise Interrupted(f"interrupted by {signal.Signals(signum).name} during {where}; continue with: "
                          f"metareward run --output-dir {rd.path} --resume", signum) from None
    finally:
        models.drop()
        if dist.is_main:
            rd.unlock()
    if not any(trained):
        raise RunFailed(f"no iteration trained: every iteration ended without preference pairs (see the warnings "
                        f"and {rd.path}/iter_*/summary.json)")
    return rd.path


def _prepare_state(rd: RunDir, raw: dict, resume: bool, force: bool, dist: Dist) -> None:
    if dist.is_main:
        if resume:
            rd.load_state()
            rd.clean_temporaries()
        else:
            if force:
                rd.clear()
            saved = {k: v for k, v in raw.items() if k != "output_dir"}  # a run directory may be moved
            with atomic_write(rd.path / "config.yaml") as f:
                f.write(dump_yaml(saved))
            rd.save_state()
    rd.state = dist.broadcast_object(rd.state)


def _iterations(configs: list[RunConfig], rd: RunDir, dist: Dist, models: Models, all_prompts: list) -> list[bool]:
    trained = []
    for t in range(1, configs[0].iterations + 1):
        cfg = configs[t - 1]
        ctx = Context(cfg, t, rd.iteration(t), dist, iteration_prompts(all_prompts, cfg, t), models.get)
        for stage in STAGES:
            key = f"iter_{t}/{stage.name}"
            ctx.stages = {k.split("/")[1]: v for k, v in rd.state["stages"].items() if k.startswith(f"iter_{t}/")}
            if rd.done(key):
                continue
            rd.begin(key, save=dist.is_main)
            ctx.reads = stage.reads
            t0 = time.perf_counter()
            try:
                stats = stage.fn(ctx)
            except TrainingFailed as e:
                models.drop()  # the weights in memory are neither M_(t-1) nor M_t
                rd.fail(key, str(e), save=dist.is_main)
                raise
            if stage.name == "train":
                models.trained(t)
            stats.setdefault("seconds", time.perf_counter() - t0)
            rd.mark(key, json.loads(json.dumps(stats)), save=dist.is_main)  # every process keeps the state
            dist.barrier()
        trained.append(rd.state["stages"][f"iter_{t}/train"].get("trained", True))
        if dist.is_main:
            print(render(json.loads((ctx.dir / "summary.json").read_text())), file=sys.stderr)
    return trained
