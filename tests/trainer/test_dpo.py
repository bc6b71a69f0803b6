import json
import math
import os
import subprocess
import sys

import pytest
import torch

import metareward
from metareward.cli import main
from metareward.config import DPOConfig
from metareward.trainer.data import load_pairs, pack
from metareward.trainer.dpo import NonFiniteError, policy_logps, reference_logps, train
from metareward.trainer.losses import LogProbs, dpo_loss

PAIRS = [{"prompt": f"What is {i} plus {i}?", "chosen": f"{2 * i}.",
          "rejected": f"Probably {2 * i + 1}, but I am not sure about that."} for i in range(8)]


@pytest.fixture
def pairs_file(tmp_path):
    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    return p


def naive_logps(model, batch):
    # full [N, V] logits, log_softmax, gather: what every other DPO trainer does
    logits = model.compute_logits(model.hidden_states(batch.input_ids, batch.positions,
                                                      metareward.model.attention.Packed(batch.seq_lens)))
    lp = torch.log_softmax(logits.float(), -1)
    mask = batch.targets != -100
    tok = lp.gather(-1, batch.targets.clamp(min=0)[:, None])[:, 0] * mask
    sums = torch.zeros(len(batch.seq_lens)).index_add(0, batch.seq_ids, tok)
    return sums[0::2], sums[1::2]


def test_fused_loss_and_gradients_equal_naive_with_reference_copy(pairs_file):
    model, tok = metareward.load_model("tiny-random")
    reference, _ = metareward.load_model("tiny-random")  # the naive path keeps a second model
    pairs, _ = load_pairs(pairs_file, tok, 512)
    with torch.no_grad():  # make policy != reference so the loss is not trivially log 2
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    batch = pack(pairs, range(len(pairs)))
    ref_fused = torch.zeros(len(pairs), 2)
    with torch.no_grad():
        c, r = policy_logps(reference, batch)
        ref_fused[:, 0], ref_fused[:, 1] = c, r
        rc, rr = naive_logps(reference, batch)

    def loss_of(fn, rc, rr):
        model.zero_grad()
        c, r = fn(model, batch)
        out = dpo_loss(LogProbs(c, r, rc, rr, batch.chosen_tokens.float(), batch.rejected_tokens.float()),
                       "sigmoid", beta=0.1, alpha=0.2)
        loss = out.losses.mean()
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    fused, g_fused = loss_of(policy_logps, ref_fused[:, 0], ref_fused[:, 1])
    naive, g_naive = loss_of(naive_logps, rc, rr)
    assert fused == pytest.approx(naive, abs=1e-5)
    for n in g_fused:  # float32: chunked log-sum-exp vs full log_softmax differ only in summation order
        torch.testing.assert_close(g_fused[n], g_naive[n], rtol=1e-4, atol=1e-6)


