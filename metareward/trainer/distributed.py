"""Several processes (torchrun): who am I, collectives that are no-ops in one process, and FSDP2.

FSDP2 shards parameters, gradients and optimizer state: fully_shard per decoder layer, then the root.
Generation runs on the same sharded module: `gathered(model)` all-gathers every layer once for the whole
generation phase and reshards after; nothing is copied beside it."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as td


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            td.all_reduce(t)
        return t

    def all_gather_object(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        td.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        if not self.enabled:
            return obj
        box = [obj]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            td.barrier()


def init_from_env() -> tuple[Dist, str | None]:
    """-> (Dist, device) from torchrun's environment; device is None for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), None
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    if not td.is_initialized():
        td.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world, local), f"cuda:{local}" if cuda else "cpu"


def shard(model, dist: Dist, mixed_precision: bool) -> None:
    """FSDP2 in place. With mixed_precision the sharded parameters stay float32 (the master weights) and are
    all-gathered in bfloat16 for compute; gradients are reduced in float32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(model.device.type, (dist.world_size,))
    kw = {"mesh": mesh}
    if mixed_precision:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, **kw)
    fully_shard(model, **kw)
    # The trainer enters through this method, not forward(): the root must gather its own parameters
    # (embedding, final norm, lm_head) around it.
    register_fsdp_forward_method(model, "token_logprobs")


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gathered(model):
    """Unshard the FSDP2 module for a generation phase (one all-gather per layer, not one per step), then
    reshard. A no-op for an unsharded model."""
    if not (td.is_available() and is_sharded(model)):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    # FSDP decides which module is the root on the first hooked call: make sure it is the real root.
    with torch.no_grad():
        one = torch.zeros(1, dtype=torch.long, device=model.device)
        model.token_logprobs(one, one, _single(), one, one)
    layers = [m for m in model.model.layers if isinstance(m, FSDPModule)]
    for m in [model, *layers]:
        m.unshard()
    for m in layers:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in layers:
            m.set_reshard_after_forward(True, recurse=False)
            m.reshard()
        model.reshard()


def _single():
    from ..model.attention import Packed
    return Packed([1])
