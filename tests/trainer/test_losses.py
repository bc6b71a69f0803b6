import math

import pytest
import torch

from metareward.errors import UserError
from metareward.trainer.losses import LOSSES, LogProbs, dpo_loss, metrics


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def sigma(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# three pairs: summed log-probs (policy, reference) and response-token counts
PC, PR = [-10.0, -20.0, -7.0], [-12.0, -18.0, -9.5]
RC, RR = [-11.0, -19.0, -7.0], [-11.5, -19.5, -8.0]
NC, NR = [4, 10, 3], [5, 8, 2]


def logprobs(pc=PC, pr=PR, rc=RC, rr=RR, counts=True, grad=False) -> LogProbs:
    def t(x):
        return torch.tensor(x, dtype=torch.float64, requires_grad=grad)

    nc, nr = (torch.tensor(NC), torch.tensor(NR)) if counts else (None, None)
    return LogProbs(t(pc), t(pr), t(rc), t(rr), nc, nr)


def margins() -> list[float]:  # h = (pi_c - ref_c) - (pi_r - ref_r): [1.5, -2.5, 1.5]
    return [(pc - rc) - (pr - rr) for pc, pr, rc, rr in zip(PC, PR, RC, RR)]


def test_losses_is_a_table():
    assert set(LOSSES) == {"sigmoid", "ipo"}
    with pytest.raises(UserError, match="unknown loss 'hinge'"):
        dpo_loss(logprobs(), "hinge")


def test_sigmoid_hand_computed():
    assert margins() == [1.5, -2.5, 1.5]
    out = dpo_loss(logprobs(), "sigmoid", beta=0.1)
    # -log sigma(0.1 * h) for h = 1.5, -2.5, 1.5
    expected = [-log_sigmoid(0.15), -log_sigmoid(-0.25), -log_sigmoid(0.15)]
    assert expected[0] == pytest.approx(0.620957, abs=1e-6) and expected[1] == pytest.approx(0.825939, abs=1e-6)
    torch.testing.assert_close(out.losses, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.1, -0.1, 0.0], dtype=torch.float64))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-0.05, 0.15, -0.15], dtype=torch.float64))
    torch.testing.assert_close(out.chosen_logps, torch.tensor(PC, dtype=torch.float64))


def test_sigmoid_is_log2_when_policy_equals_reference():
    out = dpo_loss(logprobs(rc=PC, rr=PR), "sigmoid", beta=0.5)
    torch.testing.assert_close(out.losses, torch.full((3,), math.log(2), dtype=torch.float64))
    assert out.chosen_rewards.abs().max() == 0 and out.rejected_rewards.abs().max() == 0


def test_label_smoothing():
    eps, beta = 0.2, 0.5
    out = dpo_loss(logprobs(), "sigmoid", beta=beta, label_smoothing=eps)
    expected = [-(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h) for h in margins()]
    torch.testing.assert_close(out.losses, torch.tensor(expected, dtype=torch.float64))
    # h = 1.5: 0.8 * -log sigma(0.75) + 0.2 * -log sigma(-0.75)
    assert expected[0] == pytest.approx(0.8 * 0.386871 + 0.2 * 1.136871, abs=1e-6)


def test_ipo_averages_over_tokens():
    beta = 0.25
    out = dpo_loss(logprobs(), "ipo", beta=beta)
    expected, rc, rr = [], [], []
    for pc, pr, refc, refr, nc, nr in zip(PC, PR, RC, RR, NC, NR):
        c, r = (pc - refc) / nc, (pr - refr) / nr
        expected.append((c - r - 1 / (2 * beta)) ** 2)
        rc.append(beta * c)
        rr.append(beta * r)
    # pair 0: c = 1/4, r = -0.5/5 = -0.1, (0.35 - 2)^2 = 2.7225
    assert expected[0] == pytest.approx(2.7225)
    torch.testing.assert_close(out.losses, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(out.chosen_rewards, torch.tensor(rc, dtype=torch.float64))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor(rr, dtype=torch.float64))
    torch.testing.assert_close(out.chosen_logps, torch.tensor([-2.5, -2.0, -7 / 3], dtype=torch.float64))


def test_ipo_needs_counts_and_refuses_label_smoothing():
    with pytest.raises(UserError, match="chosen_tokens and rejected_tokens"):
        dpo_loss(logprobs(counts=False), "ipo")
    with pytest.raises(UserError, match="sigmoid loss only"):
        dpo_loss(logprobs(), "ipo", label_smoothing=0.1)


