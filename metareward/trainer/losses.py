"""DPO-family losses as pure functions over summed sequence log-probs (torchtune style). Each loss maps a
`LogProbs` of P pairs to per-pair losses [P] plus the implicit rewards; `LOSSES` picks one by name."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import UserError


@dataclass
class LogProbs:
    # all [P]: log-probs summed over each response's tokens; the policy ones carry gradients
    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    reference_chosen: torch.Tensor
    reference_rejected: torch.Tensor
    chosen_tokens: torch.Tensor | None = None    # [P] response-token counts: IPO and the NLL term need them
    rejected_tokens: torch.Tensor | None = None  # [P]: IPO needs them

    def per_token(self) -> "LogProbs":
        if self.chosen_tokens is None or self.rejected_tokens is None:
            raise UserError("this loss averages log-probs over tokens: chosen_tokens and rejected_tokens are needed")
        nc, nr = self.chosen_tokens, self.rejected_tokens
        return replace(self, policy_chosen=self.policy_chosen / nc, policy_rejected=self.policy_rejected / nr,
                       reference_chosen=self.reference_chosen / nc, reference_rejected=self.reference_rejected / nr)


@dataclass
class LossOutput:
    losses: torch.Tensor            # [P], differentiable: the caller reduces (sum / pairs in the global batch)
    chosen_rewards: torch.Tensor    # [P] beta * (pi_c - ref_c), detached
    rejected_rewards: torch.Tensor  # [P] beta * (pi_r - ref_r), detached
    chosen_logps: torch.Tensor      # [P] the policy log-probs the loss saw (per-token averages for IPO), detached
    rejected_logps: torch.Tensor    # [P]


def _output(losses: torch.Tensor, lp: LogProbs, beta: float) -> LossOutput:
    with torch.no_grad():
        return LossOutput(losses, beta * (lp.policy_chosen - lp.reference_chosen),
                          beta * (lp.policy_rejected - lp.reference_rejected),
                          lp.policy_chosen.detach(), lp.policy_rejected.detach())


def sigmoid_loss(lp: LogProbs, beta: float, label_smoothing: float = 0.0) -> LossOutput:
    # DPO (Rafailov et al. 2023); label_smoothing eps > 0 is conservative DPO: the preference label is
    # assumed flipped with probability eps. h = (pi_c - ref_c) - (pi_r - ref_r).
    h = (lp.policy_chosen - lp.reference_chosen) - (lp.policy_rejected - lp.reference_rejected)
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return _output(losses, lp, beta)


def ipo_loss(lp: LogProbs, beta: float, label_smoothing: float = 0.0) -> LossOutput:
    # IPO (Azar et al. 2023) as TRL computes it: every log-prob is first averaged over its response's tokens,
    # then loss = (h - 1/(2 beta))^2; the rewards and logps metrics use those averages too.
    if label_smoothing:
        raise UserError("label_smoothing applies to the sigmoid loss only, not to ipo")
    lp = lp.per_token()
    h = (lp.policy_chosen - lp.reference_chosen) - (lp.policy_rejected - lp.reference_rejected)
    return _output((h - 1 / (2 * beta)) ** 2, lp, beta)


LOSSES: dict[str, Callable[[LogProbs, float, float], LossOutput]] = {"sigmoid": sigmoid_loss, "ipo": ipo_loss}


def dpo_loss(lp: LogProbs, kind: str = "sigmoid", beta: float = 0.1, label_smoothing: float = 0.0,
             alpha: float = 0.0) -> LossOutput:
    """Per-pair losses of `kind`, plus alpha times the chosen response's NLL per token (RPO, Pang et al.
    2024, TRL's rpo_alpha). The NLL is normalized per pair (-pi_c / chosen tokens), not over all the chosen
    tokens of a batch as TRL does: per pair, a pair's loss does not depend on which micro-batch it lands in."""
    if kind not in LOSSES:
        raise UserError(f"unknown loss {kind!r}: choose one of {', '.join(LOSSES)}")
    if not beta > 0:
        raise UserError(f"beta must be > 0, got {beta}")
    if not 0 <= label_smoothing <= 0.5:
        raise UserError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    if alpha < 0:
        raise UserError(f"alpha must be >= 0, got {alpha}")
    out = LOSSES[kind](lp, beta, label_smoothing)
    if alpha:
        if lp.chosen_tokens is None:
            raise UserError("the NLL term (alpha > 0) needs chosen_tokens")
        out.losses = out.losses - alpha * lp.policy_chosen / lp.chosen_tokens
    return out


METRIC_NAMES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected")


def metric_sums(outs: LossOutput | Sequence[LossOutput]) -> torch.Tensor:
    """[len(METRIC_NAMES) + 1]: each metric summed over the pairs, then the pair count. Sums (not means) so
    that several processes can add theirs with one all-reduce."""
    outs = [outs] if isinstance(outs, LossOutput) else list(outs)
    cat = {f: torch.cat([getattr(o, f).detach().reshape(-1).float() for o in outs])
           for f in ("losses", "chosen_rewards", "rejected_rewards", "chosen_logps", "rejected_logps")}
    c, r = cat["chosen_rewards"], cat["rejected_rewards"]
    return torch.stack([cat["losses"].sum(), c.sum(), r.sum(), (c > r).float().sum(), (c - r).sum(),
                        cat["chosen_logps"].sum(), cat["rejected_logps"].sum(),
                        torch.tensor(float(c.numel()), device=c.device)])


def metrics_from_sums(sums: torch.Tensor) -> dict[str, float]:
    vals = sums.tolist()  # one host sync for the lot
    return {name: v / max(vals[-1], 1.0) for name, v in zip(METRIC_NAMES, vals)}


def metrics(outs: LossOutput | Sequence[LossOutput]) -> dict[str, float]:
    """Means over all pairs of one or several outputs (e.g. a step's micro-batches), under TRL's names."""
    return metrics_from_sums(metric_sums(outs))
