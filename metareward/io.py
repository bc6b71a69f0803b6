"""Files in and out. Readers name file:line in their errors; writers write under a temporary name and
rename when complete, so a reader (or a resumed run) never sees half a file."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .errors import UserError


def read_jsonl(path: str | os.PathLike, required: Iterable[str] = ()) -> list[tuple[int, dict]]:
    """[(line number, object)] for every non-blank line; each line must be a JSON object holding `required`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    rows = []
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark some editors write is not data
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
        for key in required:
            if key not in obj:
                raise UserError(f"{path}:{i}: missing field {key!r}")
        rows.append((i, obj))
    if not rows:
        raise UserError(f"{path} is empty")
    return rows


@functools.lru_cache(maxsize=1)
def umask() -> int:
    # os.umask can only be read by setting it; done once, at the first write, before any thread writes
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_mode(path: str | os.PathLike, directory: bool = False) -> None:
    """The permissions a plain open() / mkdir() would have given: mkstemp and mkdtemp create 0600 / 0700,
    which would keep a report or a checkpoint from the people it is shared with."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator:
    """Open a temporary file beside `path`; on success fsync and rename it over `path`, on error delete it.
    A full or read-only disk is a UserError naming the file, and leaves nothing behind."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
            raise UserError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def dumps(obj, indent: int | None = None) -> str:
    """JSON that other tools can read: NaN and Infinity are not JSON, so a non-finite number is a bug to
    report, not a value to write."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, indent=indent)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    with atomic_write(path) as f:
        for r in rows:
            f.write(dumps(r) + "\n")


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_write(path) as f:
        f.write(dumps(obj, indent=2))
        f.write("\n")
