"""Settings as dataclasses, validated in __post_init__; YAML in and out."""
from __future__ import annotations

from dataclasses import dataclass, fields

from .errors import UserError
from .trainer.losses import LOSSES
from .trainer.schedule import DECAYS


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


@dataclass
class DPOConfig:
    loss: str = "sigmoid"  # sigmoid | ipo
    beta: float = 0.1
    label_smoothing: float = 0.0
    alpha: float = 0.0  # weight of the chosen response's NLL (RPO)
    lr: float = 1e-6
    epochs: int = 1
    batch_size: int = 16  # pairs per optimizer step, over all processes
    micro_batch_tokens: int = 8192  # tokens per forward/backward pass on one process
    max_length: int = 2048  # prompt + response tokens; longer pairs are truncated
    warmup_ratio: float = 0.1
    schedule: str = "cosine"  # cosine | linear | constant
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0: no clipping
    adam_betas: tuple[float, float] = (0.9, 0.999)
    seed: int = 0
    gradient_checkpointing: bool = False
    master_weights: bool = True  # float32 master weights when the model is in bf16/fp16; False: pure bf16

    def __post_init__(self):
        self.adam_betas = tuple(self.adam_betas)
        _check(self.loss in LOSSES, f"unknown loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        _check(self.schedule in DECAYS, f"unknown schedule {self.schedule!r}: choose one of {', '.join(DECAYS)}")
        _check(self.beta > 0, f"beta must be > 0, got {self.beta}")
        _check(0 <= self.label_smoothing <= 0.5, f"label_smoothing must be in [0, 0.5], got {self.label_smoothing}")
        _check(self.alpha >= 0, f"alpha must be >= 0, got {self.alpha}")
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        for name in ("epochs", "batch_size", "micro_batch_tokens", "max_length"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1,
                   f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        _check(0 <= self.warmup_ratio <= 1, f"warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        _check(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _check(self.weight_decay >= 0 and self.max_grad_norm >= 0, "weight_decay and max_grad_norm must be >= 0")
        _check(len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas), "adam_betas: two values in [0, 1)")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
