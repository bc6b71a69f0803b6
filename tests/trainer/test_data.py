import json
import random
import warnings

import pytest
import torch

from metareward.errors import UserError
from metareward.model.tokenizer import chat_ids, tiny_tokenizer
from metareward.trainer.data import (
    IGNORE_INDEX, TokenizedPair, TruncationWarning, epoch_order, epoch_steps, global_batches, load_pairs,
    micro_batches, pack, rank_share, read_pairs, sequence_logps, tokenize_pairs,
)

EOS = "<|eos|>"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()  # the tokenizer of load_model("tiny-random"): bytes + specials, chat template


def write(tmp_path, rows, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def decode_targets(tok, batch, s):
    # the target tokens of sequence s, decoded
    t = batch.targets[batch.seq_ids == s]
    return tok.decode(t[t != IGNORE_INDEX].tolist())


def test_trl_string_form(tok, tmp_path):
    path = write(tmp_path, [{"prompt": "What is 2+2?", "chosen": "4.", "rejected": "Five, I think."}])
    pairs, stats = load_pairs(path, tok, max_length=128)
    assert (stats.read, stats.kept, stats.truncated, stats.dropped) == (1, 1, 0, 0)
    (p,) = pairs
    assert p.prompt == chat_ids(tok, [{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True)
    assert tok.decode(p.prompt) == "<|bos|><|user|>What is 2+2?<|eos|><|assistant|>"
    assert tok.decode(p.chosen) == "4." + EOS            # the end-of-turn token is part of the response
    assert tok.decode(p.rejected) == "Five, I think." + EOS
    b = pack(pairs, [0])
    assert decode_targets(tok, b, 0) == "4." + EOS and decode_targets(tok, b, 1) == "Five, I think." + EOS


def test_conversational_form(tok, tmp_path):
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Capital of France?"}]
    row = {"prompt": prompt, "chosen": [{"role": "assistant", "content": "Paris"}],
           "rejected": [{"role": "assistant", "content": "Lyon"}], "score": 3}
    pairs, _ = load_pairs(write(tmp_path, [row]), tok, max_length=128)
    (p,) = pairs
    assert tok.decode(p.prompt) == ("<|bos|><|system|>Be brief.<|eos|><|user|>Hi<|eos|><|assistant|>Hello.<|eos|>"
                                    "<|user|>Capital of France?<|eos|><|assistant|>")
    b = pack(pairs, [0])
    assert decode_targets(tok, b, 0) == "Paris" + EOS and decode_targets(tok, b, 1) == "Lyon" + EOS
    # the string form of the same last turn gives the same tokens as the one-message list form
    same, _ = load_pairs(write(tmp_path, [{"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon"}],
                               "s.jsonl"), tok, 128)
    assert same[0].chosen == p.chosen


def test_target_alignment_by_hand():
    # pair 0: prompt [1, 2], chosen [3, 4, 5], rejected [6]; pair 1: prompt [7], chosen [8], rejected [9, 10]
    pairs = [TokenizedPair([1, 2], [3, 4, 5], [6]), TokenizedPair([7], [8], [9, 10])]
    b = pack(pairs, [1, 0])
    I = IGNORE_INDEX  # noqa: E741
    assert b.input_ids.tolist() == [7, 8, 7, 9, 10, 1, 2, 3, 4, 5, 1, 2, 6]
    assert b.positions.tolist() == [0, 1, 0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 2]
    # the logits at position t predict token t+1: the last prompt position predicts the first response token
    assert b.targets.tolist() == [8, I, 9, 10, I, I, 3, 4, 5, I, I, 6, I]
    assert b.seq_ids.tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3]
    assert b.loss_index.tolist() == [0, 2, 3, 6, 7, 8, 11]
    assert b.seq_lens == [2, 3, 5, 3]
    assert b.response_tokens.tolist() == [1, 2, 3, 1]
    assert b.chosen_tokens.tolist() == [1, 3] and b.rejected_tokens.tolist() == [2, 1]
    assert b.pair_index == [1, 0] and b.num_pairs == 2
    assert all(t.dtype == torch.int64 for t in (b.input_ids, b.positions, b.targets, b.seq_ids, b.loss_index))
    # where there is a target, it is the next input token
    has = b.targets != I
    assert torch.equal(b.targets[:-1][has[:-1]], b.input_ids[1:][has[:-1]])
    moved = b.to("cpu")
    assert torch.equal(moved.targets, b.targets) and moved.seq_lens == b.seq_lens


def test_sequence_logps_segment_sums():
    g = torch.Generator().manual_seed(0)
    pairs = [TokenizedPair([1] * random.Random(i).randint(1, 5), [2] * (i + 1), [3] * (5 - i)) for i in range(4)]
    b = pack(pairs, [2, 0, 3])
    full = torch.randn(b.input_ids.shape[0], generator=g, dtype=torch.float64)
    full[b.targets == IGNORE_INDEX] = 0  # what the log-prob kernel returns at ignore_index
    full.requires_grad_()
    chosen, rejected = sequence_logps(full, b)
    sums = [full[b.seq_ids == s].sum().item() for s in range(6)]
    assert chosen.tolist() == pytest.approx(sums[0::2]) and rejected.tolist() == pytest.approx(sums[1::2])
    (chosen.sum() - 2 * rejected.sum()).backward()
    expected = torch.where(b.seq_ids % 2 == 0, 1.0, -2.0).double()
    torch.testing.assert_close(full.grad, expected)
    # only the positions in loss_index, as after gathering hidden states there
    c2, r2 = sequence_logps(full.detach()[b.loss_index].float(), b)
    assert c2.dtype == torch.float32
    torch.testing.assert_close(c2.double(), chosen.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(r2.double(), rejected.detach(), rtol=1e-6, atol=1e-6)


def test_truncation_and_dropping(tok, tmp_path):
    # prompt tokens: bos + <|user|> + text + eos + <|assistant|> = len(text) + 4 (bytes)
    rows = [{"prompt": "ab", "chosen": "xyz", "rejected": "q"},              # 6 + 4 / 6 + 2: fits in 12
            {"prompt": "abcd", "chosen": "0123456789", "rejected": "w"},    # 8 + 11: chosen cut to 4
            {"prompt": "a" * 11, "chosen": "x", "rejected": "y"},           # prompt 15 > 12: dropped
            {"prompt": "a" * 7, "chosen": "x", "rejected": "yy"}]           # prompt 11: both cut to 1
    path = write(tmp_path, rows)
    with pytest.warns(TruncationWarning) as record:
        pairs, stats = load_pairs(path, tok, max_length=12)
    assert len(record) == 1
    assert str(record[0].message) == ("3 of 4 preference pairs exceed max_length=12 tokens: 2 truncated "
                                      "(responses cut), 1 dropped (the prompt alone leaves no room for a response)")
    assert (stats.read, stats.kept, stats.truncated, stats.dropped) == (4, 3, 2, 1)
    assert tok.decode(pairs[0].chosen) == "xyz" + EOS
    assert tok.decode(pairs[1].chosen) == "0123" and tok.decode(pairs[1].rejected) == "w" + EOS
    assert len(pairs[1].prompt) + len(pairs[1].chosen) == 12
    assert tok.decode(pairs[2].chosen) == "x" and tok.decode(pairs[2].rejected) == "y"
    # pair 3 of the file is pair 2 of the dataset: pair_index counts kept pairs
    assert pack(pairs, [2]).seq_lens == [12, 12]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_pairs(path, tok, max_length=40)  # nothing exceeds: no warning
    with pytest.raises(UserError, match="no preference pair fits max_length=6"):
        load_pairs(path, tok, max_length=6)  # the shortest prompt is 6 tokens


def sized_pairs(n, seed=0):
    r = random.Random(seed)
    return [TokenizedPair([0] * r.randint(1, 40), [1] * r.randint(1, 30), [2] * r.randint(1, 30)) for _ in range(n)]


def test_micro_batches_respect_the_budget_and_keep_pairs_whole():
    pairs = sized_pairs(60)
    pairs[7] = TokenizedPair([0] * 100, [1] * 50, [2] * 50)  # 300 tokens: over the budget
    idx = list(range(5, 60))
    budget = 200
    mbs = micro_batches(pairs, idx, budget)
    assert sorted(i for mb in mbs for i in mb) == idx
    for mb in mbs:
        size = sum(pairs[i].num_tokens for i in mb)
        assert size <= budget or len(mb) == 1
        b = pack(pairs, mb)
        assert sum(b.seq_lens) == size == b.input_ids.shape[0]
        # both sequences of every pair are in this micro-batch, side by side
        for k, i in enumerate(mb):
            assert b.seq_lens[2 * k: 2 * k + 2] == [len(pairs[i].prompt) + len(pairs[i].chosen),
                                                    len(pairs[i].prompt) + len(pairs[i].rejected)]
    assert [7] in mbs
    # first-fit decreasing packs close to the bound: total / budget, rounded up, plus the oversized pair
    rest = sum(pairs[i].num_tokens for i in idx if i != 7)
    assert len(mbs) <= -(-rest // budget) + 2
    with pytest.raises(UserError):
        micro_batches(pairs, idx, 0)


def test_epoch_order_is_seeded():
    a = epoch_order(50, seed=1, epoch=0)
    assert sorted(a) == list(range(50))
    assert a == epoch_order(50, seed=1, epoch=0)
    assert a != epoch_order(50, seed=1, epoch=1)
    assert a != epoch_order(50, seed=2, epoch=0)
    with pytest.raises(UserError):
        epoch_order(5, seed=-1, epoch=0)


def test_global_batches_and_rank_split():
    order = epoch_order(23, 0, 0)
    batches = global_batches(order, 8)
    assert [len(b) for b in batches] == [8, 8, 7] and sum(batches, []) == order
    for batch in batches:
        shares = [rank_share(batch, r, 3) for r in range(3)]
        assert sorted(sum(shares, [])) == sorted(batch)  # every pair exactly once
    with pytest.raises(UserError):
        global_batches(order, 0)


def test_ranks_see_the_single_process_batches():
    pairs = sized_pairs(37, seed=3)
    one = epoch_steps(pairs, seed=5, epoch=2, batch_size=8, token_budget=150)
    assert [s.num_pairs for s in one] == [8, 8, 8, 8, 5]
    assert sorted(i for s in one for mb in s.micro_batches for i in mb) == list(range(37))
    ranks = [epoch_steps(pairs, 5, 2, 8, 150, rank=r, world_size=3) for r in range(3)]
    for k, step in enumerate(one):
        per_rank = [ranks[r][k] for r in range(3)]
        seen = sorted(i for s in per_rank for mb in s.micro_batches for i in mb)
        assert seen == sorted(i for mb in step.micro_batches for i in mb)
        assert all(s.num_pairs == step.num_pairs for s in per_rank)
        assert all(s.max_micro_batches == max(len(x.micro_batches) for x in per_rank) for s in per_rank)
    assert epoch_steps(pairs, 5, 3, 8, 150)[0].micro_batches != one[0].micro_batches
    with pytest.raises(UserError, match="batch_size"):
        epoch_steps(pairs, 5, 2, 2, 150, rank=0, world_size=3)


GOOD = {"prompt": "p", "chosen": "a", "rejected": "b"}


@pytest.mark.parametrize("line,message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"prompt": "p", "chosen": "a"}', "missing field 'rejected'"),
    ('{"prompt": 5, "chosen": "a", "rejected": "b"}', "'prompt' must be a string or a list of messages, got int"),
    ('{"prompt": "p", "chosen": null, "rejected": "b"}', "'chosen' must be a string or a list of messages"),
    ('{"prompt": "p", "chosen": "a", "rejected": {"content": "b"}}', "'rejected' must be a string or a list"),
    ('{"prompt": "p", "chosen": "", "rejected": "b"}', "'chosen' is empty"),
    ('{"prompt": "p", "chosen": "a", "rejected": "  \\n"}', "'rejected' is empty"),
    ('{"prompt": "p", "chosen": [], "rejected": "b"}', "'chosen' is empty"),
    ('{"prompt": [], "chosen": "a", "rejected": "b"}', "'prompt' is empty"),
    ('{"prompt": "p", "chosen": "same", "rejected": "same"}', "'chosen' and 'rejected' are identical"),
    ('{"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}', "prompt[0] must be a message"),
    ('{"prompt": "p", "chosen": [{"role": "assistant", "content": 3}], "rejected": "b"}',
     "chosen[0] must be a message"),
    ('{"prompt": "p", "chosen": ["a"], "rejected": "b"}', "chosen[0] must be a message"),
    ('{"prompt": "p", "chosen": "a", "rejected": [{"role": "user", "content": "b"}]}',
     "rejected[0] has role 'user'; response messages must be 'assistant'"),
])
def test_bad_input_names_file_and_line(tmp_path, line, message):
    path = write(tmp_path, [GOOD, "", line, GOOD])  # the bad row is on line 3
    with pytest.raises(UserError) as e:
        read_pairs(path)
    assert str(e.value).startswith(f"{path}:3: ") and message in str(e.value)


def test_empty_file(tmp_path):
    with pytest.raises(UserError, match="empty"):
        read_pairs(write(tmp_path, [""]))


def test_template_that_is_not_prefix_stable(tmp_path):
    tok = tiny_tokenizer()
    # the generation prompt says <|assistant|> but a finished turn renders as <|system|>: not a prefix
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'assistant' %}<|system|>{% else %}"
                         "<|{{ m['role'] }}|>{% endif %}{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    path = write(tmp_path, [GOOD, GOOD])
    with pytest.raises(UserError, match=f"^{path}:1: the chat template is not prefix-stable"):
        load_pairs(path, tok, 64)
    tok.chat_template = None
    with pytest.raises(UserError, match=f"^{path}:1: the tokenizer has no chat template"):
        tokenize_pairs(tok, read_pairs(path), 64)
