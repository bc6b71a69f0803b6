"""Paged KV blocks with reference counts, copy-on-write sharing and a prefix cache.

A full block is found again by a hash chained on its parent's hash. A hit is exact: the cached block must
hold the same token ids AND have the same parent block, so by induction the whole prefix matches. Blocks
whose reference count drops to 0 keep their content and hash until they are reused (least recently
freed first), so a later request with the same prefix can still hit them.

Forked samples share every block of their parent, the partly filled last one included; a sequence that is
about to write into a block someone else also holds gets its own copy first (copy-on-write). Only reserve()
takes free blocks, and the scheduler asks new_blocks_needed() before it, so running out of blocks is a
scheduling decision (wait or preempt), never an error."""
from __future__ import annotations

from collections import OrderedDict

from .sequence import Sequence


class Block:
    __slots__ = ("id", "ref", "hash", "tokens", "parent")

    def __init__(self, block_id: int):
        self.id, self.ref, self.hash, self.tokens, self.parent = block_id, 0, None, None, -1


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.by_hash: dict[int, int] = {}
        self.copies: list[tuple[int, int]] = []  # (src, dst) block copies the next step must do before writing

    @property
    def num_free(self) -> int:
        return len(self.free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _key(self, seq: Sequence, i: int) -> tuple[int, tuple[int, ...]]:
        parent = self.blocks[seq.block_table[i - 1]].hash if i else None
        toks = tuple(seq.token_ids[i * self.block_size:(i + 1) * self.block_size])
        return hash((parent, toks)), toks

    def match_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks that hold a prefix of seq (never all of it: the last token is always computed,
        because its logits are needed)."""
        hits, parent, parent_hash = [], -1, None
        for i in range((len(seq) - 1) // self.block_size):
            toks = tuple(seq.token_ids[i * self.block_size:(i + 1) * self.block_size])
            h = hash((parent_hash, toks))
            b = self.blocks[self.by_hash[h]] if h in self.by_hash else None
            if b is None or b.tokens != toks or b.parent != parent:
                break
            hits.append(b.id)
            parent, parent_hash = b.id, h
        return hits

    def _shared_in_write_range(self, seq: Sequence) -> int:
        # blocks seq already holds at or after its first uncomputed token that others hold too
        return sum(1 for b in seq.block_table[seq.num_computed // self.block_size:] if self.blocks[b].ref > 1)

    def new_blocks_needed(self, seq: Sequence, upto: int, hits: list[int] = ()) -> int:
        """Free blocks taken if seq's KV must cover [0, upto): new blocks, copies of shared blocks it writes
        into, and cache hits now sitting free."""
        have = len(seq.block_table) + len(hits)
        return (max(0, self.blocks_for(upto) - have) + self._shared_in_write_range(seq)
                + sum(1 for b in hits if self.blocks[b].ref == 0))

    def take_prefix(self, seq: Sequence, hits: list[int]) -> None:
        for b in hits:
            self._ref(b)
        seq.block_table.extend(hits)
        seq.num_computed = len(hits) * self.block_size

    def reserve(self, seq: Sequence, upto: int) -> None:
        """Give seq blocks for positions [0, upto), copying shared blocks it will write into, and publish the
        blocks that [0, upto) fills completely: their KV is written in this step, before any attention reads
        it, so a request scheduled in the same step may already share them."""
        for i in range(seq.num_computed // self.block_size, len(seq.block_table)):
            src = seq.block_table[i]
            if self.blocks[src].ref > 1:  # copy-on-write: the others keep the original
                self.blocks[src].ref -= 1
                seq.block_table[i] = self._pop_free()
                seq.synced = min(seq.synced, i)
                self.copies.append((src, seq.block_table[i]))
        while len(seq.block_table) < self.blocks_for(upto):
            seq.block_table.append(self._pop_free())
        for i in range(seq.num_computed // self.block_size, upto // self.block_size):
            b = self.blocks[seq.block_table[i]]
            if b.hash is None:
                self._publish(seq, i, b)

    def _publish(self, seq: Sequence, i: int, b: Block) -> None:
        h, toks = self._key(seq, i)
        b.hash, b.tokens, b.parent = h, toks, seq.block_table[i - 1] if i else -1
        # An identical block published earlier stays the findable one (a duplicate only costs a missed hit).
        self.by_hash.setdefault(h, b.id)

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """child shares all of parent's blocks and computed KV (copy-on-write)."""
        child.block_table = list(parent.block_table)
        for b in child.block_table:
            self._ref(b)
        child.num_computed = parent.num_computed

    def free_seq(self, seq: Sequence) -> None:
        # Release the tail first: it is the least shareable part, so it is reused (evicted) first.
        for b in reversed(seq.block_table):
            blk = self.blocks[b]
            blk.ref -= 1
            if blk.ref == 0:
                self.free[b] = None
        seq.block_table = []
        seq.num_computed = 0

    def take_copies(self) -> list[tuple[int, int]]:
        copies, self.copies = self.copies, []
        return copies

    def _ref(self, b: int) -> None:
        if self.blocks[b].ref == 0:
            del self.free[b]
        self.blocks[b].ref += 1

    def _pop_free(self) -> int:
        b, _ = self.free.popitem(last=False)
        blk = self.blocks[b]
        if blk.hash is not None and self.by_hash.get(blk.hash) == b:
            del self.by_hash[blk.hash]
        blk.hash, blk.tokens, blk.parent, blk.ref = None, None, -1, 1
        return b

    def reset_cache(self) -> None:
        """Forget every cached prefix (the weights changed, so cached KV is stale). Blocks still held keep
        their KV but can no longer be found by a new request."""
        self.by_hash.clear()
        for b in self.blocks:
            b.hash, b.tokens, b.parent = None, None, -1
