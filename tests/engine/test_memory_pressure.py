"""The engine under a small KV cache: forked samples, preemption and recompute. Seeded samples are a function
of (logits, seed, position) only, so every sample must come out the same whatever the cache size."""
import pytest

from metareward.engine import Engine, SamplingParams

BLOCK = 4
MAX_NEW = 9


def prompts(tok):
    # lengths 8 and 12 end on a block boundary (the first decode step takes a fresh block per sample),
    # 9 and 14 do not (the samples share a partial block until each copies it)
    return [[tok.bos_token_id] + [40 + (7 * i + j) % 50 for j in range(n - 1)] for i, n in enumerate((8, 9, 12, 14))]


def run(model, tok, n, num_kv_blocks, max_num_seqs=256, max_num_batched_tokens=64):
    engine = Engine(model, tok, block_size=BLOCK, max_model_len=64, num_kv_blocks=num_kv_blocks,
                    max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens, num_threads=1)
    params = [SamplingParams(n=n, temperature=1.0, top_p=0.9, max_tokens=MAX_NEW, seed=100 + i, ignore_eos=True)
              for i in range(4)]
    outs = engine.generate(prompts(tok), params, use_tqdm=False)
    assert all(len(o.samples) == n and all(len(s.token_ids) == MAX_NEW for s in o.samples) for o in outs)
    assert all(b.ref == 0 for b in engine.blocks.blocks) and engine.blocks.num_free == num_kv_blocks  # no leak
    return [[s.token_ids for s in o.samples] for o in outs], engine.stats


@pytest.mark.parametrize("n", [1, 4, 7])
def test_samples_do_not_depend_on_cache_size(llama_pair, tok, n):
    _, model = llama_pair
    want, _ = run(model, tok, n, 512)
    smallest = -(-(14 + MAX_NEW) // BLOCK)  # blocks of the longest sequence: the cache must fit one
    preempted = 0
    for blocks in [smallest, smallest + 1, smallest + 2, smallest + 3, smallest + 5, smallest + 8, smallest + 13,
                   smallest + 21]:
        got, stats = run(model, tok, n, blocks)
        assert got == want, f"num_kv_blocks={blocks}"
        preempted += stats.preemptions
    assert preempted > 0  # the sweep did exercise preemption


def test_forks_count_against_max_num_seqs(llama_pair, tok):
    _, model = llama_pair
    want, _ = run(model, tok, 7, 512)
    for max_num_seqs in (1, 3, 5):  # samples that find no room wait and are recomputed via the prefix cache
        got, _ = run(model, tok, 7, 512, max_num_seqs=max_num_seqs)
        assert got == want
    got, _ = run(model, tok, 7, 9, max_num_seqs=3, max_num_batched_tokens=5)  # and chunked, and tight
    assert got == want


def test_issue_reproducer_forks_on_a_full_cache(llama_pair, tok):
    # Before the fix every num_kv_blocks from 16 (the minimum) to 49 raised KeyError here: prompts of 17..37
    # tokens end inside a block, and the forks took copies of it from blocks nobody had reserved.
    _, model = llama_pair
    chats = [[{"role": "user", "content": f"question {i}: " + "why " * i + "?"}] for i in range(6)]
    p = SamplingParams(n=4, temperature=1.0, top_p=0.9, max_tokens=24, seed=11, ignore_eos=True)

    def samples(num_kv_blocks):
        engine = Engine(model, tok, block_size=4, max_model_len=128, num_kv_blocks=num_kv_blocks, num_threads=1)
        return [[s.token_ids for s in o.samples] for o in engine.generate(chats, p, use_tqdm=False)]
    want = samples(512)
    for n in (16, 24, 37):
        assert samples(n) == want


def test_one_request_alone_in_the_smallest_cache(llama_pair, tok):
    # n samples that cannot run side by side run one after another
    _, model = llama_pair
    ids = prompts(tok)[1]
    p = SamplingParams(n=5, temperature=0.9, max_tokens=MAX_NEW, seed=5, ignore_eos=True)
    roomy = Engine(model, tok, block_size=BLOCK, num_kv_blocks=128, num_threads=1).generate([ids], p, use_tqdm=False)
    tight = Engine(model, tok, block_size=BLOCK, num_kv_blocks=-(-(len(ids) + MAX_NEW) // BLOCK), num_threads=1)
    out = tight.generate([ids], p, use_tqdm=False)
    assert [s.token_ids for s in out[0].samples] == [s.token_ids for s in roomy[0].samples]
    assert tight.stats.preemptions > 0