def test_alpha_adds_per_token_nll_of_chosen():
    alpha, beta = 0.7, 0.1
    out = dpo_loss(logprobs(), "sigmoid", beta=beta, alpha=alpha)
    expected = [-log_sigmoid(beta * h) + alpha * (-pc / nc) for h, pc, nc in zip(margins(), PC, NC)]
    # pair 0: -log sigma(0.15) + 0.7 * 10/4
    assert expected[0] == pytest.approx(0.620957 + 1.75, abs=1e-6)
    torch.testing.assert_close(out.losses, torch.tensor(expected, dtype=torch.float64))
    with pytest.raises(UserError, match="needs chosen_tokens"):
        dpo_loss(logprobs(counts=False), "sigmoid", alpha=alpha)


@pytest.mark.parametrize("bad", [dict(beta=0.0), dict(beta=-1.0), dict(label_smoothing=0.6),
                                 dict(label_smoothing=-0.1), dict(alpha=-1.0)])
def test_bad_hyperparameters(bad):
    with pytest.raises(UserError):
        dpo_loss(logprobs(), "sigmoid", **bad)


@pytest.mark.parametrize("eps,alpha", [(0.0, 0.0), (0.3, 0.0), (0.1, 0.5)])
def test_sigmoid_gradients(eps, alpha):
    beta = 0.4
    lp = logprobs(grad=True)
    dpo_loss(lp, "sigmoid", beta=beta, label_smoothing=eps, alpha=alpha).losses.sum().backward()
    # d/dx [-log sigma(x)] = -sigma(-x): dL/dpi_c = beta * (-(1-eps) sigma(-beta h) + eps sigma(beta h)) - alpha/n_c
    g = [beta * (-(1 - eps) * sigma(-beta * h) + eps * sigma(beta * h)) for h in margins()]
    gc = [x - alpha / n for x, n in zip(g, NC)]
    torch.testing.assert_close(lp.policy_chosen.grad, torch.tensor(gc, dtype=torch.float64))
    torch.testing.assert_close(lp.policy_rejected.grad, torch.tensor([-x for x in g], dtype=torch.float64))


def test_ipo_gradients():
    beta, alpha = 0.25, 0.3
    lp = logprobs(grad=True)
    dpo_loss(lp, "ipo", beta=beta, alpha=alpha).losses.sum().backward()
    gc, gr = [], []
    for pc, pr, refc, refr, nc, nr in zip(PC, PR, RC, RR, NC, NR):
        d = 2 * ((pc - refc) / nc - (pr - refr) / nr - 1 / (2 * beta))
        gc.append(d / nc - alpha / nc)
        gr.append(-d / nr)
    torch.testing.assert_close(lp.policy_chosen.grad, torch.tensor(gc, dtype=torch.float64))
    torch.testing.assert_close(lp.policy_rejected.grad, torch.tensor(gr, dtype=torch.float64))


def test_rewards_and_logps_carry_no_gradient():
    out = dpo_loss(logprobs(grad=True), "sigmoid")
    assert out.losses.requires_grad
    assert not any(t.requires_grad for t in (out.chosen_rewards, out.rejected_rewards, out.chosen_logps))


def test_metrics_names_and_values():
    out = dpo_loss(logprobs(), "sigmoid", beta=0.1)
    m = metrics(out)
    assert list(m) == ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                       "logps/chosen", "logps/rejected"]
    # rewards chosen [0.1, -0.1, 0], rejected [-0.05, 0.15, -0.15]: pairs 0 and 2 are right
    assert m["rewards/chosen"] == pytest.approx(0.0)
    assert m["rewards/rejected"] == pytest.approx(-0.05 / 3)
    assert m["rewards/accuracies"] == pytest.approx(2 / 3)
    assert m["rewards/margins"] == pytest.approx((0.15 - 0.25 + 0.15) / 3)
    assert m["logps/chosen"] == pytest.approx(-37 / 3)
    assert m["logps/rejected"] == pytest.approx(-39.5 / 3)
    assert m["loss"] == pytest.approx((2 * -log_sigmoid(0.15) - log_sigmoid(-0.25)) / 3)
    # several outputs (a step's micro-batches) give the means over all their pairs
    a = dpo_loss(logprobs(pc=PC[:1], pr=PR[:1], rc=RC[:1], rr=RR[:1], counts=False), "sigmoid", beta=0.1)
    b = dpo_loss(logprobs(pc=PC[1:], pr=PR[1:], rc=RC[1:], rr=RR[1:], counts=False), "sigmoid", beta=0.1)
    assert metrics([a, b]) == pytest.approx(m)


def test_ties_are_not_accurate():
    out = dpo_loss(logprobs(rc=PC, rr=PR), "sigmoid")
    assert metrics(out)["rewards/accuracies"] == 0.0
