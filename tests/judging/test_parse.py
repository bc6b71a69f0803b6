import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metareward.judging.parse import (SCORE_CANDIDATES, expected_value, expected_winner, mean_score, parse_score,
                                       parse_winner)


@pytest.mark.parametrize("text, want", [
    ("The response is fine.\nScore: 4", 4.0),
    ("Score: 0", 0.0),
    ("Score: 5", 5.0),
    ("score: 3.5", 3.5),
    ("SCORE: 2", 2.0),
    ("Score:3", 3.0),
    ("Score:   3  ", 3.0),
    ("Score: 4.0", 4.0),
    ("Score: +2", 2.0),
    ("Score: 5.00", 5.0),
    ("**Score:** 4", 4.0),
    ("**Score**: 4", 4.0),
    ("Score: **4**", 4.0),
    ("__Score:__ 1", 1.0),
    ("Score: `2`", 2.0),
    ("Score: 4/5", 4.0),
    ("Score: 4 / 5", 4.0),
    ("Score: 4/5.0", 4.0),
    ("Score: 3 out of 5", 3.0),
    ("Score: 4 points", 4.0),
    ("Score: 1 point.", 1.0),
    ("Score: 4.", 4.0),
    ("Score: 4.5.", 4.5),
    ("Score: 4!", 4.0),
    ("Score:\n4", 4.0),
    ("Score: 4\r\n", 4.0),
    ("Total score: 2", 2.0),
    ("Final Score: 3\n\nThanks.", 3.0),
    ("Justification ...\nScore: 4\n", 4.0),
])
def test_parse_score_accepts(text, want):
    assert parse_score(text) == want


@pytest.mark.parametrize("text", [
    "",
    "No score given.",
    "I would give it a 4.",
    "Score 4",              # no colon
    "Score - 4",
    "Scores: 4",            # not the word "score"
    "Subscore: 4",
    "Score: 6",             # out of range
    "Score: 5.5",
    "Score: 45",
    "Score: -1",
    "Score: -0.5",
    "Score: -0",            # negative zero is not a score (it used to parse as -0.0)
    "Score: -0.0",
    "\u017fcore: 4",       # U+017F LATIN SMALL LETTER LONG S folds to "s" under Unicode IGNORECASE
    "\u017fCORE: 4",
    "Score: \uff14",        # a full-width digit is not an ASCII digit
    "Score: 4/10",          # another scale
    "Score: 4/50",
    "Score: 4 out of 10",
    "Score: 4,5",
    "Score: .5",
    "Score: 4abc",
    "Score: 4 because it is relevant",
    "Score: <points>",
    "Score: four",
    "Score: N/A",
    "Score: 4 5",
    "Score: 3-4",
    "Score: \u0664",         # Arabic-Indic four: digits are ASCII only
    "Score:",
])
def test_parse_score_rejects(text):
    assert parse_score(text) is None


def test_parse_score_last_marker_wins():
    assert parse_score("Score: 1\nOn reflection...\nScore: 3") == 3.0
    assert parse_score("Point 1: yes. Score: 1\nPoint 2: yes. Score: 2\nScore: 2.5") == 2.5
    assert parse_score("**Score:** 5\nscore: 0") == 0.0
    # a malformed last verdict makes the judgment invalid; the earlier one is not used
    assert parse_score("Score: 4\nScore: 7") is None
    assert parse_score("Score: 4\nScore: N/A") is None
    # a marker followed on its own line by a number, then a later valid one
    assert parse_score("Score: 2 because\nScore: 1") == 1.0


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_score_never_crashes_and_stays_in_range(text):
    x = parse_score(text)
    assert x is None or (isinstance(x, float) and 0.0 <= x <= 5.0)


_score_alphabet = st.sampled_from(list("Score:score0123456789./ *_\n\t-+abc<>pointsoutf"))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=_score_alphabet, max_size=60))
def test_parse_score_fuzz_near_the_grammar(text):
    x = parse_score(text)
    assert x is None or 0.0 <= x <= 5.0


