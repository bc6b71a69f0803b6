"""Win rates against a baseline (raw and length-controlled, with bootstrap CIs) and judge agreement with
human labels. Pure numpy in float64; the callers parse the judge's text and pass verdicts in."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import UserError

PREFERENCE = {"model": 1.0, "baseline": 0.0, "tie": 0.5}
# A total (not per-question) ridge λ/2·(θ² + φ²): finite fits for all-win or separable data, and a shift of
# θ of about λθ / Σ p(1 − p), ~1e-4 on the logit scale at n = 805.
L2 = 0.01
N_BOOT = 1000
_BOOT_ELEMS = 1 << 20  # resamples are processed in chunks of ~1M question draws (8 MB per float64 array)


def combine_orders(first, second, tie):
    """One verdict from the two presentation orders, plus whether they agreed (None when one is missing).
    Same verdict → that verdict; different (position-inconsistent, including "win" vs "tie") → tie;
    one order unparseable → the other order alone; both unparseable → None."""
    if first is None or second is None:
        return (second if first is None else first), None
    return (first, True) if first == second else (tie, False)


def model_side(verdict_ab: str | None, model_is_a: bool) -> str | None:
    """A pairwise-prompt verdict ("A" / "B" / "tie" / None) as "model" / "baseline" / "tie" / None."""
    if verdict_ab in (None, "tie"):
        return verdict_ab
    if verdict_ab not in ("A", "B"):
        raise ValueError(f"not a pairwise verdict: {verdict_ab!r}")
    return "model" if (verdict_ab == "A") == model_is_a else "baseline"


def preferences(model_first: Sequence, baseline_first: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Per question: preference for the model in {0, 0.5, 1} (nan: no parseable verdict in either order)
    and position consistency in {0, 1} (nan: an order is missing). Verdicts: "model"/"baseline"/"tie"/None,
    from the judge shown the model's answer first and the baseline's answer first."""
    if len(model_first) != len(baseline_first):
        raise ValueError(f"{len(model_first)} verdicts in one order, {len(baseline_first)} in the other")
    pref = np.full(len(model_first), np.nan)
    cons = np.full(len(model_first), np.nan)
    for i, (a, b) in enumerate(zip(model_first, baseline_first)):
        for v in (a, b):
            if v is not None and v not in PREFERENCE:
                raise ValueError(f"not a verdict: {v!r}")
        verdict, agreed = combine_orders(a, b, "tie")
        if verdict is not None:
            pref[i] = PREFERENCE[verdict]
        if agreed is not None:
            cons[i] = float(agreed)
    return pref, cons


