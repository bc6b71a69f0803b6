"""Continuous batching. A step is either a prefill step (chunks of sequences' uncomputed tokens, within a token
budget) or a decode step (one token for each running sequence). Prefill goes first so new work starts as
soon as there is room.

Admission: a prompt enters only when max_num_seqs has room for all its n samples and the free blocks cover
its prefill plus its samples' first decode step (n - 1 copies of a shared partial block, or n fresh blocks
when the prompt ends on a block boundary). When nothing runs, the prompt's own blocks are enough: any cache
that fits one sequence makes progress, and samples that find no room later are recomputed through the
prefix cache. A long prompt is prefilled in chunks; a chunk always ends its batch, and the next prefill
continues it first, so at most one sequence is partly prefilled.

When a decode step runs out of blocks, the most recently admitted sequence is preempted: its blocks are freed
and it is recomputed later (its prefix is usually still in the prefix cache then). The oldest sequence always
advances, so every request finishes."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .sequence import Sequence, Status


@dataclass
class Batch:
    seqs: list[Sequence]
    num_tokens: list[int]  # tokens to compute per sequence, from seq.num_computed on
    prefill: bool
    copies: list[tuple[int, int]] = field(default_factory=list)  # (src, dst) KV block copies, before the step


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order; holds blocks and a block-table row
        self.partial: Sequence | None = None  # the running sequence whose prompt is partly prefilled
        self.free_rows = list(range(max_num_seqs - 1, -1, -1))
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> Batch:
        batch = self._prefill() or self._decode()
        batch.copies = self.blocks.take_copies()
        return batch

    # -- prefill ---------------------------------------------------------------------------------------
    def _prefill(self) -> Batch | None:
        seqs, counts, budget = [], [], self.max_tokens
        promised = 0  # blocks the first decode steps of the prompts scheduled in this step will take
        if self.partial is not None:
            seq = self.partial
            n = min(len(seq) - seq.num_computed, budget)
            need = self.blocks.new_blocks_needed(seq, seq.num_computed + n)
            promised = 0 if len(self.running) == 1 else self._first_decode(seq, seq.num_computed + n, True)
            if need + promised > self.blocks.num_free:
                return None  # decode meanwhile: it frees blocks (or preempts this sequence)
            self.blocks.reserve(seq, seq.num_computed + n)
            seqs.append(seq)
            counts.append(n)
            budget -= n
            if seq.num_computed + n < len(seq):
                return Batch(seqs, counts, True)
            self.partial = None
        while self.waiting and budget > 0:
            seq = self.waiting[0]
            idle = not self.running  # nothing else can free blocks: the prompt alone must do
            if not idle and len(self.running) + (seq.params.n if seq.forks else 1) > self.max_num_seqs:
                break
            hits = self.blocks.match_prefix(seq)
            start = len(hits) * self.blocks.block_size
            n = min(len(seq) - start, budget)
            need = self.blocks.new_blocks_needed(seq, start + n, hits)
            later = 0 if idle else self._first_decode(seq, start + n, False)
            if need + later + promised > self.blocks.num_free:
                break
            promised += later
            self.waiting.popleft()
            if not seq.prefilled_once:
                seq.num_cached = start
            self.blocks.take_prefix(seq, hits)
            self.blocks.reserve(seq, start + n)
            self._admit(seq)
            seqs.append(seq)
            counts.append(n)
            budget -= n
            if start + n < len(seq):
                self.partial = seq  # a chunk of a long prompt: the rest comes in the next steps
                break
        return Batch(seqs, counts, True) if seqs else None

    def _first_decode(self, seq: Sequence, upto: int, admitted: bool) -> int:
        # blocks the first decode step of seq's samples takes once its prefill reaches len(seq): a copy of the
        # shared partial block for each forked sample, or a fresh block for each when the prompt fills its last
        if upto < len(seq):
            return 0
        room = self.max_num_seqs - len(self.running) - (0 if admitted else 1)  # for forked samples
        samples = 1 + max(0, min(seq.params.n - 1, room)) if seq.forks else 1
        return samples - 1 + (len(seq) % self.blocks.block_size == 0)

    # -- decode ----------------------------------------------------------------------------------------
    def _decode(self) -> Batch:
        seqs, queue = [], deque(s for s in self.running if s is not self.partial)
        while queue:
            seq = queue.popleft()
            while self.blocks.new_blocks_needed(seq, len(seq)) > self.blocks.num_free:
                victim = self.partial or (queue.pop() if queue else seq)
                self.preempt(victim)
                if victim is seq:
                    break
            else:
                self.blocks.reserve(seq, len(seq))
                seqs.append(seq)
        return Batch(seqs, [1] * len(seqs), False)

    # -- membership ------------------------------------------------------------------------------------
    def _admit(self, seq: Sequence) -> None:
        seq.status = Status.RUNNING
        seq.row, seq.synced = self.free_rows.pop(), 0
        self.running.append(seq)

    def _leave(self, seq: Sequence) -> None:
        self.blocks.free_seq(seq)
        if seq.row >= 0:
            self.free_rows.append(seq.row)
            seq.row, seq.synced = -1, 0
        if seq is self.partial:
            self.partial = None
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """A sample forked from parent right after parent's first prefill: it shares parent's blocks when
        max_num_seqs has room, else it waits and is recomputed through the prefix cache."""
        if len(self.running) < self.max_num_seqs:
            self.blocks.fork(parent, child)
            child.num_cached, child.prefilled_once = parent.num_computed, True
            self._admit(child)
        else:
            self.waiting.append(child)

    def preempt(self, seq: Sequence) -> None:
        self._leave(seq)
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        self._leave(seq)
        seq.status = Status.FINISHED
