import copy
import math

import pytest
import torch

from metareward import UserError
from metareward.engine import Engine, SamplingParams

from .conftest import hf_family_configs, pair

CONFIGS = hf_family_configs()
PROMPTS = ["Hi", "Tell me a story about a cat.", "x" * 40, "What is 2+2? Answer briefly please, thanks."]


def hf_greedy(hf, ids, max_new, eos):
    out = hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=max_new, eos_token_id=eos,
                      pad_token_id=eos, attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("chat", [True, False])
def test_greedy_matches_transformers_generate(family, chat, tok):
    hf, ours = pair(CONFIGS[family])
    engine = Engine(ours, tok, block_size=4, num_kv_blocks=256, max_num_batched_tokens=64)
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS] if chat else PROMPTS
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        ids = engine.encode(prompt)
        assert out.prompt_token_ids == ids
        assert out.samples[0].token_ids == hf_greedy(hf, ids, 12, tok.eos_token_id)


def test_seeded_sampling_reproducible_and_batch_independent(llama_pair, tok):
    _, model = llama_pair
    p = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=16, seed=1234)
    alone = Engine(model, tok, num_kv_blocks=512).generate(["The cat"], p, use_tqdm=False)[0].samples[0]
    others = [f"prompt number {i} " * (i % 4 + 1) for i in range(16)]
    params = [SamplingParams(temperature=0.7, top_k=20, max_tokens=20, seed=i) for i in range(16)]
    engine = Engine(model, tok, num_kv_blocks=512)
    batch = engine.generate(others[:8] + ["The cat"] + others[8:], params[:8] + [p] + params[8:], use_tqdm=False)
    assert batch[8].samples[0].token_ids == alone.token_ids
    again = Engine(model, tok, num_kv_blocks=512).generate(["The cat"], p, use_tqdm=False)[0].samples[0]
    assert again.token_ids == alone.token_ids and again.cumulative_logprob == pytest.approx(alone.cumulative_logprob)


def test_n_samples_prefill_prompt_once(llama_pair, tok):
    _, model = llama_pair
    engine = Engine(model, tok, block_size=4, num_kv_blocks=512)
    prompt = "a shared prompt of some length"
    out = engine.generate([prompt], SamplingParams(n=5, temperature=1.0, max_tokens=8, seed=3), use_tqdm=False)[0]
    n_prompt = out.num_prompt_tokens
    assert [s.num_cached_tokens for s in out.samples] == [0] + [n_prompt] * 4
    assert engine.stats.computed_tokens == n_prompt  # one prefill for five samples
    assert len({tuple(s.token_ids) for s in out.samples}) > 1  # different seeds per sample
    # a later request with the same prompt is served from the prefix cache (all full blocks)
    again = engine.generate([prompt], SamplingParams(max_tokens=2, seed=9), use_tqdm=False)[0]
    assert again.samples[0].num_cached_tokens == (n_prompt - 1) // 4 * 4


def test_preemption_with_tiny_cache_gives_same_tokens(llama_pair, tok):
    _, model = llama_pair
    prompts = [f"request {i}: " + "abc " * i for i in range(6)]
    params = [SamplingParams(temperature=0.8, max_tokens=24, seed=i, ignore_eos=True) for i in range(6)]
    big = Engine(model, tok, block_size=4, num_kv_blocks=512).generate(prompts, params, use_tqdm=False)
    small_engine = Engine(model, tok, block_size=4, num_kv_blocks=24, max_num_batched_tokens=16)
    small = small_engine.generate(prompts, params, use_tqdm=False)
    assert small_engine.stats.preemptions > 0
    assert [o.samples[0].token_ids for o in small] == [o.samples[0].token_ids for o in big]


def test_emulated_cuda_graph_decode_matches_eager(llama_pair, tok):
    _, model = llama_pair
    prompts = [f"graph {i}" for i in range(5)]
    p = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    eager = Engine(model, tok, num_kv_blocks=256, cuda_graphs=False, max_model_len=128)
    graph = Engine(model, tok, num_kv_blocks=256, cuda_graphs=True, max_model_len=128, max_num_seqs=8)
    a = [o.samples[0].token_ids for o in eager.generate(prompts, p, use_tqdm=False)]
    b = [o.samples[0].token_ids for o in graph.generate(prompts, p, use_tqdm=False)]
    assert a == b and graph.runner.graphs is not None and graph.runner.graphs.sizes[:3] == [1, 2, 4]


