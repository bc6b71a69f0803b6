from metareward.engine.block_manager import BlockManager
from metareward.engine.params import SamplingParams
from metareward.engine.sequence import Sequence


def seq(tokens, i=0):
    return Sequence(i, i, 0, tokens, SamplingParams(), seed=0)


def test_prefix_hit_needs_same_tokens_and_same_parent():
    bm = BlockManager(num_blocks=16, block_size=4)
    a = seq(list(range(10)))
    bm.reserve(a, 10)  # blocks [0:4) [4:8) full, [8:10) partial
    a.num_computed = 10
    assert len(a.block_table) == 3 and bm.num_free == 13
    b = seq(list(range(8)) + [99, 98, 97])
    hits = bm.match_prefix(b)
    assert hits == a.block_table[:2]
    c = seq([0, 1, 2, 3, 9, 9, 9, 9, 1])  # first block equal, second differs
    assert bm.match_prefix(c) == a.block_table[:1]
    d = seq([5, 5, 5, 5] + list(range(4, 8)) + [1])  # second block equal but under another parent
    assert bm.match_prefix(d) == []


def test_last_token_is_never_served_from_cache():
    bm = BlockManager(8, 4)
    a = seq(list(range(8)))
    bm.reserve(a, 8)
    same = seq(list(range(8)))
    assert len(bm.match_prefix(same)) == 1  # 8 tokens, 2 full blocks: the last block is recomputed


def test_freed_blocks_stay_cached_until_reused_lru():
    bm = BlockManager(4, 2)
    a = seq([1, 2, 3, 4, 5])
    bm.reserve(a, 5)
    bm.free_seq(a)
    assert bm.num_free == 4
    b = seq([1, 2, 3, 4, 7])
    hits = bm.match_prefix(b)
    assert len(hits) == 2 and bm.new_blocks_needed(b, 5, hits) == 3  # 2 revived + 1 new
    bm.take_prefix(b, hits)
    bm.reserve(b, 5)
    assert bm.num_free == 1 and b.num_computed == 4
    # the partial block of `a` was freed first (tail first) and was the one reused
    c = seq([9, 9, 9, 9, 9, 9, 9, 1])
    bm.free_seq(b)
    bm.reserve(c, 8)  # takes every block: all cached prefixes are evicted
    assert bm.match_prefix(seq([1, 2, 3, 4, 5])) == []


def test_fork_shares_every_block_and_copies_the_partial_one_on_write():
    bm = BlockManager(8, 4)
    parent = seq(list(range(6)))
    bm.reserve(parent, 6)
    parent.num_computed = 6
    child = parent.fork(7, 1, seed=1)
    bm.fork(parent, child)  # takes no free block: forking can never run out
    assert child.block_table == parent.block_table and bm.num_free == 6 and child.num_computed == 6
    assert [bm.blocks[b].ref for b in parent.block_table] == [2, 2]
    child.token_ids.append(9)
    assert bm.new_blocks_needed(child, 7) == 1  # a copy of the shared partial block
    bm.reserve(child, 7)
    assert child.block_table[0] == parent.block_table[0] and child.block_table[1] != parent.block_table[1]
    assert bm.take_copies() == [(parent.block_table[1], child.block_table[1])] and bm.take_copies() == []
    parent.token_ids.append(8)
    assert bm.new_blocks_needed(parent, 7) == 0  # the last holder writes in place
    bm.free_seq(parent)
    assert bm.blocks[child.block_table[0]].ref == 1 and bm.num_free == 6
    full = seq(list(range(8)))
    bm.reserve(full, 8)
    full.num_computed = 8
    twin = full.fork(9, 1, seed=2)
    bm.fork(full, twin)
    twin.token_ids.append(1)
    assert bm.new_blocks_needed(twin, 9) == 1 and not bm.take_copies()  # a fresh block, nothing to copy


def test_same_step_sharing_publishes_blocks_at_reserve():
    bm = BlockManager(8, 4)
    a, b = seq(list(range(9))), seq(list(range(9)), 1)
    bm.reserve(a, 9)  # not computed yet, but it will be in this step before attention reads it
    assert len(bm.match_prefix(b)) == 2


def test_reset_cache_forgets_prefixes():
    bm = BlockManager(8, 4)
    a = seq(list(range(9)))
    bm.reserve(a, 9)
    bm.free_seq(a)
    bm.reset_cache()
    assert bm.match_prefix(seq(list(range(9)))) == []