@settings(max_examples=200, deadline=None)
@given(st.text(), st.integers(0, 10))
def test_parse_score_appended_verdict_wins(prefix, halves):
    assert parse_score(f"{prefix}\nScore: {halves / 2:g}") == halves / 2


@pytest.mark.parametrize("text, want", [
    ("A is better.\nWinner: Judgment A", "first"),
    ("Winner: Judgment B", "second"),
    ("winner: judgment b", "second"),
    ("**Winner:** Judgment A", "first"),
    ("**Winner**: Judgment B.", "second"),
    ("Winner: **Judgment A**", "first"),
    ("Winner: [Judgment B]", "second"),
    ("Winner: Judgement A", "first"),
    ("Winner: Judgment A\r\n", "first"),
    ("Winner: Judgment A\n...\nWinner: Judgment B", "second"),
    ("The winner: Judgment A", "first"),
])
def test_parse_winner_accepts(text, want):
    assert parse_winner(text) == want


@pytest.mark.parametrize("text", [
    "",
    "Judgment A is better.",
    "Winner: A",
    "Winner: Judgment C",
    "Winner: Judgment AB",
    "Winner: [Judgment A | Judgment B]",
    "Winner: Judgment A or Judgment B",
    "Winner: Judgment A because it is precise",
    "Winner: Judgment B\nWinner: tie",
    "Winner Judgment A",
    "Winners: Judgment A",
])
def test_parse_winner_rejects(text):
    assert parse_winner(text) is None


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_winner_never_crashes(text):
    assert parse_winner(text) in (None, "first", "second")


def test_expected_value_hand_computed():
    # uniform over 0..5: mean 2.5
    assert expected_value([0.0] * 6) == pytest.approx(2.5, abs=1e-15)
    # p(4) = p(5) = 1/2 -> 4.5, whatever the common offset of the log-probs
    assert expected_value({4: -30.0, 5: -30.0}) == pytest.approx(4.5, abs=1e-15)
    assert expected_value({"4": math.log(0.25), "2": math.log(0.75)}) == pytest.approx(2.5, abs=1e-15)
    # renormalized over the candidates: unnormalized log-probs give the same answer
    lp = [math.log(w) for w in (1, 2, 3, 4, 5, 6)]
    want = sum(v * w for v, w in enumerate((1, 2, 3, 4, 5, 6))) / 21
    assert expected_value(lp) == pytest.approx(want, abs=1e-14)
    assert expected_value([x - 100.0 for x in lp]) == pytest.approx(want, abs=1e-14)
    assert expected_value(dict(zip(SCORE_CANDIDATES, lp))) == pytest.approx(want, abs=1e-14)


def test_expected_value_masked_and_extreme():
    inf = math.inf
    assert expected_value([-inf, -inf, -inf, 0.0, -inf, -inf]) == 3.0
    assert expected_value([-1000.0, 0.0, -inf, -inf, -inf, -inf]) == pytest.approx(1.0, abs=1e-300)
    assert expected_value([-inf] * 6) is None
    assert expected_value([]) is None
    assert expected_value([0.0, math.nan, 0.0, 0.0, 0.0, 0.0]) is None
    assert expected_value([0.0, inf, 0.0, 0.0, 0.0, 0.0]) is None


def test_expected_winner():
    assert expected_winner(-0.1, -2.3) == "first"
    assert expected_winner(-5.0, -0.01) == "second"
    assert expected_winner(-1.0, -1.0) is None
    assert expected_winner(-math.inf, -math.inf) is None
    assert expected_winner(math.nan, -1.0) is None
    assert expected_winner(-math.inf, -30.0) == "second"


def test_mean_score():
    assert mean_score([4.0, None, 3.0, 5.0]) == 4.0
    assert mean_score([3.5]) == 3.5
    assert mean_score([None, None]) is None
    assert mean_score([]) is None
    assert mean_score([0.1] * 10) == 0.1  # fsum: exact-rounded, no drift