def test_stop_strings_and_stop_ids(llama_pair, tok):
    _, model = llama_pair
    engine = Engine(model, tok, num_kv_blocks=256)
    free = engine.generate(["Once"], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True),
                           use_tqdm=False)[0].samples[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 30
    stop_text = free.text[10:12]
    assert stop_text and stop_text not in free.text[:10]
    cut = engine.generate(["Once"], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True,
                                                   stop=[stop_text]), use_tqdm=False)[0].samples[0]
    assert cut.finish_reason == "stop" and cut.text == free.text[:10]
    stop_id = free.token_ids[5]
    first = free.token_ids.index(stop_id)
    by_id = engine.generate(["Once"], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True,
                                                     stop_token_ids=[stop_id]), use_tqdm=False)[0].samples[0]
    assert by_id.finish_reason == "stop" and by_id.token_ids == free.token_ids[:first + 1]


def test_eos_stops_and_max_model_len(llama_pair, tok):
    _, model = llama_pair
    engine = Engine(model, tok, num_kv_blocks=64, max_model_len=20)
    out = engine.generate(["0123456789"], SamplingParams(temperature=0, max_tokens=100, ignore_eos=True),
                          use_tqdm=False)[0]
    assert out.samples[0].finish_reason == "length" and out.num_prompt_tokens + len(out.samples[0].token_ids) == 20


def test_chunked_prefill_matches_whole_prefill(llama_pair, tok):
    _, model = llama_pair
    prompts = ["long prompt " * 12, "short"]
    p = SamplingParams(temperature=0, max_tokens=8)
    whole = Engine(model, tok, num_kv_blocks=256).generate(prompts, p, use_tqdm=False)
    chunked = Engine(model, tok, num_kv_blocks=256, max_num_batched_tokens=7).generate(prompts, p, use_tqdm=False)
    assert [o.samples[0].token_ids for o in whole] == [o.samples[0].token_ids for o in chunked]


def test_logprobs_are_raw_distribution(llama_pair, tok):
    _, model = llama_pair
    engine = Engine(model, tok, num_kv_blocks=64)
    s = engine.generate(["Hello"], SamplingParams(temperature=0.5, top_k=5, max_tokens=5, seed=1, logprobs=True),
                        use_tqdm=False)[0].samples[0]
    ids = engine.encode("Hello") + s.token_ids
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids]))[0].double(), -1)
    n = len(engine.encode("Hello"))
    want = [ref[n - 1 + i, t].item() for i, t in enumerate(s.token_ids)]
    assert s.logprobs == pytest.approx(want, abs=1e-4)
    assert s.cumulative_logprob == pytest.approx(sum(want), abs=1e-3)


def test_release_and_wake(llama_pair, tok):
    _, model = llama_pair
    engine = Engine(model, tok, num_kv_blocks=64)
    a = engine.generate(["abc"], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
    engine.release()
    assert engine.runner.kv is None
    b = engine.generate(["abc"], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
    assert a[0].samples[0].token_ids == b[0].samples[0].token_ids
    assert b[0].num_cached_tokens == 0  # the prefix cache went with the memory


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"n": 0}, "n must"),
    ({"max_tokens": 0}, "max_tokens"), ({"min_p": 2}, "min_p"), ({"top_k": -5}, "top_k"),
])
def test_bad_sampling_params(kwargs, message):
    with pytest.raises(UserError, match=message):
        SamplingParams(**kwargs)


def test_bad_prompts(llama_pair, tok):
    _, model = llama_pair
    engine = Engine(model, tok, num_kv_blocks=8, block_size=4, max_model_len=64)
    with pytest.raises(UserError, match="empty"):
        engine.generate([[]], use_tqdm=False)
    with pytest.raises(UserError, match="context"):
        engine.generate(["x" * 100], use_tqdm=False)
    with pytest.raises(UserError, match="KV blocks"):  # can never fit: an error, not a hang
        engine.generate(["hello"], SamplingParams(max_tokens=50), use_tqdm=False)
    with pytest.raises(UserError, match="outside"):
        engine.generate([[1, 2, 99999]], use_tqdm=False)


def test_next_token_logprobs_match_full_forward(llama_pair, tok):
    _, model = llama_pair
    engine = Engine(model, tok, num_kv_blocks=128, block_size=4)
    prompts = ["Score the answer. Score: ", "Score the answer. Another one. Score: "]
    cands = [48, 49, 50, 53]
    got = engine.next_token_logprobs(prompts, cands, use_tqdm=False)
    for p, row in zip(prompts, got):
        ids = engine.encode(p)
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([ids]))[0, -1].double(), -1)[cands]
        assert row == pytest.approx(ref.tolist(), abs=1e-5)
    assert engine.stats.cached_tokens > 0  # the shared "Score the answer." block came from the cache


def greedy_tokens(engine, prompts, n=8):
    p = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
    return [o.samples[0].token_ids for o in engine.generate(prompts, p, use_tqdm=False)]


