"""Prompt templates of the judge and the meta-judge: plain text files with named placeholders.

The defaults live in judging/templates/<role>.txt; a user replaces one by passing the path of their own file.
A template must contain every placeholder of its role (ROLES). The rubric is written out in full in both
default files (no include mechanism), so that each file is exactly the text its role sees; whoever edits
the rubric edits both.

A template is one user message, or a conversation (a system prompt, few-shot examples) written as sections
that each start with a line `===== system`, `===== user` or `===== assistant`; the last section is the user
message that holds the placeholders' values, and the judge answers after it. Small models (SmolLM2-135M)
write a `Score:` line only when shown a few examples as earlier turns.

Rendering replaces only `{name}` for the role's own names, in one pass, with a function as replacement:
text the values bring in (a question with `{response}` or `\\1` in it, code with braces) is never read
again as a template, and every other brace in the template stays as it is. str.format would do neither.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

ROLES: dict[str, tuple[str, ...]] = {
    "judge": ("question", "response"),
    "meta_judge": ("question", "response", "judgment_a", "judgment_b"),
    "pairwise": ("question", "response_a", "response_b"),  # evaluation's head-to-head judge
}
DEFAULT_DIR = Path(__file__).with_name("templates")


SECTION = re.compile(r"^===== (system|user|assistant)[ \t]*$", re.M)


@dataclass(frozen=True)
class Template:
    role: str
    text: str
    path: str  # where it came from, for messages

    def render(self, **values: str) -> str | list[dict]:
        """The prompt: a string (a one-message template: the user message, TRL's standard form) or the list
        of messages of a conversation template."""
        turns = sections(self.text)
        if turns is None:
            return render(self.text, ROLES[self.role], values)
        return [{"role": r, "content": render(c, ROLES[self.role], values)} for r, c in turns]


def sections(text: str) -> list[tuple[str, str]] | None:
    """(role, content) of each section of a conversation template; None for a one-message template."""
    marks = list(SECTION.finditer(text))
    if not marks:
        return None
    if text[:marks[0].start()].strip():
        raise ValueError("text before the first '===== <role>' line")
    out = []
    for m, nxt in zip(marks, marks[1:] + [None]):
        content = text[m.end():nxt.start() if nxt else len(text)].strip("\n")
        if not content.strip():
            raise ValueError(f"the '===== {m.group(1)}' section at line {text.count(chr(10), 0, m.start()) + 1} "
                             f"is empty")
        out.append((m.group(1), content))
    roles = [r for r, _ in out]
    if "system" in roles[1:]:
        raise ValueError("a system section may only come first")
    if roles[-1] != "user":
        raise ValueError("the last section must be '===== user' (the judge answers after it)")
    return out


def default_path(role: str) -> Path:
    _check_role(role)
    return DEFAULT_DIR / f"{role}.txt"


def load_template(role: str, path: str | os.PathLike | None = None) -> Template:
    """The role's template from `path`, or the package default when path is None. Trailing whitespace at
    the end of the file is dropped (editors add a newline; the prompt should not end with one)."""
    _check_role(role)
    file = Path(path) if path is not None else default_path(role)
    if not file.is_file():
        raise UserError(f"{role} template not found: {file}")
    try:
        text = file.read_text(encoding="utf-8-sig").rstrip()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {role} template {file}: {e}") from None
    try:
        turns = sections(text)
    except ValueError as e:
        raise UserError(f"{file}: {e}") from None
    last = turns[-1][1] if turns else text  # the placeholders belong in the message the judge answers
    missing = [name for name in ROLES[role] if "{" + name + "}" not in last]
    if missing:
        names = ", ".join("{" + name + "}" for name in missing)
        raise UserError(f"{file}: the {role} template is missing placeholder(s) {names}"
                        + (" in its last (user) section" if turns else ""))
    return Template(role, text, str(file))


def render(text: str, names: tuple[str, ...] | list[str], values: dict[str, str]) -> str:
    if set(values) != set(names):
        raise ValueError(f"render needs exactly the values {sorted(names)}, got {sorted(values)}")
    for name, value in values.items():
        if not isinstance(value, str):
            raise TypeError(f"value of {{{name}}} must be a str, got {type(value).__name__}")
    pattern = re.compile(r"\{(" + "|".join(re.escape(n) for n in names) + r")\}")
    return pattern.sub(lambda m: values[m.group(1)], text)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown template role {role!r}: choose one of {', '.join(ROLES)}")
