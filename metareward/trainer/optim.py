"""AdamW, with float32 master weights when the model itself is in bfloat16/float16 (one process on a GPU).
The model's parameters stay the tensors the engine generates from: an update is copied into them in place."""
from __future__ import annotations

import torch


def adamw(params, lr: float, betas, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    # fused: one kernel for all parameters on CUDA instead of a dozen per parameter
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=device.type == "cuda")


class MasterWeights:
    """AdamW on float32 copies of low-precision parameters (these copies are optimizer state, like Adam's
    moments; the model's own tensors are the only weights anything computes with)."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float, betas, weight_decay: float):
        self.params = params
        self.master = [p.detach().float().clone().requires_grad_(True) for p in params]
        self.opt = adamw(self.master, lr, betas, weight_decay, params[0].device)
        self.param_groups = self.opt.param_groups

    @torch.no_grad()
    def step(self) -> None:
        for p, m in zip(self.params, self.master):
            m.grad = None if p.grad is None else p.grad.float()
        self.opt.step()
        for p, m in zip(self.params, self.master):
            p.copy_(m)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None
        self.opt.zero_grad(set_to_none)


def make_optimizer(model, lr: float, betas, weight_decay: float, master_weights: bool):
    params = [p for p in model.parameters() if p.requires_grad]
    low = params[0].dtype in (torch.bfloat16, torch.float16)
    if master_weights and low and not hasattr(params[0], "full_tensor"):
        return MasterWeights(params, lr, betas, weight_decay)
    return adamw(params, lr, betas, weight_decay, params[0].device)
