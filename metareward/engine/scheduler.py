"""Continuous batching. A step is either a prefill step (chunks of waiting sequences' uncomputed tokens,
within a token budget) or a decode step (one token for each running sequence). Prefill goes first so new
work starts as soon as there is room; when a decode step runs out of KV blocks, the most recently added
sequence is preempted: its blocks are freed and it is recomputed later (its prefix is usually still in the
prefix cache then)."""
from __future__ import annotations

from collections import deque

from .block_manager import BlockManager
from .sequence import Sequence, Status


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: deque[Sequence] = deque()
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> tuple[list[tuple[Sequence, int]], bool]:
        """-> [(sequence, number of tokens to compute)], is_prefill"""
        batch = self._prefill()
        if batch:
            return batch, True
        return self._decode(), False

    def _prefill(self) -> list[tuple[Sequence, int]]:
        batch, budget = [], self.max_tokens
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            hits = [] if seq.block_table else self.blocks.match_prefix(seq)
            start = len(hits) * self.blocks.block_size if hits else seq.num_computed
            chunk = min(len(seq) - start, budget)
            if self.blocks.new_blocks_needed(seq, start + chunk, hits) > self.blocks.num_free:
                break
            fresh = not seq.block_table
            if hits:
                self.blocks.take_prefix(seq, hits)
            if fresh and not seq.prefilled_once:
                seq.num_cached = seq.num_computed
            self.blocks.reserve(seq, start + chunk)
            seq.status = Status.RUNNING
            batch.append((seq, chunk))
            budget -= chunk
            if start + chunk < len(seq):
                break  # a chunk of a long prompt: the rest comes in the next steps
            self.running.append(self.waiting.popleft())
        return batch

    def _decode(self) -> list[tuple[Sequence, int]]:
        batch = []
        while self.running and len(batch) < self.max_num_seqs:
            seq = self.running.popleft()
            while self.blocks.new_blocks_needed(seq, len(seq)) > self.blocks.num_free:
                if self.running:
                    self.preempt(self.running.pop())
                else:
                    self.preempt(seq)
                    break
            else:
                self.blocks.reserve(seq, len(seq))
                batch.append((seq, 1))
        self.running.extendleft(s for s, _ in reversed(batch))
        return batch

    def preempt(self, seq: Sequence) -> None:
        self.blocks.free_seq(seq)
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        seq.status = Status.FINISHED
        self.blocks.free_seq(seq)
        self.running.remove(seq)