def test_first_loss_is_log2_and_training_separates_pairs(pairs_file):
    model, tok = metareward.load_model("tiny-random")
    pairs, _ = load_pairs(pairs_file, tok, 512)
    cfg = DPOConfig(lr=1e-3, epochs=5, batch_size=4, warmup_ratio=0.0, beta=0.1)
    hist = train(model, pairs, cfg, use_tqdm=False)
    assert hist[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert len(hist) == 10 and hist[-1]["rewards/accuracies"] == 1.0
    assert hist[-1]["rewards/margins"] > hist[1]["rewards/margins"] > 0
    assert {"loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
            "logps/rejected", "grad_norm", "learning_rate", "tokens_per_s", "peak_memory_bytes"} <= hist[0].keys()
    assert model.weights_version == 10


def test_reference_logps_are_the_current_weights(pairs_file):
    model, tok = metareward.load_model("tiny-random")
    pairs, _ = load_pairs(pairs_file, tok, 512)
    from metareward.trainer.distributed import Dist
    ref = reference_logps(model, pairs, DPOConfig(micro_batch_tokens=64), Dist(), use_tqdm=False)
    with torch.no_grad():
        c, r = naive_logps(model, pack(pairs, range(len(pairs))))
    torch.testing.assert_close(ref, torch.stack([c, r], 1), rtol=1e-5, atol=1e-4)


def test_non_finite_loss_stops_with_the_step_and_keeps_weights(pairs_file):
    model, tok = metareward.load_model("tiny-random")
    pairs, _ = load_pairs(pairs_file, tok, 512)
    hist = train(model, pairs, DPOConfig(lr=1e-4, batch_size=4, warmup_ratio=0.0), use_tqdm=False)
    good = {n: p.clone() for n, p in model.named_parameters()}
    cfg = DPOConfig(lr=1e-4, batch_size=4, warmup_ratio=0.0)
    with torch.no_grad():
        model.model.norm.weight[0] = float("inf")  # every log-prob becomes NaN
    with pytest.raises(NonFiniteError, match="optimizer step 0"):
        train(model, pairs, cfg, use_tqdm=False)
    model.model.norm.weight.data[0] = good["model.norm.weight"][0]
    assert all(torch.equal(good[n], p) for n, p in model.named_parameters())
    assert len(hist) == 2


def test_saved_checkpoint_loads_in_transformers(pairs_file, tmp_path):
    from transformers import AutoModelForCausalLM
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "metareward", "train-dpo", "--pairs", str(pairs_file), "--output",
                        str(out), "--lr", "1e-3", "--batch-size", "4", "--epochs", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and rows[-1]["rewards/accuracies"] == 1.0
    model, _ = metareward.load_model(out)
    ids = torch.tensor([[256, 260, 72, 105, 257, 261]])
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.equal(hf(ids).logits, model(ids))
        base, _ = metareward.load_model("tiny-random")
        assert not torch.equal(base(ids), model(ids))


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(pairs_file, tmp_path):
    args = ["train-dpo", "--pairs", str(pairs_file), "--lr", "1e-3", "--batch-size", "4", "--epochs", "2",
            "--micro-batch-tokens", "300", "--warmup-ratio", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "metareward", *args, "--output", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "metareward",
                          *args, "--output", str(tmp_path / "two")], capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    a = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= 1e-4 and x["pairs"] == y["pairs"]
    m0, _ = metareward.load_model("tiny-random")
    m1, _ = metareward.load_model(tmp_path / "one")
    m2, _ = metareward.load_model(tmp_path / "two")
    # Adam divides by sqrt(v): an element whose gradient is near zero may move by up to lr on summation-order
    # noise alone, so elementwise tolerances are wrong here. The updates as a whole must agree, and no element
    # may differ by more than one step could move it.
    d1 = torch.cat([(p - p0).flatten() for p, p0 in zip(m1.parameters(), m0.parameters())]).double()
    d2 = torch.cat([(q - p0).flatten() for q, p0 in zip(m2.parameters(), m0.parameters())]).double()
    assert d1.norm() > 0
    assert (d1 - d2).norm() <= 1e-3 * d1.norm(), ((d1 - d2).norm() / d1.norm()).item()
    assert (d1 - d2).abs().max() <= 1e-3


@pytest.mark.parametrize("rows, message", [
    (['{"prompt": "a", "chosen": "b"}'], ":1: missing field 'rejected'"),
    (['{"prompt": "a", "chosen": "", "rejected": "c"}'], ":1: 'chosen' is empty"),
    (['{"prompt": "a", "chosen": "b", "rejected": "c"}', '{"prompt": "a", "chosen": "same", "rejected": "same"}'],
     ":2: 'chosen' and 'rejected' are identical"),
    (['{"prompt": "a", "chosen": "b", "rejected": "c"}', "not json"], ":2: not valid JSON"),
])
def test_bad_pairs_files(tmp_path, rows, message, capsys):
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(rows) + "\n")
    assert main(["train-dpo", "--pairs", str(p), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_non_empty_output_needs_force(pairs_file, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["train-dpo", "--pairs", str(pairs_file), "--output", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").read_text() == "x"


def test_same_engine_generates_from_the_trained_weights_without_reload(pairs_file):
    from metareward.engine import Engine, SamplingParams
    model, tok = metareward.load_model("tiny-random")
    pairs, _ = load_pairs(pairs_file, tok, 512)
    engine = Engine(model, tok, num_kv_blocks=256)
    prompt = [{"role": "user", "content": "What is 3 plus 3?"}]
    cands = list(range(40, 60))
    before = engine.next_token_logprobs([prompt], cands, use_tqdm=False)[0]
    tensors = [p.data_ptr() for p in model.parameters()]
    engine.release()  # training takes the cache's memory
    train(model, pairs, DPOConfig(lr=1e-3, epochs=2, batch_size=4, warmup_ratio=0.0), use_tqdm=False)
    assert [p.data_ptr() for p in model.parameters()] == tensors  # updated in place: no copy, no reload
    after = engine.next_token_logprobs([prompt], cands, use_tqdm=False)[0]
    assert max(abs(a - b) for a, b in zip(before, after)) > 1e-3
    fresh = Engine(model, tok, num_kv_blocks=256).next_token_logprobs([prompt], cands, use_tqdm=False)[0]
    assert after == pytest.approx(fresh, abs=1e-6)  # no stale prefix-cache KV from the old weights
    out = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)[0]
    assert len(out.samples[0].token_ids) >= 1


def test_gradient_checkpointing_gives_the_same_gradients(pairs_file):
    model, tok = metareward.load_model("tiny-random")
    pairs, _ = load_pairs(pairs_file, tok, 512)
    batch = pack(pairs, range(4))
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = ckpt
        c, r = policy_logps(model, batch)
        (c - r).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    model.gradient_checkpointing = False
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_master_weights_keep_float32_state_for_bfloat16_parameters():
    from metareward.trainer.optim import MasterWeights, make_optimizer
    model, _ = metareward.load_model("tiny-random", dtype="bfloat16")
    opt = make_optimizer(model, 1e-2, (0.9, 0.999), 0.0, master_weights=True)
    assert isinstance(opt, MasterWeights) and all(m.dtype == torch.float32 for m in opt.master)
    p0 = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-3)
    opt.step()
    for p, m, old in zip(model.parameters(), opt.master, p0):
        assert torch.equal(p, m.to(torch.bfloat16))  # the model's tensor is the rounded master
        # AdamW's first step moves every weight by lr (times the sign of the gradient)
        torch.testing.assert_close(m, old.float() - 1e-2, rtol=0, atol=1e-6)
    pure = make_optimizer(model, 1e-2, (0.9, 0.999), 0.0, master_weights=False)
    assert isinstance(pure, torch.optim.AdamW)
