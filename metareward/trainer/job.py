"""`metareward train-dpo`: a pairs file and a model in, a trained HF checkpoint (+ metrics.jsonl) out.
Runs as one process or under torchrun (FSDP2)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from .config import DPOConfig
from ..errors import UserError, warn
from .data import TruncationWarning, load_pairs
from .distributed import init_from_env, shard
from .dpo import NonFiniteError, train


def check_output_dir(path: str | Path, force: bool) -> None:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"output {p} exists and is not a directory")
    if p.is_dir() and any(p.iterdir()) and not force:
        raise UserError(f"output directory {p} is not empty (use --force to replace it)")


def train_dpo(model_path: str, pairs_path: str, output: str, cfg: DPOConfig, force: bool = False,
              dtype: str | None = None, device: str | None = None, chat_template: str | None = None) -> dict:
    from .. import load_model, save_model

    check_output_dir(output, force)
    dist, dist_device = init_from_env()
    device = dist_device or device
    fsdp_cuda = dist.enabled and torch.device(device or "cpu").type == "cuda"
    # under FSDP on GPUs the sharded float32 parameters are the master weights, gathered in bf16 to compute
    model, tok = load_model(model_path, dtype=dtype or ("float32" if fsdp_cuda else None), device=device,
                            chat_template=chat_template)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TruncationWarning)
        pairs, stats = load_pairs(pairs_path, tok, cfg.max_length)
    for w in caught:
        warn(str(w.message))
    if dist.enabled:
        shard(model, dist, mixed_precision=fsdp_cuda and dtype is None)
    history: list[dict] = []
    failure = None
    try:
        train(model, pairs, cfg, dist, on_step=history.append)
    except NonFiniteError as e:
        failure = e  # save the last good weights, then report
    metrics = "".join(json.dumps(m) + "\n" for m in history)
    save_model(model, tok, output, extra_files={"metrics.jsonl": metrics})
    if failure:
        raise UserError(f"{failure}; they were saved to {output}")
    last = history[-1] if history else {}
    return {"pairs": stats.kept, "truncated": stats.truncated, "dropped": stats.dropped, "steps": len(history),
            "final": {k: last.get(k) for k in ("loss", "rewards/accuracies", "rewards/margins")},
            "output": str(output)}
