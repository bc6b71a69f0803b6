"""Preference pairs from one prompt: the actor pair (judge scores + length control) and the judge pair
(meta-judge Elo ratings). Each function returns (pair, None) or (None, reason); the reasons are short
stable strings, counted in the run summary:

  actor: "too_few_scored" (< 2 responses with a score), "tie" (S_max == S_min), "same_response"
  judge: "too_few_rated" (< 2 rated judgments), "equal_elo", "same_score", "too_long" (checked in this order)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import UserError

DEFAULT_RHO = 0.0  # length control off: chosen = a top-scored response, rejected = a bottom-scored one
DEFAULT_DROP_SAME_SCORE = True
DEFAULT_MAX_JUDGMENT_CHARS: int | None = None  # no limit
# Scores are means of a few numbers in [0, 5]: two genuinely different ones differ by far more than this;
# the tolerance only absorbs rounding in the tier thresholds (e.g. 0.5·a + 0.5·b vs. a response at the midpoint).
SCORE_TOL = 1e-9
# Elo ratings come out of Newton's method converged to ~1e-10; closer than this they are the same rating.
ELO_TOL = 1e-6

ACTOR_DROP_REASONS = ("too_few_scored", "tie", "same_response")
JUDGE_DROP_REASONS = ("too_few_rated", "equal_elo", "same_score", "too_long")


@dataclass(frozen=True)
class ActorPair:
    chosen_index: int
    rejected_index: int
    chosen_score: float
    rejected_score: float
    chosen_tokens: int
    rejected_tokens: int


@dataclass(frozen=True)
class JudgePair:
    chosen_index: int
    rejected_index: int
    chosen_rating: float
    rejected_rating: float
    chosen_score: float | None
    rejected_score: float | None
    chosen_chars: int
    rejected_chars: int


def actor_pair(scores: Sequence[float | None], tokens: Sequence[int],
               rho: float = DEFAULT_RHO) -> tuple[ActorPair | None, str | None]:
    """Length-controlled pair over one prompt's responses (scores: None = dropped; tokens: response lengths).
    Top tier: score >= (1-rho)·S_max + rho·S_min, chosen = its shortest. Bottom tier: score <=
    (1-rho)·S_min + rho·S_max, rejected = its longest. Length ties go to the lower index.

    rho = 0 picks exactly among the max- and min-scored responses (the thresholds are then S_max and S_min
    exactly in floating point). For rho >= 0.5 the tiers overlap: chosen may score below rejected, and they
    may be the same response ("same_response"). Useful values are well below 0.5.
    """
    if len(scores) != len(tokens):
        raise ValueError(f"{len(scores)} scores but {len(tokens)} lengths")
    if not 0.0 <= rho <= 1.0:
        raise UserError(f"length-control rho must be in [0, 1], got {rho}")
    scored = [i for i, s in enumerate(scores) if s is not None]
    if len(scored) < 2:
        return None, "too_few_scored"
    s_max = max(scores[i] for i in scored)
    s_min = min(scores[i] for i in scored)
    if s_max - s_min <= SCORE_TOL:
        return None, "tie"
    top = (1 - rho) * s_max + rho * s_min
    bottom = (1 - rho) * s_min + rho * s_max
    # min/max return the first of equal keys, and `scored` is in index order: ties go to the lower index.
    chosen = min((i for i in scored if scores[i] >= top - SCORE_TOL), key=lambda i: tokens[i])
    rejected = max((i for i in scored if scores[i] <= bottom + SCORE_TOL), key=lambda i: tokens[i])
    if chosen == rejected:
        return None, "same_response"
    return ActorPair(chosen, rejected, scores[chosen], scores[rejected], tokens[chosen], tokens[rejected]), None


def judge_pair(ratings: Sequence[float | None], scores: Sequence[float | None], chars: Sequence[int],
               drop_same_score: bool = DEFAULT_DROP_SAME_SCORE,
               max_chars: int | None = DEFAULT_MAX_JUDGMENT_CHARS) -> tuple[JudgePair | None, str | None]:
    """Pair over the judgments of one response (ratings: Elo, None = took no part; scores: each judgment's
    score; chars: judgment lengths in characters). Chosen = highest rating, rejected = lowest; among ratings
    within ELO_TOL/2 of the extreme, the lower index. Drop rules in order: ratings equal within ELO_TOL;
    both judgments give the same score (when drop_same_score); the chosen judgment has more than
    max_chars characters (when max_chars is not None)."""
    if not len(ratings) == len(scores) == len(chars):
        raise ValueError(f"lengths differ: {len(ratings)} ratings, {len(scores)} scores, {len(chars)} lengths")
    if max_chars is not None and max_chars < 1:
        raise UserError(f"the maximum judgment length must be at least 1 character, got {max_chars}")
    rated = [i for i, r in enumerate(ratings) if r is not None]
    if len(rated) < 2:
        return None, "too_few_rated"
    hi = max(ratings[i] for i in rated)
    lo = min(ratings[i] for i in rated)
    if hi - lo <= ELO_TOL:
        return None, "equal_elo"
    # Half-width windows: hi - lo > ELO_TOL keeps them disjoint, so chosen != rejected.
    chosen = next(i for i in rated if ratings[i] >= hi - ELO_TOL / 2)
    rejected = next(i for i in rated if ratings[i] <= lo + ELO_TOL / 2)
    a, b = scores[chosen], scores[rejected]
    if drop_same_score and a is not None and b is not None and abs(a - b) <= SCORE_TOL:
        return None, "same_score"
    if max_chars is not None and chars[chosen] > max_chars:
        return None, "too_long"
    return JudgePair(chosen, rejected, ratings[chosen], ratings[rejected], a, b, chars[chosen], chars[rejected]), None
