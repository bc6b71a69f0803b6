"""CUDA graphs for decode steps. A decode step of a small model is hundreds of tiny kernel launches; a graph
replays them with one launch. Batches are padded to the next captured size: padding rows write their KV to
slot -1 (skipped) and attend to 0 tokens.

A graph replays the addresses it captured: the KV cache, the block table, and every weight. The model runner
drops its graphs when any parameter's storage may have moved (see ModelRunner.sync_weights); in-place
updates (an optimizer step) keep the addresses and need no recapture.

On CPU the same class runs with emulate=True: "capture" records the function and the parameter tensors of
that moment, and "replay" calls the function on the same static buffers with those tensors put back in
place — what a real replay reads — so the CPU tests exercise the padding, the buffers and the weight tie."""
from __future__ import annotations

import contextlib

import torch

# rows of the static input buffer [5, max_bs] and the value a padding row holds in each
FIELDS = ("input_ids", "positions", "slot_mapping", "context_lens", "rows")
PAD = (0, 0, -1, 0, 0)


class DecodeGraphs:
    def __init__(self, forward, params: list[torch.nn.Parameter], max_bs: int, device: torch.device,
                 emulate: bool = False):
        self.forward, self.params, self.emulate = forward, params, emulate
        self.sizes = sorted({1, 2, 4, 8, *range(16, max_bs + 1, 16), max_bs})
        self.buf = torch.tensor(PAD, dtype=torch.long, device=device)[:, None].repeat(1, max_bs)  # [5, max_bs]
        self.pad = self.buf[:, :1].clone()
        self.graphs: dict[int, tuple[object, torch.Tensor]] = {}
        self.pool = None

    def _capture(self, bs: int):
        if self.emulate:
            return [p.detach() for p in self.params], None
        torch.cuda.synchronize()
        self.forward(*self.buf[:, :bs])  # warm-up: lazy init and autotuning happen outside the capture
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=self.pool):
            out = self.forward(*self.buf[:, :bs])
        if self.pool is None:
            self.pool = g.pool()
        return g, out

    def run(self, inputs: torch.Tensor) -> torch.Tensor:
        # inputs: int64 [5, B] on the device (FIELDS) -> logits [B, V]
        b = inputs.shape[1]
        bs = next(s for s in self.sizes if s >= b)
        self.buf[:, :b].copy_(inputs)
        self.buf[:, b:bs].copy_(self.pad.expand(-1, bs - b))
        if bs not in self.graphs:
            self.graphs[bs] = self._capture(bs)
        graph, out = self.graphs[bs]
        if self.emulate:
            with _weights(self.params, graph):
                return self.forward(*self.buf[:, :bs])[:b]
        graph.replay()
        return out[:b]


@contextlib.contextmanager
def _weights(params: list[torch.nn.Parameter], tensors: list[torch.Tensor]):
    # the parameters read `tensors` (the storage a real graph captured) for the duration
    now = [p.data for p in params]
    for p, t in zip(params, tensors):
        p.data = t
    try:
        yield
    finally:
        for p, t in zip(params, now):
            p.data = t
