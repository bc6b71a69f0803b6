import math

import numpy as np
import pytest

from metareward.errors import UserError
from metareward.recipe.elo import (DEFAULT_L2, PositionWeights, battle_matrix, battles, fit_elo, judgment_ratings,
                                   position_weights, select_response)

# ---- which response, which battles --------------------------------------------------------------------------


def test_select_response_highest_variance():
    # population variances: 1.0, 0.0, 4.0 (valid scores 1 and 5), and too few valid scores
    assert select_response([[4.0, 2.0], [5.0, 5.0, 5.0], [None, 1.0, 5.0], [3.0]]) == 2


def test_select_response_ties_and_edges():
    assert select_response([[1.0, 3.0], [3.0, 1.0]]) == 0
    assert select_response([[3.0, 3.0], [4.0, 4.0]]) == 0  # all zero: the first still qualifies
    assert select_response([[0.1, 0.2, 0.7], [0.7, 0.1, 0.2], [0.2, 0.7, 0.1]]) == 0  # same multiset: exact tie
    assert select_response([[None, 2.0], [1.0], []]) is None
    assert select_response([]) is None
    # population, not sample, variance: [0, 5] -> 6.25, [0, 5, 0, 5] -> 6.25 (tie -> 0); [0,5,5] -> 5.56
    assert select_response([[0.0, 5.0, 5.0], [0.0, 5.0, 0.0, 5.0]]) == 1


def test_battles_both_orders_valid_only():
    assert battles([4.0, None, 2.0, 3.0]) == [(0, 2), (2, 0), (0, 3), (3, 0), (2, 3), (3, 2)]
    assert battles([None, 1.0]) == []
    assert battles([]) == []
    assert len(battles([1.0] * 5)) == 5 * 4


# ---- position weights and battle matrix ---------------------------------------------------------------------


def test_position_weights():
    pw = position_weights(["first", "first", None, "first", "second", None])
    assert pw == PositionWeights(w1=0.25, w2=0.75, wins_first=3, wins_second=1, invalid=2)
    assert position_weights([]) == PositionWeights(0.5, 0.5, 0, 0, 0)
    assert position_weights([None, None]) == PositionWeights(0.5, 0.5, 0, 0, 2)
    assert position_weights(iter(["second"] * 4)) == PositionWeights(1.0, 0.0, 0, 4, 0)
    with pytest.raises(ValueError):
        position_weights(["A"])


def test_battle_matrix_hand_computed():
    results = [(0, 2, "first"),    # 0 beat 2 shown first     -> B[0, 2] += w1
               (2, 0, "first"),    # 2 beat 0 shown first     -> B[2, 0] += w1
               (0, 3, "second"),   # 3 beat 0 shown second    -> B[3, 0] += w2
               (3, 0, None),       # no verdict: skipped
               (2, 3, "second"),   # 3 beat 2 shown second    -> B[3, 2] += w2
               (3, 2, "first")]    # 3 beat 2 shown first     -> B[3, 2] += w1
    B = battle_matrix([0, 2, 3], results, w1=0.25, w2=0.75)  # rows/cols: judgments 0, 2, 3
    np.testing.assert_array_equal(B, [[0.0, 0.25, 0.0], [0.25, 0.0, 0.0], [0.75, 1.0, 0.0]])


def test_battle_matrix_errors():
    with pytest.raises(ValueError, match="outside"):
        battle_matrix([0, 1], [(0, 2, "first")], 0.5, 0.5)
    with pytest.raises(ValueError):
        battle_matrix([0, 1], [(0, 1, "A")], 0.5, 0.5)


# ---- Elo fit --------------------------------------------------------------------------------------------------


def _objective(e, B, l2):
    # written out, independent of the module: Σ B[m,n]·log σ(e_m - e_n) - λ·Σe², e: [..., P] batched
    total = -l2 * (e ** 2).sum(-1)
    P = B.shape[0]
    for m in range(P):
        for n in range(P):
            if B[m, n]:
                total = total - B[m, n] * np.log1p(np.exp(-(e[..., m] - e[..., n])))
    return total


def _zoom_search(B, l2, half=12.0, steps=21, rounds=45):
    # brute force: a full 3-D grid around the best point so far, shrinking by 4x per round (concave objective)
    center = np.zeros(3)
    axis = np.linspace(-1.0, 1.0, steps)
    for _ in range(rounds):
        grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3) * half + center
        center = grid[np.argmax(_objective(grid, B, l2))]
        half /= 4.0
    return center


@pytest.mark.parametrize("B", [
    [[0, 1.5, 0.5], [0.25, 0, 1.0], [0.75, 0.0, 0]],
    [[0, 1.0, 1.0], [0, 0, 0.5], [0, 0.5, 0]],         # judgment 0 wins everything: finite only thanks to L2
    [[0, 0, 0], [0.3, 0, 0], [0.9, 0.6, 0]],
])
def test_fit_matches_brute_force(B):
    B = np.array(B, dtype=np.float64)
    got = fit_elo(B)
    brute = _zoom_search(B, DEFAULT_L2)
    assert _objective(got, B, DEFAULT_L2) >= _objective(brute, B, DEFAULT_L2) - 1e-14
    # Along a common shift the objective curves only by λ·P = 0.003, so in float64 the search pins the
    # shift to ~1e-7 and the differences (curvature ~0.1-1) to ~1e-8.
    assert abs(brute.mean()) < 1e-6  # the L2 optimum is centered by itself
    np.testing.assert_allclose(got, brute - brute.mean(), atol=2e-8)


