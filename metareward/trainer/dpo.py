"""In-place DPO, read top to bottom: reference log-probs from the current weights (once, before the first
update), then for each optimizer step the micro-batches' forward/backward, clipping, a finite check and
the AdamW update, written straight into the tensors the engine generates from."""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
from tqdm.auto import tqdm

from .config import DPOConfig
from ..errors import UserError
from ..model.attention import Packed
from ..utils import peak_memory, reset_peak_memory
from .data import PackedBatch, TokenizedPair, epoch_steps, micro_batches, pack, rank_share, sequence_logps
from .distributed import Dist, is_sharded
from .losses import LogProbs, dpo_loss, metric_sums, metrics_from_sums
from .optim import make_optimizer
from .schedule import lr_at, warmup_steps


class NonFiniteError(UserError):
    def __init__(self, step: int, what: str):
        super().__init__(f"non-finite {what} at optimizer step {step}: training stopped before that update, "
                         f"the weights are those after step {step - 1}")
        self.step = step


def policy_logps(model, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs of every chosen and rejected sequence -> (chosen [P], rejected [P])."""
    lp = model.token_logprobs(batch.input_ids, batch.positions, Packed(batch.seq_lens), batch.loss_index,
                              batch.targets[batch.loss_index])
    return sequence_logps(lp, batch)


@torch.no_grad()
def reference_logps(model, pairs: list[TokenizedPair], cfg: DPOConfig, dist: Dist, use_tqdm: bool = True):
    """[P, 2] (chosen, rejected) log-probs of every pair under the current weights: the DPO reference.
    Each process scores its share; the shares are summed into every process's table."""
    device = model.device
    plans = [micro_batches(pairs, rank_share(range(len(pairs)), r, dist.world_size), cfg.micro_batch_tokens)
             for r in range(dist.world_size)]
    mine, passes = plans[dist.rank], max(map(len, plans))
    ref = torch.zeros(len(pairs), 2, dtype=torch.float32, device=device)
    for k in tqdm(range(passes), desc="reference log-probs", disable=not (use_tqdm and dist.is_main)):
        idx = mine[k] if k < len(mine) else [0]  # padding pass: FSDP needs every process in each all-gather
        batch = pack(pairs, idx).to(device)
        c, r = policy_logps(model, batch)
        if k < len(mine):
            ref[idx] = torch.stack([c, r], dim=1).float()
    if is_sharded(model):
        model.reshard()  # a forward without backward leaves the root gathered
    return dist.all_reduce(ref)


def train(model, pairs: list[TokenizedPair], cfg: DPOConfig, dist: Dist | None = None,
          on_step: Callable[[dict], None] | None = None, use_tqdm: bool = True) -> list[dict]:
    """DPO on `pairs`, updating `model` in place. Returns one metrics dict per optimizer step."""
    dist = dist or Dist()
    device = model.device
    # The optimizer takes the parameters before any forward: under FSDP2 the root's parameters are swapped
    # for their gathered versions during and after a forward, and the optimizer must hold the shards.
    opt = make_optimizer(model, cfg.lr, cfg.adam_betas, cfg.weight_decay, cfg.master_weights)
    params = [p for p in model.parameters() if p.requires_grad]
    ref = reference_logps(model, pairs, cfg, dist, use_tqdm)
    plan = [s for e in range(cfg.epochs) for s in epoch_steps(pairs, cfg.seed, e, cfg.batch_size,
                                                              cfg.micro_batch_tokens, dist.rank, dist.world_size)]
    total, warm = len(plan), warmup_steps(len(plan), cfg.warmup_ratio)
    model.gradient_checkpointing = cfg.gradient_checkpointing
    model.train()
    history = []
    bar = tqdm(total=total, desc="dpo", unit="step", disable=not (use_tqdm and dist.is_main), dynamic_ncols=True)
    try:
        for step, st in enumerate(plan):
            t0 = time.perf_counter()
            reset_peak_memory(device)
            lr = lr_at(step, total, cfg.lr, warm, cfg.schedule, cfg.min_lr_ratio)
            for g in opt.param_groups:
                g["lr"] = lr
            outs, tokens = [], 0
            for k in range(st.max_micro_batches):
                real = k < len(st.micro_batches)
                idx = st.micro_batches[k] if real else [0]  # padding pass (loss scaled by 0), see above
                batch = pack(pairs, idx).to(device)
                c, r = policy_logps(model, batch)
                rows = torch.tensor(idx, device=device)
                lp = LogProbs(c, r, ref[rows, 0], ref[rows, 1], batch.chosen_tokens.to(c.dtype),
                              batch.rejected_tokens.to(c.dtype))
                out = dpo_loss(lp, cfg.loss, cfg.beta, cfg.label_smoothing, cfg.alpha)
                # mean over the global batch; FSDP averages gradients over processes, hence * world_size
                scale = dist.world_size / st.num_pairs if real else 0.0
                (out.losses.sum() * scale).backward()
                if real:
                    outs.append(out)
                    tokens += batch.input_ids.numel()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or math.inf)
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
            sums = metric_sums(outs) if outs else torch.zeros(8, device=device)
            sums = dist.all_reduce(torch.cat([sums, torch.tensor([float(tokens)], device=device)]))
            m = metrics_from_sums(sums[:-1])
            gn = grad_norm.item()
            if not math.isfinite(m["loss"]) or not math.isfinite(gn):
                opt.zero_grad(set_to_none=True)
                raise NonFiniteError(step, "loss" if not math.isfinite(m["loss"]) else "gradient")
            opt.step()
            opt.zero_grad(set_to_none=True)
            model.weights_version += 1
            if device.type == "cuda":  # opt.step() only queues its kernels: the step ends when they do
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0
            m.update({"step": step, "epoch": step * cfg.epochs // total, "grad_norm": gn, "learning_rate": lr,
                      "tokens_per_s": sums[-1].item() / seconds, "peak_memory_bytes": peak_memory(device),
                      "pairs": st.num_pairs})
            history.append(m)
            if on_step:
                on_step(m)
            bar.update(1)
            bar.set_postfix_str(f"loss {m['loss']:.4f} acc {m['rewards/accuracies']:.2f} "
                                f"{m['tokens_per_s']:.0f} tok/s", refresh=False)
    finally:
        bar.close()
        model.eval()
        model.gradient_checkpointing = False
    return history
