"""The pairwise judge prompt (recipe/templates/pairwise.txt, or a user's file with the same placeholders): fill
it in, and read the verdict back."""
from __future__ import annotations

import os
import re

from ..recipe.templates import Template, load_template

# A line "Winner: A" / "Winner: B" / "Winner: tie", tolerating markdown around it ("**Winner:** A") and
# "Response A"; the letter must stand alone, so "Winner: Alice" is not a verdict.
_VERDICT = re.compile(r"^[\s*_#>`-]*winner\s*[*_]*\s*[:：]\s*[*_`\"'(\[]*\s*(?:response\s+)?(a|b|tie)\b",
                      re.IGNORECASE | re.MULTILINE)


def load_pairwise_template(path: str | os.PathLike | None = None) -> Template:
    """The pairwise judge prompt from `path` (placeholders checked), or the package default."""
    return load_template("pairwise", path)


def pairwise_prompt(question: str, response_a: str, response_b: str, template: Template | None = None) -> str:
    return (template or load_pairwise_template()).render(question=question, response_a=response_a,
                                                         response_b=response_b)


def parse_pairwise_verdict(text: str) -> str | None:
    """"A", "B" or "tie" from the last verdict line of the judge's reply; None when there is none."""
    found = _VERDICT.findall(text)
    if not found:
        return None
    v = found[-1].lower()
    return "tie" if v == "tie" else v.upper()
