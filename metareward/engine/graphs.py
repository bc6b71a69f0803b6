"""CUDA graphs for decode steps. A decode step of a small model is hundreds of tiny kernel launches; a graph
replays them with one launch. Batches are padded to the next captured size: padding rows write their KV to
slot -1 (skipped) and attend to 0 tokens.

On CPU the same class runs with emulate=True: "capture" records the function and "replay" calls it on the
same static buffers, so the padding and buffer logic is exercised by the CPU tests."""
from __future__ import annotations

import torch

_TYPES = dict(input_ids=torch.long, positions=torch.long, slot_mapping=torch.long, context_lens=torch.int32,
              block_tables=torch.int32)
_PAD = dict(input_ids=0, positions=0, slot_mapping=-1, context_lens=0, block_tables=0)


class DecodeGraphs:
    def __init__(self, forward, max_bs: int, max_blocks: int, device: torch.device, emulate: bool = False):
        self.forward, self.emulate = forward, emulate
        self.sizes = sorted({1, 2, 4, 8, *range(16, max_bs + 1, 16), max_bs})
        self.buf = {k: torch.full((max_bs, max_blocks) if k == "block_tables" else (max_bs,), _PAD[k], dtype=t,
                                  device=device) for k, t in _TYPES.items()}
        self.graphs: dict[int, tuple[object, torch.Tensor]] = {}
        self.pool = None

    def _views(self, bs: int) -> dict[str, torch.Tensor]:
        return {k: v[:bs] for k, v in self.buf.items()}

    def _capture(self, bs: int):
        if self.emulate:
            return None, None
        torch.cuda.synchronize()
        self.forward(**self._views(bs))  # warm-up: lazy init and autotuning happen outside the capture
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=self.pool):
            out = self.forward(**self._views(bs))
        if self.pool is None:
            self.pool = g.pool()
        return g, out

    def run(self, inputs: dict[str, list]) -> torch.Tensor:
        b = len(inputs["input_ids"])
        bs = next(s for s in self.sizes if s >= b)
        for k, rows in inputs.items():
            buf = self.buf[k]
            if k == "block_tables":
                buf[:bs].fill_(0)
                src = torch.tensor(rows, dtype=buf.dtype)
                buf[:b, :src.shape[1]].copy_(src, non_blocking=True)
            else:
                buf[b:bs].fill_(_PAD[k])
                buf[:b].copy_(torch.tensor(rows, dtype=buf.dtype), non_blocking=True)
        if bs not in self.graphs:
            self.graphs[bs] = self._capture(bs)
        graph, out = self.graphs[bs]
        if self.emulate:
            return self.forward(**self._views(bs))[:b]
        graph.replay()
        return out[:b]
