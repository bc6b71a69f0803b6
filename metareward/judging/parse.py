"""From a judge's text (or its next-token log-probs) to a value: the pointwise score, the meta-judge's winner,
the pairwise judge's verdict; and a response's mean score.

Score grammar (`parse` mode), case-insensitive in ASCII only (so "ſcore", with U+017F, is not "score"). A
marker is the word `score` (whole word, so "Total score:" counts and "Scores:" does not), optional markdown
`*` `_`, then `:`. The LAST marker in the text decides.
What follows it must be, up to the end of its line:

    [markdown] NUMBER [ "/5" | "out of 5" ] [ "point" | "points" ] [markdown or "." or "!"]

NUMBER is ASCII digits with an optional "+" and decimal part ("3", "3.5", "+2"; not ".5", "4,5", "-0") and
must lie in [0, 5]. Accepted: "Score: 4", "score: 3.5", "**Score:** 4", "**Score**: 4", "Score: **4**",
"Score: 4/5", "Score: 4 out of 5", "Score: 4 points.", "Final score: 2", "Score:\n4".
Rejected (None): "Score: 6", "Score: -1", "Score: 4/10", "Score: 4,5", "Score: <points>", "Score: 4 because
...", and a text whose last marker is followed by anything else: a judgment that ends in a malformed
verdict is invalid, not silently replaced by some earlier "Score:" in its reasoning.

Verdict grammar, same idea: the last `winner:` marker, then `[markdown] [ "[" ] "Judgment" (or "Judgement")
A|B [ "]" ] [markdown or "." or "!"]` to the end of its line. "first" means the judgment shown first (A)
won. The template's own "Winner: [Judgment A | Judgment B]"-style echo is rejected.
"""
from __future__ import annotations

import math
import re
from typing import Mapping, Sequence

SCORE_MIN, SCORE_MAX = 0.0, 5.0
# `expected` mode: what the caller appends to a finished judgment / meta-judgment before reading the
# next-token distribution over the candidates.
SCORE_PREFIX = "Score: "
SCORE_CANDIDATES = ("0", "1", "2", "3", "4", "5")
WINNER_PREFIX = "Winner: Judgment "
WINNER_CANDIDATES = ("A", "B")

# re.ASCII: with Unicode case folding, IGNORECASE would match "ſ" (U+017F) to "s" and "K" (U+212A) to "k"
_FLAGS = re.IGNORECASE | re.MULTILINE | re.ASCII
# Letter/digit lookarounds rather than \b: markdown's `_` is a word character ("__Score:__ 4").
_SCORE_MARKER = re.compile(r"(?<![a-z0-9])score(?![a-z0-9])[ \t*_]*:", _FLAGS)
_SCORE_VALUE = re.compile(
    r"[\s*_`]*(?P<x>\+?[0-9]+(?:\.[0-9]+)?)"
    r"(?:[ \t]*(?:/|out[ \t]+of)[ \t]*5(?:\.0+)?)?"
    r"(?:[ \t]*points?)?"
    r"[ \t*_`.!\r]*$", _FLAGS)
_WINNER_MARKER = re.compile(r"(?<![a-z0-9])winner(?![a-z0-9])[ \t*_]*:", _FLAGS)
_WINNER_VALUE = re.compile(r"[\s*_`]*\[?[ \t]*judge?ment[ \t]+(?P<w>[AB])[ \t]*\]?[ \t*_`.!\r]*$", _FLAGS)


def _last_value(marker: re.Pattern, value: re.Pattern, text: str) -> re.Match | None:
    last = None
    for last in marker.finditer(text):
        pass
    return None if last is None else value.match(text, last.end())


def parse_score(text: str) -> float | None:
    m = _last_value(_SCORE_MARKER, _SCORE_VALUE, text)
    if m is None:
        return None
    x = float(m.group("x"))
    return x if SCORE_MIN <= x <= SCORE_MAX else None


def parse_winner(text: str) -> str | None:
    m = _last_value(_WINNER_MARKER, _WINNER_VALUE, text)
    if m is None:
        return None
    return "first" if m.group("w").upper() == "A" else "second"


# A line "Winner: A" / "Winner: B" / "Winner: tie", tolerating markdown around it ("**Winner:** A") and
# "Response A"; the letter must stand alone, so "Winner: Alice" is not a verdict.
_VERDICT = re.compile(r"^[\s*_#>`-]*winner\s*[*_]*\s*[:：]\s*[*_`\"'(\[]*\s*(?:response\s+)?(a|b|tie)\b",
                      re.IGNORECASE | re.MULTILINE | re.ASCII)


def parse_pairwise(text: str) -> str | None:
    """"A", "B" or "tie" from the last verdict line of the pairwise judge's reply; None when there is none."""
    found = _VERDICT.findall(text)
    if not found:
        return None
    v = found[-1].lower()
    return "tie" if v == "tie" else v.upper()


def expected_value(logprobs: Mapping[int | str, float] | Sequence[float]) -> float | None:
    """Σ p·value over the candidate scores, p = softmax of their log-probs (renormalized over the candidates
    only). A mapping goes from a score (int, or its text "0".."5") to its log-prob; a sequence is indexed by
    the score. None when no candidate has a finite log-prob (all masked), or one is NaN or +inf."""
    items = logprobs.items() if isinstance(logprobs, Mapping) else enumerate(logprobs)
    pairs = [(float(v), float(lp)) for v, lp in items]
    finite = [(v, lp) for v, lp in pairs if math.isfinite(lp)]
    if any(math.isnan(lp) or lp == math.inf for _, lp in pairs) or not finite:
        return None
    top = max(lp for _, lp in finite)
    weights = [(v, math.exp(lp - top)) for v, lp in finite]  # shift by the max: no overflow
    return math.fsum(v * w for v, w in weights) / math.fsum(w for _, w in weights)


def expected_winner(logprob_a: float, logprob_b: float) -> str | None:
    """The more probable of "A" / "B" after WINNER_PREFIX; a tie or a NaN gives None."""
    if math.isnan(logprob_a) or math.isnan(logprob_b) or logprob_a == logprob_b:
        return None
    return "first" if logprob_a > logprob_b else "second"


def mean_score(scores: Sequence[float | None]) -> float | None:
    """A response's score: the mean of its valid judgment scores; None (the response is dropped) without one."""
    valid = [s for s in scores if s is not None]
    return math.fsum(valid) / len(valid) if valid else None