# Length-controlled win rate (the idea of AlpacaEval 2's LC, without its per-instruction term):
#   x_i = tanh(d_i / s),  d_i = len_model_i − len_baseline_i,  s = std(d) (ddof 0; s = 0 → x_i = 0)
#   P(model preferred | i) = σ(θ + φ·x_i)
#   (θ, φ) = argmax Σ_i [y_i·log σ(z_i) + (1 − y_i)·log(1 − σ(z_i))] − (λ/2)(θ² + φ²),  z_i = θ + φ·x_i
#   y_i ∈ {0, 0.5, 1} (soft labels), λ = 0.01;  LC win rate = σ(θ), the prediction at d = 0.
def length_feature(len_diff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # len_diff: [B, n] → x: [B, n] in (−1, 1), s: [B]
    s = len_diff.std(axis=-1)
    safe = np.where(s > 0, s, 1.0)[..., None]
    return np.where(s[..., None] > 0, np.tanh(len_diff / safe), 0.0), s


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow warnings for |z| ≫ 1, unlike 1/(1+exp(−z))


def _loglik(theta, phi, x, y, l2):
    # y·log σ(z) + (1 − y)·log(1 − σ(z)) = y·z − softplus(z): one exp and one log1p per element,
    # 1.2 ms against 6.2 ms for two np.logaddexp calls on [300, 400] (CPU)
    z = theta[:, None] + phi[:, None] * x
    ll = (y * z - np.maximum(z, 0.0) - np.log1p(np.exp(-np.abs(z)))).sum(-1)
    return ll - 0.5 * l2 * (theta**2 + phi**2)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2, iters: int = 100,
                 tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Newton's method on B independent 2-parameter fits at once. x, y: [B, n] (or [n]) → θ, φ: [B] (or
    scalars). Each step is halved while it would lower the penalized log-likelihood, which is strictly
    concave (λ > 0), so every fit converges: ~5 steps on typical data, ~13 when every y is 1 or the
    data are separable (n = 400)."""
    squeeze = np.ndim(x) == 1
    x, y = np.atleast_2d(np.asarray(x, np.float64)), np.atleast_2d(np.asarray(y, np.float64))
    theta, phi = np.zeros(x.shape[0]), np.zeros(x.shape[0])
    ll = _loglik(theta, phi, x, y, l2)
    for _ in range(iters):
        p = _sigmoid(theta[:, None] + phi[:, None] * x)
        r, w = y - p, p * (1.0 - p)
        g0, g1 = r.sum(-1) - l2 * theta, (r * x).sum(-1) - l2 * phi
        h00, h01, h11 = w.sum(-1) + l2, (w * x).sum(-1), (w * x * x).sum(-1) + l2
        det = h00 * h11 - h01 * h01  # ≥ λ² > 0 by Cauchy–Schwarz; 0 only when λ = 0 and x is constant
        two = det > 0
        det = np.where(two, det, 1.0)
        d0 = np.where(two, (h11 * g0 - h01 * g1) / det, g0 / h00)  # (−H)⁻¹ g, or a θ-only step
        d1 = np.where(two, (h00 * g1 - h01 * g0) / det, 0.0)
        t = np.ones_like(theta)
        new = _loglik(theta + d0, phi + d1, x, y, l2)
        slack = 1e-12 * (1.0 + np.abs(ll))  # rounding in a sum of n terms: not a reason to halve
        for _ in range(40):
            worse = new < ll - slack
            if not worse.any():
                break
            t = np.where(worse, 0.5 * t, t)
            new = np.where(worse, _loglik(theta + t * d0, phi + t * d1, x, y, l2), new)
        theta, phi, ll = theta + t * d0, phi + t * d1, new
        if max(np.abs(t * d0).max(), np.abs(t * d1).max()) < tol:
            break
    return (theta[0], phi[0]) if squeeze else (theta, phi)


def _sample_stats(y, cons, lm, lb, l2):
    # y, cons, lm, lb: [B, n] resampled questions → dict of [B]
    d = lm - lb
    x, s = length_feature(d)
    theta, phi = fit_logistic(x, y, l2)
    have = ~np.isnan(cons)
    n_cons = have.sum(-1)
    return {
        "win_rate": y.mean(-1),
        "lc_win_rate": _sigmoid(theta),
        "position_consistency": np.where(have, cons, 0.0).sum(-1) / np.where(n_cons > 0, n_cons, np.nan),
        "mean_len_model": lm.mean(-1),
        "mean_len_baseline": lb.mean(-1),
        "lc_theta": theta, "lc_phi": phi, "len_scale": s,
    }


CI_KEYS = ("win_rate", "lc_win_rate", "position_consistency", "mean_len_model", "mean_len_baseline")


def win_rate_report(model_first: Sequence, baseline_first: Sequence, len_model: Sequence[float],
                    len_baseline: Sequence[float], *, n_boot: int = N_BOOT, seed: int = 0,
                    l2: float = L2) -> dict:
    """Win rate, LC win rate, position consistency and mean lengths over the questions with at least one
    parseable verdict, each with a 95% percentile-bootstrap interval (`<key>_ci95`, None when n_boot = 0):
    questions are resampled with replacement n_boot times (seeded) and every statistic, the LC fit
    included, is recomputed on each resample. Lengths are whatever unit the caller counts (tokens by
    default in the CLI)."""
    pref, cons = preferences(model_first, baseline_first)
    lm, lb = np.asarray(len_model, np.float64), np.asarray(len_baseline, np.float64)
    if not (lm.shape == lb.shape == pref.shape):
        raise ValueError(f"{pref.size} questions but {lm.size} model and {lb.size} baseline lengths")
    keep = ~np.isnan(pref)
    n = int(keep.sum())
    if n == 0:
        raise UserError(f"none of the {pref.size} questions has a parseable judge verdict in either order")
    y, cons, lm, lb = pref[keep], cons[keep], lm[keep], lb[keep]
    point = _sample_stats(y[None], cons[None], lm[None], lb[None], l2)
    point = {k: None if np.isnan(v[0]) else float(v[0]) for k, v in point.items()}
    out = {"n": n, "n_excluded": int(pref.size - n), "n_one_order": int(np.isnan(cons).sum()),
           "n_boot": n_boot, "seed": seed, **point}
    if n_boot <= 0:
        return out | {f"{k}_ci95": None for k in CI_KEYS}
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))  # idx: [B, n]
    chunk = max(1, _BOOT_ELEMS // n)
    boot = [_sample_stats(y[i], cons[i], lm[i], lb[i], l2) for i in np.array_split(idx, -(-n_boot // chunk))]
    for k in CI_KEYS:
        v = np.concatenate([b[k] for b in boot])
        v = v[~np.isnan(v)]
        out[f"{k}_ci95"] = [float(q) for q in np.percentile(v, [2.5, 97.5])] if v.size else None
    return out


# ---- judge agreement with human labels: labels 1 (answer_1 better), 2 (answer_2 better), 0 (tie) ----

def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def agreement_metrics(human: Sequence[int], judge: Sequence[int | None],
                      consistent: Sequence[bool | None] | None = None) -> dict:
    """accuracy: on rows with a non-tie human label, the judge picked the same answer (a judge tie or an
    unparseable judgment counts as wrong); agreement_with_ties: exact match in {0, 1, 2} over rows the
    judge answered; agreement_without_ties: rows where both human and judge chose an answer."""
    if len(human) != len(judge):
        raise ValueError(f"{len(human)} human labels, {len(judge)} judge labels")
    for v in (*human, *(j for j in judge if j is not None)):
        if v not in (0, 1, 2):
            raise ValueError(f"not a label: {v!r}")
    rows = list(zip(human, judge))
    decided = [(h, j) for h, j in rows if h != 0]
    parsed = [(h, j) for h, j in rows if j is not None]
    both = [(h, j) for h, j in parsed if h != 0 and j != 0]
    out = {
        "n": len(rows), "n_unparsed": len(rows) - len(parsed), "n_human_ties": len(rows) - len(decided),
        "accuracy": _ratio(sum(h == j for h, j in decided), len(decided)),
        "judge_tie_rate": _ratio(sum(j == 0 for _, j in parsed), len(parsed)),
        "agreement_with_ties": _ratio(sum(h == j for h, j in parsed), len(parsed)),
        "agreement_without_ties": _ratio(sum(h == j for h, j in both), len(both)),
        "n_without_ties": len(both),
    }
    if consistent is not None:
        known = [c for c in consistent if c is not None]
        out["position_consistency"] = _ratio(sum(map(bool, known)), len(known))
    return out


def pointwise_label(score_1: float | None, score_2: float | None) -> int | None:
    if score_1 is None or score_2 is None:
        return None
    return 1 if score_1 > score_2 else 2 if score_2 > score_1 else 0


def pointwise_agreement(human: Sequence[int], scores_1: Sequence, scores_2: Sequence) -> dict:
    """The pointwise judge scored each answer on its own; equal scores are a judge tie, a missing score
    makes the row unparsed."""
    return agreement_metrics(human, [pointwise_label(a, b) for a, b in zip(scores_1, scores_2, strict=True)])


_ORDER_12 = {"A": 1, "B": 2, "tie": 0}  # answer_1 shown as Response A
_ORDER_21 = {"A": 2, "B": 1, "tie": 0}  # answer_2 shown as Response A


def pairwise_agreement(human: Sequence[int], verdicts_12: Sequence, verdicts_21: Sequence) -> dict:
    """The pairwise judge saw both orders; verdicts "A"/"B"/"tie"/None. Orders are combined as in the win
    rate (combine_orders): inconsistent → tie, one missing → the other."""
    labels, consistent = [], []
    for a, b in zip(verdicts_12, verdicts_21, strict=True):
        j, c = combine_orders(None if a is None else _ORDER_12[a], None if b is None else _ORDER_21[b], 0)
        labels.append(j)
        consistent.append(c)
    return agreement_metrics(human, labels, consistent)
