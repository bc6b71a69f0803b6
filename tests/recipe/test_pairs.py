from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metareward.errors import UserError
from metareward.recipe.pairs import (ACTOR_DROP_REASONS, ELO_TOL, JUDGE_DROP_REASONS, ActorPair, JudgePair,
                                     actor_pair, judge_pair)

# ---- actor pairs ----------------------------------------------------------------------------------------


def test_rho0_shortest_of_the_best_longest_of_the_worst():
    pair, reason = actor_pair([3.0, 5.0, 1.0, 5.0, 1.0], [10, 30, 20, 25, 40])
    assert reason is None
    assert pair == ActorPair(chosen_index=3, rejected_index=4, chosen_score=5.0, rejected_score=1.0,
                             chosen_tokens=25, rejected_tokens=40)


def test_rho0_is_exactly_max_and_min():
    # 1e-7 below the max is not the max, however short
    pair, _ = actor_pair([4.0, 4.0 - 1e-7, 1.0, 1.0 + 1e-7], [100, 1, 50, 999])
    assert (pair.chosen_index, pair.rejected_index) == (0, 2)


def test_length_ties_go_to_the_lower_index():
    pair, _ = actor_pair([5.0, 5.0, 0.0, 0.0], [10, 10, 7, 7])
    assert (pair.chosen_index, pair.rejected_index) == (0, 2)
    pair, _ = actor_pair([0.0, 2.0, 5.0, 2.0, 5.0, 0.0], [9, 1, 4, 1, 4, 9])
    assert (pair.chosen_index, pair.rejected_index) == (2, 0)


def test_dropped_responses_are_skipped():
    pair, _ = actor_pair([None, 4.0, None, 2.0], [1, 50, 1, 5])
    assert (pair.chosen_index, pair.rejected_index, pair.chosen_tokens, pair.rejected_tokens) == (1, 3, 50, 5)


@pytest.mark.parametrize("scores", [[], [None], [3.0], [None, 3.0], [None, None, None]])
def test_too_few_scored(scores):
    assert actor_pair(scores, [5] * len(scores)) == (None, "too_few_scored")


@pytest.mark.parametrize("scores", [[3.0, 3.0], [2.5, None, 2.5, 2.5], [3.0, 3.0 + 1e-12]])
def test_tie(scores):
    assert actor_pair(scores, [5] * len(scores), rho=0.3) == (None, "tie")


def test_rho_half_midpoint_in_both_tiers():
    # thresholds are both 2.0; response 2 (score 2, length 40) is in both tiers
    pair, _ = actor_pair([0.0, 1.0, 2.0, 3.0, 4.0], [30, 10, 40, 35, 20], rho=0.5)
    assert (pair.chosen_index, pair.rejected_index) == (4, 2)
    pair, _ = actor_pair([0.0, 1.0, 2.0, 3.0, 4.0], [30, 10, 15, 35, 20], rho=0.5)
    assert (pair.chosen_index, pair.rejected_index) == (2, 0)


def test_threshold_rounding_is_absorbed():
    # 0.8·3.5 + 0.2·1.0 = 3.0, but in floating point the threshold is 3.0000000000000004
    assert (1 - 0.2) * 3.5 + 0.2 * 1.0 > 3.0
    pair, _ = actor_pair([3.5, 3.0, 1.0], [100, 10, 50], rho=0.2)
    assert pair.chosen_index == 1


def test_rho1_is_pure_length():
    pair, _ = actor_pair([5.0, 0.0, 3.0], [30, 10, 20], rho=1.0)
    assert (pair.chosen_index, pair.rejected_index) == (1, 0)  # the tiers are everything: documented
    assert pair.chosen_score == 0.0 and pair.rejected_score == 5.0


def test_same_response():
    assert actor_pair([5.0, 0.0, 3.0], [10, 10, 10], rho=1.0) == (None, "same_response")
    assert actor_pair([4.0, 2.0, 3.0], [50, 20, 30], rho=0.5) == (None, "same_response")


def test_bad_arguments():
    with pytest.raises(UserError, match="rho"):
        actor_pair([1.0, 2.0], [1, 2], rho=1.5)
    with pytest.raises(UserError, match="rho"):
        actor_pair([1.0, 2.0], [1, 2], rho=-0.1)
    with pytest.raises(ValueError):
        actor_pair([1.0, 2.0], [1])


def _reference_actor_pair(scores, tokens, rho):
    # exact rational tiers, brute-force minimum/maximum over (length, index)
    scored = [i for i, s in enumerate(scores) if s is not None]
    if len(scored) < 2:
        return None, "too_few_scored"
    hi, lo = max(Fraction(scores[i]) for i in scored), min(Fraction(scores[i]) for i in scored)
    if hi == lo:
        return None, "tie"
    top, bottom = (1 - rho) * hi + rho * lo, (1 - rho) * lo + rho * hi
    chosen = min((tokens[i], i) for i in scored if scores[i] >= top)[1]
    rejected = min((-tokens[i], i) for i in scored if scores[i] <= bottom)[1]
    return (None, "same_response") if chosen == rejected else ((chosen, rejected), None)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 20)), st.integers(1, 6)), max_size=8),
       st.integers(0, 10))
