"""A run's output directory: a lock that keeps a second run out, state.json (the journal: the stages done with
their statistics, the stage in progress, a failure), and the per-iteration folders. Artifacts are written
atomically before their stage is recorded, so after a kill -9 a stage is either recorded with its complete
artifact or redone. Nothing in it names the directory itself: a run directory can be moved or copied."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path

from .errors import UserError
from .io import write_json

STATE = "state.json"
LOCK = ".lock"


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.state = {"completed": [], "stages": {}}
        self._lock_fd: int | None = None

    def prepare(self, resume: bool, force: bool) -> None:
        """Check what is there: another run's state needs --resume or --force."""
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
        """An advisory lock (flock) held while the run lives: the kernel drops it when the process dies, so a
        killed run leaves no stale lock to guess about, and two runs can never both hold it."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the output directory {self.path}: {e.strerror or e}") from None
        f = self.path / LOCK
        while True:
            try:
                fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o644)
            except OSError as e:
                raise UserError(f"cannot write in the output directory {self.path}: {e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                raise UserError(f"another run (pid {pid or '?'}) is using {self.path}") from None
            # the holder we waited for may have removed the file: then this lock is on an unlinked inode
            try:
                same = os.stat(f).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.path / LOCK).unlink()
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

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
            state = json.loads((self.path / STATE).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read {self.path / STATE}: {e}") from None
        if not (isinstance(state, dict) and isinstance(state.get("completed"), list)
                and isinstance(state.get("stages"), dict)):
            raise UserError(f"{self.path / STATE} is not a run's state (no completed/stages)")
        self.state = state

    def save_state(self) -> None:
        write_json(self.path / STATE, self.state)

    def done(self, stage: str) -> bool:
        return stage in self.state["completed"]

    def begin(self, stage: str, save: bool = True) -> None:
        self.state["current"] = stage
        self.state.pop("failed", None)
        if save:
            self.save_state()

    def mark(self, stage: str, stats: dict, save: bool = True) -> None:
        self.state["completed"].append(stage)
        self.state["stages"][stage] = stats
        self.state.pop("current", None)
        if save:
            self.save_state()

    def fail(self, stage: str, message: str, save: bool = True) -> None:
        self.state["failed"] = {"stage": stage, "error": message}
        if save:
            self.save_state()

    def iteration(self, t: int) -> Path:
        d = self.path / f"iter_{t}"
        d.mkdir(parents=True, exist_ok=True)
        return d
