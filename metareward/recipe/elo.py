"""Meta-judge side of one iteration: which response to meta-judge, which battles to run, the positional-bias
weights, the weighted battle matrix and its Elo ratings (Bradley-Terry maximum likelihood).

Which judgments battle: only the valid ones (those with a score). A judgment without a score cannot be a
training target (the "same score" rule cannot even be checked on it), so spending meta-judge calls on it
would only move the others' ratings by beating or losing to a judgment that is never used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ..errors import UserError

# L2 weight λ on Σε². The likelihood alone has no finite optimum when a judgment wins (or loses) every
# battle it is in: its rating runs off to ±inf. λ·Σε² keeps every rating finite (a judgment that beats
# its 3 opponents in all 6 battles, weight 0.5 each, sits at +4.38 and they at -1.46, not at ±inf) while
# moving ratings that the data do pin down by only ~λ/curvature. Since the likelihood does not change when all
# ratings shift together, the penalized optimum also has Σε = 0: the L2 term does the centering.
DEFAULT_L2 = 1e-3
# Stop when g·H⁻¹·g (≈ 2·(f* - f)) is below this, relative to 1 + |f|: f is then at float64 precision
# and the ratings good to ~1e-8; asking for less than f's own rounding error would never stop.
_NEWTON_DECREMENT = 1e-16


def select_response(judgment_scores: Sequence[Sequence[float | None]]) -> int | None:
    """Index of the response (of one prompt) whose valid judgment scores have the highest population
    variance, among those with at least 2 valid scores; ties go to the lower index. None if there is none.
    fsum makes the variance exact-rounded and independent of the order of the scores, so equal multisets
    tie exactly."""
    best, best_var = None, -1.0
    for i, scores in enumerate(judgment_scores):
        valid = [s for s in scores if s is not None]
        if len(valid) < 2:
            continue
        mean = math.fsum(valid) / len(valid)
        var = math.fsum((s - mean) ** 2 for s in valid) / len(valid)
        if var > best_var:
            best, best_var = i, var
    return best


def battles(scores: Sequence[float | None]) -> list[tuple[int, int]]:
    """(first, second) judgment indices to meta-judge for one response: every pair m < n of its valid
    judgments, in both orders, (m, n) then (n, m). `first` fills {judgment_a}, `second` {judgment_b}."""
    valid = [i for i, s in enumerate(scores) if s is not None]
    return [pair for a, m in enumerate(valid) for n in valid[a + 1:] for pair in ((m, n), (n, m))]


@dataclass(frozen=True)
class PositionWeights:
    w1: float  # weight of a win by the judgment shown first
    w2: float  # weight of a win by the judgment shown second
    wins_first: int
    wins_second: int
    invalid: int  # verdicts that did not parse, ignored


def position_weights(verdicts: Iterable[str | None]) -> PositionWeights:
    """Counts over all battles of an iteration; a win in the favoured position counts less:
    w1 = wins_second / total, w2 = wins_first / total (both 0.5 without any win)."""
    counts = {"first": 0, "second": 0, None: 0}
    for v in verdicts:
        if v not in counts:
            raise ValueError(f"verdict must be 'first', 'second' or None, got {v!r}")
        counts[v] += 1
    first, second = counts["first"], counts["second"]
    total = first + second
    w1, w2 = (second / total, first / total) if total else (0.5, 0.5)
    return PositionWeights(w1, w2, first, second, counts[None])


def battle_matrix(players: Sequence[int], results: Iterable[tuple[int, int, str | None]],
                  w1: float, w2: float) -> np.ndarray:
    """B[m, n] = w1·[m beat n when shown first] + w2·[m beat n when shown second], over `players` (judgment
    indices; row k is players[k]). results: (first, second, verdict) per battle; None verdicts are skipped."""
    row = {j: k for k, j in enumerate(players)}
    B = np.zeros((len(players), len(players)))  # B: [P, P], float64
    for first, second, verdict in results:
        if first not in row or second not in row:
            raise ValueError(f"battle ({first}, {second}) names a judgment outside players {list(players)}")
        if verdict == "first":
            B[row[first], row[second]] += w1
        elif verdict == "second":
            B[row[second], row[first]] += w2
        elif verdict is not None:
            raise ValueError(f"verdict must be 'first', 'second' or None, got {verdict!r}")
    return B


def objective(ratings: np.ndarray, wins: np.ndarray, l2: float = DEFAULT_L2) -> float:
    """Σ_{m,n} B[m,n]·log σ(ε_m - ε_n) - λ·Σ ε²."""
    d = ratings[:, None] - ratings[None, :]
    return float(-(wins * np.logaddexp(0.0, -d)).sum() - l2 * ratings @ ratings)


def fit_elo(wins: np.ndarray, l2: float = DEFAULT_L2, max_iter: int = 100) -> np.ndarray:
    """Ratings maximizing `objective`, by Newton's method with backtracking (the objective is strictly
    concave, so its maximizer is unique; the Hessian is only P×P). Returned centered, float64."""
    B = np.asarray(wins, dtype=np.float64)  # B: [P, P]
    if B.ndim != 2 or B.shape[0] != B.shape[1]:
        raise ValueError(f"the battle matrix must be square, got shape {B.shape}")
    if not np.all(np.isfinite(B)) or np.any(B < 0):
        raise ValueError("the battle matrix must hold finite non-negative weights")
    if not l2 > 0:
        raise UserError(f"the Elo L2 weight must be > 0 (it keeps ratings finite), got {l2}")
    e = np.zeros(B.shape[0])
    f, decrement = objective(e, B, l2), math.inf
    for _ in range(max_iter):
        d = e[:, None] - e[None, :]
        p = np.exp(-np.logaddexp(0.0, -d))  # σ(d): P(m beats n); this form is accurate near 0 and 1
        q = np.exp(-np.logaddexp(0.0, d))   # 1 - σ(d), without the cancellation of 1 - p
        G = B * q
        g = G.sum(1) - G.sum(0) - 2 * l2 * e
        S = B * p * q
        S = S + S.T
        H = S - np.diag(S.sum(1)) - 2 * l2 * np.eye(len(e))  # minus a graph Laplacian, minus 2λ·I
        step = np.linalg.solve(H, -g)
        decrement = float(g @ step)  # > 0: H is negative definite
        if decrement <= _NEWTON_DECREMENT * (1 + abs(f)):
            return _center(e + step)
        t = 1.0
        while True:  # Armijo: accept once the gain is at least a quarter of the linear prediction
            f_new = objective(e + t * step, B, l2)
            if f_new >= f + 0.25 * t * decrement or t < 1e-12:
                break
            t *= 0.5
        e, f = e + t * step, f_new
    raise RuntimeError(f"Elo fit did not converge in {max_iter} Newton steps (decrement {decrement:.3g})")


def judgment_ratings(scores: Sequence[float | None], results: Iterable[tuple[int, int, str | None]],
                     w1: float, w2: float, l2: float = DEFAULT_L2) -> list[float | None]:
    """Elo rating per judgment of one response (None for those without a score, which did not battle)."""
    players = [i for i, s in enumerate(scores) if s is not None]
    ratings: list[float | None] = [None] * len(scores)
    for j, r in zip(players, fit_elo(battle_matrix(players, results, w1, w2), l2)):
        ratings[j] = float(r)
    return ratings


def _center(e: np.ndarray) -> np.ndarray:
    return e - e.mean() if len(e) else e
