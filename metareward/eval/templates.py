"""The pairwise judge prompt (templates/pairwise.txt, or a user's file with the same placeholders): fill it in,
and read the verdict back. Rendering is recipe.templates.render: one pass, only the named placeholders."""
from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path

from ..errors import UserError
from ..recipe.templates import render

PAIRWISE_FIELDS = ("question", "response_a", "response_b")
DEFAULT_PAIRWISE = Path(__file__).with_name("templates") / "pairwise.txt"
# A line "Winner: A" / "Winner: B" / "Winner: tie", tolerating markdown around it ("**Winner:** A") and
# "Response A"; the letter must stand alone, so "Winner: Alice" is not a verdict.
_VERDICT = re.compile(r"^[\s*_#>`-]*winner\s*[*_]*\s*[:：]\s*[*_`\"'(\[]*\s*(?:response\s+)?(a|b|tie)\b",
                      re.IGNORECASE | re.MULTILINE)


def load_pairwise_template(path: str | os.PathLike | None = None) -> str:
    """The template text from `path`, or the package default; trailing whitespace dropped."""
    if path is None:
        return _default()
    file = Path(path)
    if not file.is_file():
        raise UserError(f"pairwise template not found: {file}")
    try:
        text = file.read_text(encoding="utf-8-sig").rstrip()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read pairwise template {file}: {e}") from None
    missing = ["{" + name + "}" for name in PAIRWISE_FIELDS if "{" + name + "}" not in text]
    if missing:
        raise UserError(f"{file}: the pairwise template is missing placeholder(s) {', '.join(missing)}")
    return text


@cache
def _default() -> str:
    return DEFAULT_PAIRWISE.read_text(encoding="utf-8").rstrip()


def pairwise_prompt(question: str, response_a: str, response_b: str, template: str | None = None) -> str:
    return render(_default() if template is None else template, PAIRWISE_FIELDS,
                  {"question": question, "response_a": response_a, "response_b": response_b})


def parse_pairwise_verdict(text: str) -> str | None:
    """"A", "B" or "tie" from the last verdict line of the judge's reply; None when there is none."""
    found = _VERDICT.findall(text)
    if not found:
        return None
    v = found[-1].lower()
    return "tie" if v == "tie" else v.upper()
