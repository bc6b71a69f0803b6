"""The project's prompt files: JSONL, one object per line with `prompt` (a string, or a list of chat
messages) and an optional `id` / `prompt_id`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .io import read_jsonl


@dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str | list  # user text, or chat messages [{role, content}]
    where: str  # file:line, for error messages

    @property
    def messages(self) -> list[dict]:
        return [{"role": "user", "content": self.prompt}] if isinstance(self.prompt, str) else self.prompt

    @property
    def text(self) -> str:  # the last user turn, for display and for judge prompts
        if isinstance(self.prompt, str):
            return self.prompt
        return next(m["content"] for m in reversed(self.prompt) if m["role"] == "user")


def read_prompts(path: str | Path) -> list[Prompt]:
    out, seen = [], set()
    for line, row in read_jsonl(path, required=("prompt",)):
        where = f"{path}:{line}"
        p = row["prompt"]
        if isinstance(p, str):
            if not p.strip():
                raise UserError(f"{where}: empty prompt")
        elif isinstance(p, list) and p and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                               and isinstance(m.get("content"), str) for m in p):
            if not any(m["role"] == "user" and m["content"].strip() for m in p):
                raise UserError(f"{where}: the messages hold no non-empty user turn")
        else:
            raise UserError(f"{where}: prompt must be a non-empty string or a list of {{role, content}} messages")
        pid = str(row.get("id", row.get("prompt_id", len(out))))
        if pid in seen:
            raise UserError(f"{where}: duplicate prompt id {pid!r}")
        seen.add(pid)
        out.append(Prompt(pid, p, where))
    return out
