"""A run's output directory: a lock that keeps a second run out, state.json recording the stages done (with
their statistics), and the per-iteration folders. Artifacts are written atomically before their stage is
recorded, so after a kill -9 a stage is either recorded with its complete artifact or redone."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import UserError
from ..io import write_json

STATE = "state.json"
LOCK = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.state = {"completed": [], "stages": {}}

    def prepare(self, resume: bool, force: bool) -> None:
        """Check what is there: another run's state needs --resume or --force; --force clears the folder."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise UserError(f"output {p} exists and is not a directory")
        has_state = (p / STATE).is_file()
        if resume:
            if not has_state:
                raise UserError(f"nothing to resume in {p}: no {STATE}")
        elif p.is_dir() and any(x.name != LOCK for x in p.iterdir()):
            if not force:
                what = "holds another run's state" if has_state else "is not empty"
                raise UserError(f"output directory {p} {what}: use --resume to continue it or --force to replace it")

    def lock(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        f = self.path / LOCK
        for _ in range(2):
            try:
                fd = os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(f.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _alive(pid):
                    raise UserError(f"another run (pid {pid}) is using {self.path}") from None
                f.unlink(missing_ok=True)  # left behind by a killed run
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            return
        raise UserError(f"cannot take the lock {f}")

    def unlock(self) -> None:
        (self.path / LOCK).unlink(missing_ok=True)

    def clear(self) -> None:
        for x in self.path.iterdir():
            if x.name != LOCK:
                shutil.rmtree(x) if x.is_dir() and not x.is_symlink() else x.unlink()

    def clean_temporaries(self) -> None:
        """Remove what a killed run was writing (atomic writes leave only these hidden temporaries)."""
        for x in list(self.path.rglob(".*.tmp*")):
            shutil.rmtree(x, ignore_errors=True) if x.is_dir() else x.unlink(missing_ok=True)

    def load_state(self) -> None:
        try:
            self.state = json.loads((self.path / STATE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read {self.path / STATE}: {e}") from None

    def save_state(self) -> None:
        write_json(self.path / STATE, self.state)

    def done(self, stage: str) -> bool:
        return stage in self.state["completed"]

    def mark(self, stage: str, stats: dict, save: bool = True) -> None:
        self.state["completed"].append(stage)
        self.state["stages"][stage] = stats
        if save:
            self.save_state()

    def iteration(self, t: int) -> Path:
        d = self.path / f"iter_{t}"
        d.mkdir(parents=True, exist_ok=True)
        return d
