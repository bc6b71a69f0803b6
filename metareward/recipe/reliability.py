"""Is the judge's signal better than noise? Two checks on an iteration's own artifacts, no labels needed.

- Score reliability: the one-way intraclass correlation ICC(1) of the N scores each response got. Near 1: the
  judge's scores of one response agree and differ between responses; near 0 (or below): the scores of one
  response agree no more than those of different responses, i.e. they are noise around a common mean. Its
  p-value is the share of label shuffles (scores dealt to responses at random, same group sizes) whose ICC is
  at least the observed one.
- Meta-judge order consistency: of the judgment pairs with a valid verdict in both orders, the share where
  the same judgment won both times. A judge that reads the judgments scores near 1; a coin scores 0.5; one
  that always picks a position scores 0.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def icc1(groups: Sequence[Sequence[float]]) -> float | None:
    """ICC(1) of a one-way random-effects ANOVA, groups of unequal size allowed (the n0 of Shrout & Fleiss /
    Snedecor & Cochran: n0 = (N - sum n_i^2 / N) / (g - 1)). None when undefined: fewer than two groups of two
    or more values, or no variance at all."""
    gs = [np.asarray(g, dtype=np.float64) for g in groups if len(g) >= 2]
    if len(gs) < 2:
        return None
    return _icc(np.concatenate(gs), np.array([len(g) for g in gs]))


def _icc(values: np.ndarray, sizes: np.ndarray) -> float | None:
    n, g = sizes.sum(), len(sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    means = np.add.reduceat(values, starts) / sizes
    grand = values.mean()
    msb = float((sizes * (means - grand) ** 2).sum() / (g - 1))
    msw = float(((values - np.repeat(means, sizes)) ** 2).sum() / (n - g))
    n0 = (n - (sizes ** 2).sum() / n) / (g - 1)
    den = msb + (n0 - 1) * msw
    return None if den <= 0 else (msb - msw) / den


def icc1_p_value(groups: Sequence[Sequence[float]], shuffles: int = 1000, seed: int = 0) -> float | None:
    """P(ICC >= observed) when the same scores are dealt to the same group sizes at random (seeded); the
    observed dealing counts as one of the shuffles, so p >= 1 / (shuffles + 1)."""
    gs = [np.asarray(g, dtype=np.float64) for g in groups if len(g) >= 2]
    observed = icc1(gs)
    if observed is None:
        return None
    values, sizes = np.concatenate(gs), np.array([len(g) for g in gs])
    rng = np.random.default_rng(seed)
    null = [_icc(rng.permutation(values), sizes) for _ in range(shuffles)]
    at_least = sum(1 for x in null if x is not None and x >= observed - 1e-12)
    return (at_least + 1) / (shuffles + 1)


def order_consistency(verdicts: Iterable[tuple[object, int, int, str | None]]) -> tuple[float | None, int]:
    """verdicts: (group, first, second, winner) with winner "first" | "second" | None, one per battle; a group
    is one response (its judgments are compared among themselves). -> (share of the pairs judged validly in
    both orders whose winner is the same judgment both times, number of such pairs)."""
    won: dict[tuple, int] = {}
    for group, a, b, w in verdicts:
        if w in ("first", "second"):
            won[(group, a, b)] = a if w == "first" else b
    same = both = 0
    for (group, a, b), w in won.items():
        if a < b and (group, b, a) in won:
            both += 1
            same += w == won[(group, b, a)]
    return (same / both if both else None), both
