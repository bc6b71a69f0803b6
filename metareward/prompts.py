"""Prompts, whatever file they come from: the project's JSONL (`prompt`: a string or chat messages, optional
`id` / `prompt_id` / `key`), AlpacaEval (`instruction`), Arena-Hard (`question_id` + `turns` of objects),
MT-Bench (`question_id` + `turns` of strings), IFEval (`key` + `prompt`). One model for all of them: the
conversation before the first turn to answer, the user turns to answer one after the other, and where the
prompt came from (file:line, for messages)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .errors import UserError
from .io import read_jsonl


@dataclass(frozen=True)
class Prompt:
    id: str  # the row's id; rows without one: their 0-based index in the file (AlpacaEval's convention)
    turns: tuple[str, ...]  # user turns; each is answered seeing the model's own earlier answers (MT-Bench: 2)
    where: str  # file:line
    history: tuple[dict, ...] = ()  # messages before the first turn (a system prompt, earlier exchanges)
    raw: object = None  # the row's prompt as given (a string or messages), written back into artifacts
    meta: dict = field(default_factory=dict, compare=False)  # "format" and the row's other fields

    @property
    def question(self) -> str:  # what a judge sees as the question: the first turn to answer
        return self.turns[0]

    def messages(self, answers: Sequence[str] = ()) -> list[dict]:
        """The chat messages for answering turn len(answers) + 1, the earlier answers in context."""
        if len(answers) >= len(self.turns):
            raise ValueError(f"prompt {self.id} has {len(self.turns)} turns, {len(answers)} already answered")
        out = list(self.history)
        for q, a in zip(self.turns, answers):
            out += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return out + [{"role": "user", "content": self.turns[len(answers)]}]


def question_of(raw) -> str:
    """The question a judge sees for a prompt as a prompts file gives it: the text, or the last user turn."""
    if isinstance(raw, str):
        return raw
    return next(m["content"] for m in reversed(raw) if m["role"] == "user")


def read_rows(path) -> list[tuple[str, dict]]:
    # [(where, object)]: the lines of a JSONL file, or the items of a JSON list (AlpacaEval's own files)
    path = Path(path)
    if path.suffix != ".json":
        return [(f"{path}:{i}", obj) for i, obj in read_jsonl(path)]
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not isinstance(data, list) or not data or not all(isinstance(o, dict) for o in data):
        raise UserError(f"{path}: expected a non-empty JSON list of objects")
    return [(f"{path} item {k}", obj) for k, obj in enumerate(data)]


_KIND = {str: "a string", int: "an integer", list: "a list", dict: "an object", (str, int): "a string or integer"}


def get(where: str, row: dict, key: str, kind=str):
    if key not in row:
        raise UserError(f"{where}: missing field {key!r}")
    v = row[key]
    if not isinstance(v, kind) or isinstance(v, bool):
        raise UserError(f"{where}: field {key!r} must be {_KIND[kind]}, got {type(v).__name__}")
    return v


def turn_text(where: str, turn) -> str:
    # MT-Bench turns are strings; Arena-Hard turns are {"content": ..., ...}
    if isinstance(turn, dict):
        return get(where, turn, "content")
    if not isinstance(turn, str):
        raise UserError(f"{where}: a turn must be a string or an object with 'content', got {type(turn).__name__}")
    return turn


def _meta(fmt: str, row: dict, *used: str) -> dict:
    return {"format": fmt} | {k: v for k, v in row.items() if k not in used}


def _nonempty(where: str, text: str) -> str:
    if not text.strip():
        raise UserError(f"{where}: empty prompt")
    return text


def _alpaca(k, where, row) -> tuple[str | None, Prompt]:
    text = _nonempty(where, get(where, row, "instruction"))
    return None, Prompt(str(k), (text,), where, raw=text, meta=_meta("alpaca_eval", row, "instruction"))


def _questions(fmt):
    def read(k, where, row):
        qid = get(where, row, "question_id", (str, int))
        turns = get(where, row, "turns", list)
        if not turns:
            raise UserError(f"{where}: 'turns' is empty")
        texts = tuple(_nonempty(where, turn_text(where, t)) for t in turns)
        return str(qid), Prompt(str(qid), texts, where, raw=list(texts), meta=_meta(fmt, row, "turns"))
    return read


_ID_KEYS = ("id", "prompt_id", "key")  # the project's prompts, other tools' prompt files, IFEval


def _plain(k, where, row):
    key = next((key for key in _ID_KEYS if key in row), None)
    given = None if key is None else str(get(where, row, key, (str, int)))
    p = row.get("prompt")
    if p is None:
        raise UserError(f"{where}: missing field 'prompt'")
    meta = _meta("prompts", row, "prompt")
    if isinstance(p, str):
        return given, Prompt(given or str(k), (_nonempty(where, p),), where, raw=p, meta=meta)
    ok = isinstance(p, list) and p and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                           and isinstance(m.get("content"), str) for m in p)
    if not ok:
        raise UserError(f"{where}: prompt must be a non-empty string or a list of {{role, content}} messages")
    if p[-1]["role"] != "user" or not p[-1]["content"].strip():
        raise UserError(f"{where}: the messages must end with a non-empty user turn")
    history = tuple({"role": m["role"], "content": m["content"]} for m in p[:-1])
    return given, Prompt(given or str(k), (p[-1]["content"],), where, history=history, raw=p, meta=meta)


READERS = {"alpaca_eval": _alpaca, "arena_hard": _questions("arena_hard"), "mt_bench": _questions("mt_bench"),
           "prompts": _plain}


def detect_format(row: dict) -> str | None:
    """From the fields of a file's first row: question_id + turns → arena_hard when the turns are objects,
    mt_bench when they are strings; instruction → alpaca_eval; prompt → prompts; else None."""
    if "question_id" in row and "turns" in row:
        turns = row["turns"]
        return "arena_hard" if isinstance(turns, list) and turns and isinstance(turns[0], dict) else "mt_bench"
    if "instruction" in row:
        return "alpaca_eval"
    return "prompts" if "prompt" in row else None


def read_prompts(path, format: str | None = None) -> list[Prompt]:
    rows = read_rows(path)
    if format is None:
        format = detect_format(rows[0][1])
        if format is None:
            raise UserError(f"{rows[0][0]}: cannot tell the prompt format from fields {sorted(rows[0][1])}: "
                            "expected 'instruction', 'question_id' + 'turns', or 'prompt'")
    if format not in READERS:
        raise UserError(f"unknown prompt format {format!r}: expected one of {', '.join(READERS)}")
    prompts, seen = [], {}
    for k, (where, row) in enumerate(rows):
        given, p = READERS[format](k, where, row)
        if p.id in seen:
            first, had_id = seen[p.id]
            if given is None or not had_id:  # an index standing in for a missing id met a real one
                raise UserError(f"{where}: prompt id {p.id!r} is used twice ({first} and here), once as a row's "
                                "index because that row has no id: give every row an id, or none")
            raise UserError(f"{where}: duplicate prompt id {p.id!r} (first at {first})")
        seen[p.id] = (where, given is not None)
        prompts.append(p)
    return prompts