def test_float16_model_end_to_end(llama_pair, tok):
    _, model = llama_pair
    half = copy.deepcopy(model).half()
    engine = Engine(half, tok, block_size=4, num_kv_blocks=128)
    prompts = ["Hello there", "A longer prompt, with more words in it."]
    got = greedy_tokens(engine, prompts)
    for prompt, tokens in zip(prompts, got):  # greedy by full forwards of the same float16 model, no cache
        ids = engine.encode(prompt)
        with torch.no_grad():
            for _ in range(8):
                ids.append(int(half(torch.tensor([ids]))[0, -1].argmax()))
        assert tokens == ids[-8:]
    out = engine.generate(prompts, SamplingParams(n=3, temperature=0.9, top_p=0.9, max_tokens=8, seed=2,
                                                  logprobs=True), use_tqdm=False)
    assert all(len(s.token_ids) == 8 and all(math.isfinite(x) and x <= 0 for x in s.logprobs)
               for o in out for s in o.samples)


def test_decode_graphs_follow_a_parameter_storage_swap(llama_pair, tok):
    _, model = llama_pair
    m = copy.deepcopy(model)
    prompts = [f"graph {i}" for i in range(3)]
    engine = Engine(m, tok, num_kv_blocks=128, cuda_graphs=True, max_num_seqs=8)
    before = greedy_tokens(engine, prompts)
    graphs = engine.runner.graphs
    w = m.model.layers[1].mlp.down_proj.weight
    w.data = torch.randn(w.shape, generator=torch.Generator().manual_seed(1)) * 0.5  # new storage, new values
    after = greedy_tokens(engine, prompts)  # a stale graph would decode with the old down_proj
    assert after == greedy_tokens(Engine(m, tok, num_kv_blocks=128, cuda_graphs=False), prompts)
    assert after != before and engine.runner.graphs is not graphs
    with torch.no_grad():
        w.mul_(1.0)  # in place: same storage, graphs stay (they read it), cached prefixes go
    again = greedy_tokens(engine, prompts)
    assert again == after and engine.runner.graphs is not None


@pytest.mark.parametrize("change", ["in_place", "load_state_dict", "swap", "weights_version"])
def test_any_weight_change_invalidates_the_prefix_cache(llama_pair, tok, change):
    _, model = llama_pair
    m = copy.deepcopy(model)
    engine = Engine(m, tok, num_kv_blocks=128, block_size=4)
    p = SamplingParams(temperature=0, max_tokens=2)
    prompt = "a prompt that fills several blocks"
    engine.generate([prompt], p, use_tqdm=False)
    assert engine.generate([prompt], p, use_tqdm=False)[0].num_cached_tokens > 0  # unchanged: served from cache
    w = m.model.layers[0].self_attn.q_proj.weight
    if change == "in_place":
        with torch.no_grad():
            w.add_(0.0)
    elif change == "load_state_dict":
        m.load_state_dict(m.state_dict())
    elif change == "swap":
        w.data = w.data.clone()
    else:
        m.weights_version += 1
    assert engine.generate([prompt], p, use_tqdm=False)[0].num_cached_tokens == 0


def test_thread_count_setting(llama_pair, tok):
    _, model = llama_pair
    before = torch.get_num_threads()
    seen = []
    engine = Engine(model, tok, num_kv_blocks=64, num_threads=1)
    step = engine.step
    engine.step = lambda: seen.append(torch.get_num_threads()) or step()
    engine.generate(["abc"], SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)
    assert set(seen) == {1} and torch.get_num_threads() == before  # the caller's count is restored
    with pytest.raises(UserError, match="num_threads"):
        Engine(model, tok, num_threads=0)


def test_prefill_in_several_padded_groups_matches_full_forward(llama_pair, tok, monkeypatch):
    import metareward.engine.model_runner as mr
    from metareward.engine.attention import prefill_groups
    _, model = llama_pair
    seen = []
    monkeypatch.setattr(mr, "prefill_groups", lambda q, k: seen.append(prefill_groups(q, k)) or seen[-1])
    engine = Engine(model, tok, num_kv_blocks=256, block_size=4)
    rubric = "Grade the answer from 0 to 5 and explain briefly why. " * 3
    prompts = [rubric + f"Answer {i}: " + "yes " * (i % 5) for i in range(9)] + ["z" * 150]
    cands = [48, 49, 50]
    got = engine.next_token_logprobs(prompts, cands, use_tqdm=False)
    assert any(len(g) > 1 for g in seen)  # a fresh long prompt and short cached ones: more than one group
    for p, row in zip(prompts, got):
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([engine.encode(p)]))[0, -1].double(), -1)[cands]
        assert row == pytest.approx(ref.tolist(), abs=1e-5)
