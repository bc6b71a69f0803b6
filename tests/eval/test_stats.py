import math

import numpy as np
import pytest

from metareward.errors import UserError
from metareward.eval.stats import (agreement_metrics, fit_logistic, length_feature, model_side, pairwise_agreement,
                                   pointwise_agreement, preferences, win_rate_report)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def logit(p):
    return math.log(p / (1.0 - p))


# ---- per-question preference from the two orders ----

def test_preferences_from_both_orders():
    m = ["model", "baseline", "tie", "model", "model", None, "baseline", None]
    b = ["model", "baseline", "tie", "baseline", "tie", "model", None, None]
    pref, cons = preferences(m, b)
    np.testing.assert_array_equal(pref, [1.0, 0.0, 0.5, 0.5, 0.5, 1.0, 0.0, np.nan])
    np.testing.assert_array_equal(cons, [1, 1, 1, 0, 0, np.nan, np.nan, np.nan])
    with pytest.raises(ValueError):
        preferences(["A"], ["model"])
    with pytest.raises(ValueError):
        preferences(["model"], [])


def test_model_side_maps_the_shown_order():
    assert [model_side(v, True) for v in ("A", "B", "tie", None)] == ["model", "baseline", "tie", None]
    assert [model_side(v, False) for v in ("A", "B", "tie", None)] == ["baseline", "model", "tie", None]
    with pytest.raises(ValueError):
        model_side("C", True)


def test_judge_that_always_picks_the_first_response_is_neutral():
    # a purely position-biased judge: "A" in both orders → inconsistent everywhere → win rate exactly 0.5
    n = 50
    r = win_rate_report([model_side("A", True)] * n, [model_side("A", False)] * n, [100] * n,
                        list(range(50, 150, 2)), n_boot=50)
    assert r["win_rate"] == 0.5 and r["position_consistency"] == 0.0
    assert r["win_rate_ci95"] == [0.5, 0.5]


# ---- the logistic fit ----

def test_fit_two_groups_matches_closed_form():
    # x ∈ {−1, +1} with λ = 0: σ(θ ± φ) equal the mean soft label of each group
    x = np.array([-1.0] * 4 + [1.0] * 5)
    y = np.array([0, 0.5, 0.5, 1, 1, 1, 0.5, 1, 0])  # group means 0.5 and 0.7
    theta, phi = fit_logistic(x, y, l2=0.0)
    assert theta == pytest.approx((logit(0.7) + logit(0.5)) / 2, abs=1e-10)
    assert phi == pytest.approx((logit(0.7) - logit(0.5)) / 2, abs=1e-10)


def test_fit_without_length_variation_is_the_mean():
    y = np.array([1, 1, 0.5, 0, 1, 0.5, 1.0])
    theta, phi = fit_logistic(np.zeros_like(y), y, l2=0.0)
    assert sigmoid(theta) == pytest.approx(y.mean(), abs=1e-12) and phi == 0.0


def test_fit_is_the_penalized_optimum():
    rng = np.random.default_rng(1)
    x = np.tanh(rng.normal(size=(3, 40)))
    y = rng.choice([0.0, 0.5, 1.0], size=(3, 40))
    theta, phi = fit_logistic(x, y, l2=0.01)
    p = sigmoid(theta[:, None] + phi[:, None] * x)
    np.testing.assert_allclose((y - p).sum(1), 0.01 * theta, atol=1e-9)
    np.testing.assert_allclose(((y - p) * x).sum(1), 0.01 * phi, atol=1e-9)


@pytest.mark.parametrize("n", [2000, 20000])
def test_fit_recovers_known_parameters(n):
    rng = np.random.default_rng(n)
    theta0, phi0 = 0.4, 1.5
    d = rng.normal(20.0, 80.0, n)  # model minus baseline length
    x, _ = length_feature(d)
    y = (rng.random(n) < sigmoid(theta0 + phi0 * x)).astype(float)
    theta, phi = fit_logistic(x, y)
    # standard errors from the Fisher information at the truth: tolerance 5 SE, shrinking as 1/√n
    p = sigmoid(theta0 + phi0 * x)
    w = p * (1 - p)
    info = np.array([[w.sum(), (w * x).sum()], [(w * x).sum(), (w * x * x).sum()]])
    se = np.sqrt(np.diag(np.linalg.inv(info)))
    assert abs(theta - theta0) < 5 * se[0] and abs(phi - phi0) < 5 * se[1]