def test_fit_is_stationary_and_maximal_on_random_cases():
    rng = np.random.default_rng(0)
    for P in (2, 4, 7):
        for _ in range(5):
            B = rng.uniform(0, 1, (P, P)) * (rng.uniform(size=(P, P)) < 0.7)
            e = fit_elo(B)
            # central differences of the objective: zero gradient
            h = 1e-5
            for k in range(P):
                d = np.zeros(P)
                d[k] = h
                grad = (_objective(e + d, B, DEFAULT_L2) - _objective(e - d, B, DEFAULT_L2)) / (2 * h)
                assert abs(grad) < 1e-8
            # and no random nearby point is better
            f = _objective(e, B, DEFAULT_L2)
            assert np.all(_objective(e + rng.normal(0, 1e-3, (200, P)), B, DEFAULT_L2) <= f)


def test_two_players_closed_form():
    # unregularized MLE: σ(e0 - e1) = a/(a+b)  =>  e0 - e1 = log(a/b), centered at ±half of it
    a, b = 1.75, 0.5
    e = fit_elo(np.array([[0, a], [b, 0]]), l2=1e-10)
    np.testing.assert_allclose(e, [0.5 * math.log(a / b), -0.5 * math.log(a / b)], atol=1e-8)
    # with the L2 term, e = (x, -x) solves 2a·σ(-2x) - 2b·σ(2x) = 4λx
    for a, b in ((1.75, 0.5), (1.0, 0.0), (3.0, 0.0)):
        x, y = fit_elo(np.array([[0, a], [b, 0]]), l2=DEFAULT_L2)
        assert x == pytest.approx(-y, abs=1e-14) and x > 0
        sig = 1 / (1 + math.exp(-2 * x))
        assert 2 * a * (1 - sig) - 2 * b * sig == pytest.approx(4 * DEFAULT_L2 * x, abs=1e-12)
    # the all-wins case for the comment in elo.py: a 3-0 sweep of weight 0.5 battles, and a 6-0 sweep
    assert fit_elo(np.array([[0, 1.5], [0, 0]]))[0] == pytest.approx(2.79437, abs=1e-5)
    B = np.zeros((4, 4))
    B[0, 1:] = 1.0
    np.testing.assert_allclose(fit_elo(B), [4.37568, -1.45856, -1.45856, -1.45856], atol=1e-5)


def test_symmetric_gives_equal_ratings():
    np.testing.assert_allclose(fit_elo(np.full((4, 4), 0.5) - 0.5 * np.eye(4)), 0.0, atol=1e-12)
    cycle = np.array([[0, 1.0, 0], [0, 0, 1.0], [1.0, 0, 0]])  # rock-paper-scissors
    np.testing.assert_allclose(fit_elo(cycle), 0.0, atol=1e-12)
    np.testing.assert_array_equal(fit_elo(np.zeros((3, 3))), 0.0)


def test_centered_and_permutation_equivariant():
    rng = np.random.default_rng(1)
    B = rng.uniform(0, 2, (6, 6))
    e = fit_elo(B)
    assert abs(e.sum()) < 1e-12
    perm = rng.permutation(6)
    np.testing.assert_allclose(fit_elo(B[np.ix_(perm, perm)]), e[perm], atol=1e-10)


def test_more_wins_higher_rating():
    rng = np.random.default_rng(2)
    for _ in range(10):
        B = rng.uniform(0, 1, (5, 5))
        m, n = rng.choice(5, 2, replace=False)
        e = fit_elo(B)
        B2 = B.copy()
        B2[m, n] += 0.5
        e2 = fit_elo(B2)
        assert e2[m] > e[m] and e2[n] < e[n]
        assert e2[m] - e2[n] > e[m] - e[n]


def test_trivial_sizes_and_errors():
    assert fit_elo(np.zeros((0, 0))).shape == (0,)
    np.testing.assert_array_equal(fit_elo(np.zeros((1, 1))), [0.0])
    with pytest.raises(UserError, match="L2"):
        fit_elo(np.zeros((2, 2)), l2=0.0)
    with pytest.raises(ValueError, match="square"):
        fit_elo(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        fit_elo(np.array([[0, -1.0], [0, 0]]))
    with pytest.raises(ValueError, match="non-negative"):
        fit_elo(np.array([[0, math.nan], [0, 0]]))


def test_extreme_weights_converge():
    B = np.zeros((5, 5))
    B[0, 1:] = 1e3  # a thousand sweeps
    e = fit_elo(B, l2=1e-6)
    assert np.all(np.isfinite(e)) and e[0] == e.max() and abs(e.sum()) < 1e-9


# ---- one response end to end --------------------------------------------------------------------------------


def test_judgment_ratings_one_response():
    scores = [4.0, None, 2.0, 3.0]
    pairs = battles(scores)
    # judgment 0 wins every battle; 3 beats 2 only when shown first
    verdicts = {(0, 2): "first", (2, 0): "second", (0, 3): "first", (3, 0): "second",
                (2, 3): "second", (3, 2): "first"}
    results = [(a, b, verdicts[a, b]) for a, b in pairs]
    pw = position_weights(v for _, _, v in results)
    assert (pw.wins_first, pw.wins_second) == (3, 3) and pw.w1 == pw.w2 == 0.5
    ratings = judgment_ratings(scores, results, pw.w1, pw.w2)
    assert ratings[1] is None
    assert ratings[0] > ratings[3] > ratings[2]
    B = np.array([[0, 1.0, 1.0], [0, 0, 0], [0, 1.0, 0]])  # players 0, 2, 3
    np.testing.assert_allclose([ratings[0], ratings[2], ratings[3]], fit_elo(B), atol=0)
    assert all(isinstance(r, float) for r in ratings if r is not None)
