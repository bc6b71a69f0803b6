"""DPO settings (`dpo.*` in a run's config, the options of `metareward train-dpo`). The loss and schedule
names are those of trainer/losses.py LOSSES and trainer/schedule.py DECAYS (a test keeps them equal); this
module imports neither, so reading a config never loads the trainer."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..settings import Settings


class DPOConfig(Settings):
    per_iteration = True
    loss: Literal["sigmoid", "ipo"] = Field("sigmoid", description="sigmoid: DPO; ipo: IPO (per-token averages)")
    beta: float = Field(0.1, gt=0, le=100, description="KL strength")
    label_smoothing: float = Field(0.0, ge=0, le=0.5, description="conservative DPO (sigmoid loss only)")
    alpha: float = Field(0.0, ge=0, description="weight of the chosen response's NLL per token (RPO)")
    lr: float = Field(1e-6, gt=0, le=1, description="peak learning rate")
    epochs: int = Field(1, ge=1, le=1000)
    batch_size: int = Field(16, ge=1, description="pairs per optimizer step, over all processes")
    micro_batch_tokens: int = Field(8192, ge=1, description="tokens per forward/backward pass on one process")
    max_length: int = Field(2048, ge=2, description="prompt + response tokens; longer pairs are truncated")
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0, description="0: no clipping")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), strict=False)
    seed: int = Field(0, ge=0)
    gradient_checkpointing: bool = False
    master_weights: bool = Field(True, description="float32 master weights when the model is in bf16/fp16")

    @field_validator("adam_betas")
    @classmethod
    def _betas(cls, v):
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"two values in [0, 1), got {list(v)}")
        return v

    @model_validator(mode="after")
    def _smoothing(self):
        if self.loss == "ipo" and self.label_smoothing:
            raise ValueError("label_smoothing applies to the sigmoid loss only, not to ipo")
        return self
