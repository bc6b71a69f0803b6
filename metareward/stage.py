"""What every stage of a run gets (recipe and evaluation stages alike): its iteration's settings, folder and
prompts, the model it declared it reads, per-request seeds, and the processes to split its requests over."""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

from .io import read_jsonl, write_jsonl
from .trainer.distributed import Dist

# Which weights a stage reads: M_(t-1), the model iteration t starts from ("input"), or M_t, the model its
# training produced ("output"); None for stages that only read files.
Reads = Literal["input", "output"] | None


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable[["Context"], dict]  # -> statistics, recorded in state.json
    reads: Reads


@dataclass
class Context:
    cfg: object  # this iteration's RunConfig
    t: int  # 1-based iteration
    dir: Path  # <run>/iter_<t>/
    dist: Dist
    prompts: list  # this iteration's prompts (metareward.prompts.Prompt)
    load: Callable[[int], tuple]  # M_k -> (model, tokenizer, engine); the run keeps one model in memory
    stages: dict = field(default_factory=dict)  # statistics of this iteration's stages recorded so far
    reads: Reads = None

    @property
    def run_dir(self) -> Path:
        return self.dir.parent

    def model(self) -> tuple:
        """(model, tokenizer, engine) of the weights this stage declared: M_(t-1) or M_t."""
        if self.reads is None:
            raise RuntimeError("this stage declared that it reads no model")
        return self.load(self.t - 1 if self.reads == "input" else self.t)

    def rows(self, name: str, cls=None) -> list:
        """An artifact of this iteration: dicts, or `cls` objects (a row type whose fields are the keys)."""
        path = self.dir / name
        rows = [r for _, r in read_jsonl(path)] if path.stat().st_size else []
        return [cls(**r) for r in rows] if cls else rows

    def write(self, name: str, rows: Sequence) -> None:
        """Rank 0 writes the artifact atomically; the stage is recorded only after it is complete. Every process
        calls this, and returns once the file is there (a stage may read what it wrote: the win rate its answers)."""
        if self.dist.is_main:
            write_jsonl(self.dir / name, (r if isinstance(r, dict) else dataclasses.asdict(r) for r in rows))
        self.dist.barrier()

    def seed(self, *key) -> int:
        return seed_of(self.cfg.seed, self.t, *key)


def seed_of(*parts) -> int:
    """A 63-bit seed from (run seed, iteration, stage, request key...): the same request gets the same seed
    in every run, process and batch, which makes resumed and multi-process runs reproduce each other."""
    h = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def split(dist: Dist, items: Sequence, fn: Callable[[list], list]) -> list:
    """fn over this process's share of items (every world_size-th), results back in the items' order on
    every process."""
    mine = fn(list(items[dist.rank::dist.world_size]))
    parts = dist.all_gather_object(mine)
    out = [None] * len(items)
    for r, part in enumerate(parts):
        out[r::dist.world_size] = part
    return out
