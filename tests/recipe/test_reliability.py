"""The judge's signal checks (recipe/reliability.py) against hand-computed ANOVA values."""
from fractions import Fraction as F

import numpy as np
import pytest

from metareward.recipe.reliability import icc1, icc1_p_value, order_consistency


def test_icc1_equal_groups_hand_computed():
    # grand mean 2.5; MSB = 2 * (1 + 1) / 1 = 4; MSW = 4 * 0.25 / 2 = 0.5; ICC = 3.5 / 4.5
    assert icc1([[1, 2], [3, 4]]) == pytest.approx(7 / 9, rel=1e-12)


def test_icc1_unequal_groups_hand_computed():
    # means 2 and 6, grand 3.6: MSB = 3 * 1.6^2 + 2 * 2.4^2 = 19.2; MSW = (2 + 2) / 3; n0 = 5 - 13/5 = 2.4
    msb, msw, n0 = F(192, 10), F(4, 3), F(12, 5)
    assert icc1([[1, 2, 3], [5, 7]]) == pytest.approx(float((msb - msw) / (msb + (n0 - 1) * msw)), rel=1e-12)


def test_icc1_edges():
    assert icc1([[1, 1], [3, 3]]) == 1.0  # scores agree within a response, differ between: all signal
    assert icc1([[1, 3], [1, 3]]) == pytest.approx(-1.0)  # within-response spread only: below zero
    assert icc1([[2, 2], [2, 2]]) is None  # no variance at all
    assert icc1([[1, 2, 3]]) is None and icc1([[1], [2], [3]]) is None  # one group / no group of two


def test_icc1_p_value_tells_signal_from_noise():
    rng = np.random.default_rng(0)
    signal = [list(m + rng.normal(0, 0.3, 4)) for m in rng.integers(0, 6, 40)]
    noise = [list(rng.integers(0, 6, 4).astype(float)) for _ in range(40)]
    assert icc1(signal) > 0.8 and icc1_p_value(signal, shuffles=200) == pytest.approx(1 / 201)
    assert abs(icc1(noise)) < 0.2 and icc1_p_value(noise, shuffles=200) > 0.05
    assert icc1_p_value(noise, shuffles=200, seed=3) == icc1_p_value(noise, shuffles=200, seed=3)


def test_order_consistency():
    v = [("r0", 0, 1, "first"), ("r0", 1, 0, "second"),  # judgment 0 wins both orders: consistent
         ("r0", 0, 2, "first"), ("r0", 2, 0, "first"),  # the first shown wins both times: not
         ("r0", 1, 2, "second"), ("r0", 2, 1, None),  # one order invalid: not counted
         ("r1", 0, 1, "second"), ("r1", 1, 0, "first")]  # judgment 1 both times, another response
    assert order_consistency(v) == (2 / 3, 3)
    assert order_consistency([("r", 0, 1, None)]) == (None, 0)