def test_length_feature():
    d = np.array([[-2.0, 0.0, 2.0], [3.0, 3.0, 3.0]])
    x, s = length_feature(d)
    sd = math.sqrt(8 / 3)
    np.testing.assert_allclose(x[0], np.tanh([-2 / sd, 0, 2 / sd]))
    np.testing.assert_array_equal(x[1], 0.0)
    np.testing.assert_allclose(s, [sd, 0.0])


# ---- the report ----

def simulate(n, theta, phi, rng, shift=0.0):
    # lengths: baseline ~ 400 ± 60; model = baseline + d, d ~ N(shift, 100). Each order's verdict is an
    # independent draw with P(model) = σ(θ + φ·tanh(d/100)), so E[preference | d] = P (no ties).
    lb = rng.normal(400, 60, n).round()
    d = rng.normal(shift, 100, n).round()
    p = sigmoid(theta + phi * np.tanh(d / 100))
    side = lambda win: ["model" if w else "baseline" for w in win]  # noqa: E731
    return side(rng.random(n) < p), side(rng.random(n) < p), lb + d, lb


def test_longer_only_model_has_lc_near_half():
    rng = np.random.default_rng(7)
    m, b, lm, lb = simulate(4000, 0.0, 3.0, rng, shift=150.0)
    r = win_rate_report(m, b, lm, lb, n_boot=200)
    assert r["win_rate"] > 0.8 and r["mean_len_model"] > r["mean_len_baseline"] + 100
    assert abs(r["lc_win_rate"] - 0.5) < 0.05
    lo, hi = r["lc_win_rate_ci95"]
    assert lo < 0.5 < hi and hi < r["win_rate"]


def test_bootstrap_covers_the_truth_and_shrinks_with_n():
    theta, phi, shift = 0.3, 1.0, 40.0
    rng = np.random.default_rng(0)
    d = rng.normal(shift, 100, 2_000_000)
    true_wr = sigmoid(theta + phi * np.tanh(d / 100)).mean()  # E[preference], by Monte Carlo (±0.0003)
    hits_wr = hits_lc = 0
    trials = 40
    for t in range(trials):
        r = win_rate_report(*simulate(400, theta, phi, np.random.default_rng(100 + t), shift), n_boot=300, seed=t)
        hits_wr += r["win_rate_ci95"][0] <= true_wr <= r["win_rate_ci95"][1]
        hits_lc += r["lc_win_rate_ci95"][0] <= sigmoid(theta) <= r["lc_win_rate_ci95"][1]
    assert hits_wr >= 0.85 * trials and hits_lc >= 0.85 * trials  # nominal 95%

    width = {}
    for n in (200, 3200):
        r = win_rate_report(*simulate(n, theta, phi, np.random.default_rng(n), shift), n_boot=400)
        width[n] = {k: r[f"{k}_ci95"][1] - r[f"{k}_ci95"][0] for k in ("win_rate", "lc_win_rate")}
    for k in ("win_rate", "lc_win_rate"):
        assert 2.5 < width[200][k] / width[3200][k] < 6.5  # √16 = 4


def test_report_is_seeded_and_counts_missing_verdicts():
    rng = np.random.default_rng(3)
    m, b, lm, lb = simulate(100, 0.2, 1.0, rng)
    m[:5] = [None] * 5
    b[3:8] = [None] * 5
    r1 = win_rate_report(m, b, lm, lb, n_boot=100, seed=11)
    assert r1 == win_rate_report(m, b, lm, lb, n_boot=100, seed=11)
    assert r1 != win_rate_report(m, b, lm, lb, n_boot=100, seed=12)
    assert (r1["n"], r1["n_excluded"], r1["n_one_order"]) == (98, 2, 6)
    pref, _ = preferences(m, b)
    keep = ~np.isnan(pref)
    assert r1["win_rate"] == pytest.approx(pref[keep].mean())
    assert r1["mean_len_model"] == pytest.approx(np.asarray(lm)[keep].mean())
    for k in ("win_rate", "lc_win_rate", "position_consistency", "mean_len_model", "mean_len_baseline"):
        lo, hi = r1[f"{k}_ci95"]
        assert lo <= r1[k] <= hi


