"""The learning rate as a pure function of the step (nanoGPT's get_lr): linear warmup, then a decay."""
from __future__ import annotations

import math
from typing import Callable

from ..errors import UserError

# decay coefficient over the post-warmup steps, as a function of progress r in [0, 1]: 1 -> peak, 0 -> min
DECAYS: dict[str, Callable[[float], float]] = {
    "cosine": lambda r: 0.5 * (1.0 + math.cos(math.pi * r)),
    "linear": lambda r: 1.0 - r,
    "constant": lambda r: 1.0,
}


def lr_at(step: int, total_steps: int, peak_lr: float, warmup_steps: int, kind: str = "cosine",
          min_lr_ratio: float = 0.0) -> float:
    """Learning rate of optimizer step `step` (0-based) of `total_steps`.
    Warmup: peak * (step+1) / (warmup+1) for step < warmup, so the first step already moves (nanoGPT) and
    step == warmup is the peak. Then `kind` decays from peak at step == warmup to peak * min_lr_ratio at
    step == total_steps (one past the last step, so the last step still learns); min after that.
    `constant` stays at peak after warmup."""
    if kind not in DECAYS:
        raise UserError(f"unknown learning-rate schedule {kind!r}: choose one of {', '.join(DECAYS)}")
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise UserError(f"need total_steps >= 1 and 0 <= warmup_steps <= total_steps, "
                        f"got {total_steps} and {warmup_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise UserError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return peak_lr * (step + 1) / (warmup_steps + 1)
    r = 1.0 if step >= total_steps else (step - warmup_steps) / (total_steps - warmup_steps)
    min_lr = peak_lr * min_lr_ratio
    return min_lr + DECAYS[kind](r) * (peak_lr - min_lr)


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    # rounded up as in transformers' TrainingArguments.get_warmup_steps, but 100 * 0.07 = 7.000000000000001
    # gives 7 here, not 8
    if not 0.0 <= warmup_ratio <= 1.0:
        raise UserError(f"warmup_ratio must be in [0, 1], got {warmup_ratio}")
    return math.ceil(round(total_steps * warmup_ratio, 9))