def test_matches_exact_reference(rows, rho_tenths):
    scores = [None if q is None else q / 4 for q, _ in rows]  # quarters in [0, 5]
    tokens = [n for _, n in rows]
    pair, reason = actor_pair(scores, tokens, rho=rho_tenths / 10)
    want, want_reason = _reference_actor_pair(scores, tokens, Fraction(rho_tenths, 10))
    assert reason == want_reason and reason in (None, *ACTOR_DROP_REASONS)
    if pair is not None:
        assert (pair.chosen_index, pair.rejected_index) == want
        assert pair.chosen_score == scores[pair.chosen_index] and pair.rejected_tokens == tokens[pair.rejected_index]
        if rho_tenths < 5:
            assert pair.chosen_score > pair.rejected_score


# ---- judge pairs ----------------------------------------------------------------------------------------


def test_judge_pair_highest_vs_lowest():
    pair, reason = judge_pair([0.2, -1.3, 1.1, 0.0], [3.0, 5.0, 4.0, 2.0], [100, 200, 300, 400])
    assert reason is None
    assert pair == JudgePair(chosen_index=2, rejected_index=1, chosen_rating=1.1, rejected_rating=-1.3,
                             chosen_score=4.0, rejected_score=5.0, chosen_chars=300, rejected_chars=200)


def test_judge_pair_rating_ties_go_to_the_lower_index():
    pair, _ = judge_pair([1.0, -1.0, 1.0, -1.0], [4.0, 2.0, 3.0, 1.0], [1, 1, 1, 1])
    assert (pair.chosen_index, pair.rejected_index) == (0, 1)
    # within ELO_TOL/2 of the extreme counts as tied
    pair, _ = judge_pair([1.0, -1.0, 1.0 + ELO_TOL / 4, -1.0 - ELO_TOL / 4], [4.0, 2.0, 3.0, 1.0], [1] * 4)
    assert (pair.chosen_index, pair.rejected_index) == (0, 1)


def test_judge_pair_windows_never_overlap():
    pair, _ = judge_pair([0.75 * ELO_TOL, 0.0, 1.5 * ELO_TOL], [1.0, 2.0, 3.0], [1, 1, 1])
    assert (pair.chosen_index, pair.rejected_index) == (2, 1)


def test_judge_pair_skips_unrated():
    pair, _ = judge_pair([None, 0.3, None, -0.3], [None, 4.0, None, 1.0], [5, 6, 7, 8])
    assert (pair.chosen_index, pair.rejected_index) == (1, 3)


@pytest.mark.parametrize("ratings", [[], [None, 0.4], [0.0], [None, None]])
def test_judge_pair_too_few_rated(ratings):
    assert judge_pair(ratings, [1.0] * len(ratings), [1] * len(ratings)) == (None, "too_few_rated")


@pytest.mark.parametrize("ratings", [[0.0, 0.0, 0.0], [ELO_TOL / 3, -ELO_TOL / 3], [2.0, 2.0 + ELO_TOL / 2]])
def test_judge_pair_equal_elo(ratings):
    # equal_elo comes first, even when the scores are the same as well
    assert judge_pair(ratings, [3.0] * len(ratings), [1] * len(ratings)) == (None, "equal_elo")


def test_judge_pair_same_score():
    args = ([0.5, -0.5, 0.0], [4.0, 4.0, 1.0], [10, 10, 10])
    assert judge_pair(*args) == (None, "same_score")
    pair, reason = judge_pair(*args, drop_same_score=False)
    assert reason is None and (pair.chosen_index, pair.rejected_index) == (0, 1)
    # the middle judgment's different score does not matter
    assert judge_pair([0.5, -0.5, 0.0], [4.0, 3.0, 4.0], [10, 10, 10])[1] is None


def test_judge_pair_too_long():
    ratings, scores = [0.5, -0.5], [4.0, 2.0]
    assert judge_pair(ratings, scores, [101, 5], max_chars=100) == (None, "too_long")
    assert judge_pair(ratings, scores, [100, 5], max_chars=100)[1] is None  # at the limit: kept
    assert judge_pair(ratings, scores, [5, 10_000], max_chars=100)[1] is None  # only the chosen one counts
    assert judge_pair(ratings, scores, [10_000, 5])[1] is None  # default: no limit
    # same_score is checked before too_long
    assert judge_pair(ratings, [3.0, 3.0], [101, 5], max_chars=100) == (None, "same_score")


def test_judge_pair_bad_arguments():
    with pytest.raises(ValueError):
        judge_pair([0.1, 0.2], [1.0], [1, 1])
    with pytest.raises(UserError):
        judge_pair([0.1, 0.2], [1.0, 2.0], [1, 1], max_chars=0)


def test_reason_lists_are_stable():
    assert ACTOR_DROP_REASONS == ("too_few_scored", "tie", "same_response")
    assert JUDGE_DROP_REASONS == ("too_few_rated", "equal_elo", "same_score", "too_long")