def test_degenerate_inputs():
    n = 30
    lens = np.arange(n) * 10.0
    wins = win_rate_report(["model"] * n, ["model"] * n, lens, lens[::-1])
    assert wins["win_rate"] == 1.0 and wins["win_rate_ci95"] == [1.0, 1.0] and wins["lc_win_rate"] > 0.99
    assert math.isfinite(wins["lc_theta"])

    ties = win_rate_report(["tie"] * n, ["tie"] * n, lens, lens[::-1])
    assert ties["win_rate"] == 0.5 and ties["lc_win_rate"] == pytest.approx(0.5, abs=1e-12)
    assert ties["lc_win_rate_ci95"] == pytest.approx([0.5, 0.5], abs=1e-12)

    # equal lengths everywhere: no length term, the LC win rate is the raw one (up to the tiny ridge)
    m = ["model"] * 20 + ["baseline"] * 10
    same = win_rate_report(m, m, [50] * n, [50] * n)
    assert same["lc_phi"] == 0.0 and same["len_scale"] == 0.0
    assert same["lc_win_rate"] == pytest.approx(same["win_rate"], abs=1e-3)

    one_order = win_rate_report(["model", None], [None, "baseline"], [1, 2], [2, 1], n_boot=0)
    assert one_order["position_consistency"] is None and one_order["win_rate_ci95"] is None
    assert one_order["n_one_order"] == 2 and one_order["win_rate"] == 0.5
    single = win_rate_report(["model"], ["model"], [5], [3], n_boot=20)
    assert single["win_rate"] == 1.0 and single["position_consistency"] == 1.0

    with pytest.raises(UserError, match="none of the 2 questions"):
        win_rate_report([None, None], [None, None], [1, 2], [1, 2])
    with pytest.raises(ValueError):
        win_rate_report(["model"], ["model"], [1, 2], [1])


# ---- judge agreement ----

def test_agreement_metrics_by_hand():
    human = [1, 2, 0, 1, 2, 0]
    judge = [1, 1, 0, None, 2, 1]
    r = agreement_metrics(human, judge)
    assert r == {"n": 6, "n_unparsed": 1, "n_human_ties": 2, "accuracy": 2 / 4, "judge_tie_rate": 1 / 5,
                 "agreement_with_ties": 3 / 5, "agreement_without_ties": 2 / 3, "n_without_ties": 3}
    with pytest.raises(ValueError):
        agreement_metrics([3], [1])
    empty = agreement_metrics([0], [None])
    assert empty["accuracy"] is None and empty["agreement_with_ties"] is None


def test_pointwise_agreement():
    r = pointwise_agreement([1, 1, 2, 2], [8, 3, None, 2], [5, 3, 4, 9])  # judge: 1, tie, unparsed, 2
    assert r["accuracy"] == 2 / 4 and r["judge_tie_rate"] == 1 / 3 and r["n_unparsed"] == 1
    assert "position_consistency" not in r


def test_pairwise_agreement_maps_both_orders():
    # order 1 shows answer_1 as A; order 2 shows answer_2 as A
    human = [1, 2, 1, 0, 2, 1]
    v12 = ["A", "B", "A", "tie", None, None]
    v21 = ["B", "A", "A", "tie", "A", None]
    # judge labels: 1 (consistent), 2 (consistent), tie (inconsistent), tie (consistent), 2 (order 2 only), None
    r = pairwise_agreement(human, v12, v21)
    assert r["accuracy"] == 3 / 5 and r["position_consistency"] == 3 / 4
    assert r["agreement_with_ties"] == 4 / 5 and r["agreement_without_ties"] == 1.0 and r["n_unparsed"] == 1
    always_a = pairwise_agreement([1, 2] * 10, ["A"] * 20, ["A"] * 20)
    assert always_a["accuracy"] == 0.0 and always_a["judge_tie_rate"] == 1.0 and always_a["position_consistency"] == 0
