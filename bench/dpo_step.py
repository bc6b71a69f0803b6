"""One DPO training step, metareward's against a naive one, on the same weights, pairs, loss and AdamW.

  python bench/dpo_step.py [--device cuda|cpu] [--out results/dpo_step.json]

metareward: summed response log-probs by the fused linear log-probs (packed varlen sequences, the lm-head run on
response positions only, no [N, V] logits), reference log-probs computed once before training from the same
weights. naive: full [N, V] logits, float32 log_softmax, gather, and a second model copy as the reference, run
every step (what TRL-style trainers do). Both: sigmoid DPO loss, gradient clipping, AdamW (float32 master weights
for bf16 models).

Each provider runs in a fresh subprocess, so that its memory is its own. "peak total": the peak, over the timed
steps, of the memory held beyond what the process held before the model was built (weights, the reference copy,
optimizer state, the step's activations): on CPU the peak RSS (RSS does not shrink when torch frees memory, so
two providers in one process would measure wrong), on CUDA the allocator's peak. "step peak": the peak of one
step beyond what was allocated before it (CUDA exact; on CPU the RSS growth, a lower bound).

CPU: the 20M-parameter Llama of engine_throughput.py (vocab 32000), 4 pairs a step (256-token prompts and
responses, +-25%). CUDA: Llama-3-8B-shaped in bf16 with 8 of its 32 layers (so that two copies, the Adam state
and the naive logits fit), 8 pairs a step. MFU = model FLOPs / step time / the bf16 matmul rate measured in the
same run, model FLOPs = 6 * (layer params * tokens + lm-head params * response tokens). "first token": the time
from the end of an optimizer step to the first token generated from the updated weights by an Engine made before
training (its KV cache released during training and re-allocated, the stale prefix cache dropped)."""
from __future__ import annotations

import argparse
import copy
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.engine_throughput import hf_config, load_tokenizer  # noqa: E402
from bench.harness import fmt_bytes, matmul_flops, report, sync, time_fn  # noqa: E402
from metareward.engine import Engine, SamplingParams  # noqa: E402
from metareward.model import CausalLM, ModelConfig  # noqa: E402
from metareward.model.attention import Packed  # noqa: E402
from metareward.trainer.data import IGNORE_INDEX, TokenizedPair, pack, sequence_logps  # noqa: E402
from metareward.trainer.dpo import policy_logps  # noqa: E402
from metareward.trainer.losses import LogProbs, dpo_loss  # noqa: E402
from metareward.trainer.optim import make_optimizer  # noqa: E402
from metareward.utils import peak_memory, reset_peak_memory, rss_bytes  # noqa: E402

PROVIDERS = ("metareward", "naive")


def random_model(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, seed: int = 0) -> CausalLM:
    # built on meta and materialized once in the target dtype (an 8B-shaped model would not fit twice in float32
    # on the way); the same seed gives both providers the same weights
    with torch.device("meta"):
        model = CausalLM(cfg).to(dtype)
    model = model.to_empty(device=device)
    model.tie_weights()
    g = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0) if name.endswith("norm.weight") else p.normal_(0.0, 0.02, generator=g)
    return model


def make_pairs(n: int, prompt: int, response: int, vocab: int, seed: int = 0) -> list[TokenizedPair]:
    g = torch.Generator().manual_seed(seed)

    def ids(mean):
        length = int(torch.randint(mean * 3 // 4, mean * 5 // 4 + 1, (), generator=g))
        return torch.randint(3, vocab, (length,), generator=g).tolist()
    return [TokenizedPair(ids(prompt), ids(response), ids(response)) for _ in range(n)]


def naive_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    # full [N, V] logits, log_softmax in float32, gather: what the weight-copying trainers do
    logits = model.compute_logits(model.hidden_states(batch.input_ids, batch.positions, Packed(batch.seq_lens)))
    lp = torch.log_softmax(logits.float(), -1)
    mask = batch.targets != IGNORE_INDEX
    return sequence_logps(lp.gather(1, batch.targets.clamp(min=0)[:, None])[:, 0] * mask, batch)


class Step:
    """One optimizer step on the next group of pairs, as trainer.dpo.train does it (one micro-batch)."""

    def __init__(self, provider: str, model, pairs, groups, beta: float = 0.1):
        self.model, self.pairs, self.groups, self.beta, self.k = model, pairs, groups, beta, 0
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = make_optimizer(model, 1e-6, (0.9, 0.999), 0.0, True)
        self.losses: list[float] = []
        t0 = time.perf_counter()
        if provider == "metareward":  # once, before the first update, from the same weights
            self.policy = policy_logps
            with torch.no_grad():
                ref = [torch.stack(policy_logps(model, pack(pairs, g).to(model.device)), 1) for g in groups]
            self.reference = lambda batch, k: ref[k].float()
        else:  # a frozen copy of the weights, run every step
            self.policy = naive_logps
            refmodel = copy.deepcopy(model).requires_grad_(False)

            def reference(batch, k):
                with torch.no_grad():
                    return torch.stack(naive_logps(refmodel, batch), 1).float()
            self.reference = reference
        sync(model.device)
        self.reference_seconds = time.perf_counter() - t0 if provider == "metareward" else 0.0
        model.train()

    def __call__(self) -> None:
        k, self.k = self.k % len(self.groups), self.k + 1
        batch = pack(self.pairs, self.groups[k]).to(self.model.device)
        ref = self.reference(batch, k)
        c, r = self.policy(self.model, batch)
        out = dpo_loss(LogProbs(c, r, ref[:, 0], ref[:, 1]), "sigmoid", self.beta)
        loss = out.losses.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.model.weights_version += 1
        self.losses.append(loss.item())


def memory_now(device: torch.device) -> int | None:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else rss_bytes()


def first_token_seconds(step: Step, engine: Engine, vocab: int, tries: int = 3) -> list[float]:
    """After an optimizer step: seconds until the engine returns a token of a new request from the updated
    weights (the KV cache is re-allocated, the stale prefix cache dropped, the prompt prefilled, one token sampled)."""
    out = []
    for i in range(tries):
        step()
        sync(step.model.device)
        t0 = time.perf_counter()
        prompt = torch.randint(3, vocab, (64,), generator=torch.Generator().manual_seed(i)).tolist()
        o = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=1), use_tqdm=False)
        out.append(time.perf_counter() - t0)
        assert len(o[0].samples[0].token_ids) == 1
        engine.release()  # back to training
    return out


def child(args) -> dict:
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    dtype = getattr(torch, args.dtype or ("bfloat16" if gpu else "float32"))
    cfg = ModelConfig.from_hf(hf_config(args.shape, args.layers).to_dict(), {"eos_token_id": 2})
    per_step, groups = args.pairs, args.reps + 5  # warm-up, timed, step peak, 3 first-token steps
    pairs = make_pairs(per_step * groups, args.prompt_len, args.response_len, cfg.vocab_size)
    steps = [list(range(i * per_step, (i + 1) * per_step)) for i in range(groups)]
    tok = load_tokenizer()[0]
    rate = matmul_flops(device, torch.bfloat16)
    sync(device)
    base = memory_now(device)
    reset_peak_memory(device)
    model = random_model(cfg, device, dtype)
    engine = Engine(model, tok) if args.provider == "metareward" else None  # made before training
    step = Step(args.provider, model, pairs, steps)
    step()  # warm-up; the optimizer state now exists
    if engine is not None:  # generate once, sized to the memory training leaves, then hand the KV back
        engine.generate([[5] * 32], SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)
        engine.release()
    sync(device)
    reset_peak_memory(device)  # the KV cache just freed is no part of a training step's memory
    t = time_fn(step, device, warmup=0, rep=args.reps)
    total = peak_memory(device) - base
    sync(device)
    before = memory_now(device)
    reset_peak_memory(device)
    step()
    step_peak = peak_memory(device) - before
    first = first_token_seconds(step, engine, cfg.vocab_size) if engine is not None else None
    timed = steps[1:1 + args.reps]  # the groups the timed steps ran on
    tokens = sum(pairs[i].num_tokens for g in timed for i in g) / args.reps
    targets = sum(len(pairs[i].chosen) + len(pairs[i].rejected) for g in timed for i in g) / args.reps
    head = cfg.vocab_size * cfg.hidden_size
    body = cfg.num_params - head * (1 if cfg.tie_word_embeddings else 2)  # the layers and the final norm
    return {"provider": args.provider, **t, "tokens_per_step": tokens, "total_peak": total, "step_peak": step_peak,
            "reference_seconds": step.reference_seconds, "losses": step.losses, "first_token_s": first,
            "matmul_flops": rate, "model_flops_per_step": 6 * (body * tokens + head * targets),
            "model": f"{args.shape}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, heads {cfg.num_heads}/"
                     f"{cfg.num_kv_heads}, vocab {cfg.vocab_size}, {cfg.num_params / 1e6:.1f}M params, {dtype}"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--shape", help="default: llama3-8b on cuda, small on cpu (see engine_throughput.py)")
    ap.add_argument("--layers", type=int, help="layers (default 8 of llama3-8b's 32 on cuda; the shape's on cpu)")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], help="default: bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--pairs", type=int, help="pairs per optimizer step (default 8 cuda, 4 cpu)")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--response-len", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5, help="timed steps per provider, after one warm-up step")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per provider's subprocess")
    ap.add_argument("--provider", choices=PROVIDERS, help=argparse.SUPPRESS)  # the subprocess's part
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    gpu = args.device == "cuda"
    args.shape = args.shape or ("llama3-8b" if gpu else "small")
    args.layers = args.layers or (8 if gpu and args.shape == "llama3-8b" else None)
    args.pairs = args.pairs or (8 if gpu else 4)
    if args.provider:
        Path(args.child_out).write_text(json.dumps(child(args)))
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for p in PROVIDERS:
            cmd = [sys.executable, __file__, "--provider", p, "--child-out", f"{d}/{p}.json", "--device", args.device,
                   "--shape", args.shape, "--pairs", str(args.pairs), "--prompt-len", str(args.prompt_len),
                   "--response-len", str(args.response_len), "--reps", str(args.reps)]
            cmd += ["--layers", str(args.layers)] if args.layers else []
            cmd += ["--dtype", args.dtype] if args.dtype else []
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                results[p] = {"note": f"did not finish within {args.timeout} s"}
                continue
            if r.returncode:
                results[p] = {"note": "failed: " + (r.stderr.strip().splitlines() or ["?"])[-1][:160]}
                print(r.stderr[-3000:], file=sys.stderr)
                continue
            results[p] = json.loads(Path(d, f"{p}.json").read_text())
    return summarize(args, results)


def summarize(args, results: dict) -> int:
    naive = results.get("naive", {})
    rows = []
    for p in PROVIDERS:
        r = results.get(p, {})
        if "median_ms" not in r:
            rows.append({"provider": p, "note": r.get("note", "?")})
            continue
        tok_s = r["tokens_per_step"] / (r["median_ms"] / 1e3)
        row = {"provider": p, "step median_ms": r["median_ms"], "p20_ms": r["p20_ms"], "p80_ms": r["p80_ms"],
               "tokens/step": int(r["tokens_per_step"]), "tokens/s": tok_s, "peak total": fmt_bytes(r["total_peak"]),
               "step peak": fmt_bytes(r["step_peak"]), "total_peak_bytes": r["total_peak"],
               "MFU %": 100 * r["model_flops_per_step"] / (r["median_ms"] / 1e3) / r["matmul_flops"]}
        if "median_ms" in naive:
            row["speedup"] = naive["median_ms"] / r["median_ms"]
            row["peak / naive"] = r["total_peak"] / naive["total_peak"]
        rows.append(row)
    m = results.get("metareward", {})
    extra = {"model": m.get("model") or naive.get("model"),
             "pairs": f"{args.pairs} a step, prompts ~{args.prompt_len} and responses ~{args.response_len} tokens "
                      "(+-25%), random token ids; one micro-batch a step",
             "steps": f"1 warm-up + {args.reps} timed per provider, each in its own subprocess"}
    if "median_ms" in m:
        extra["metareward reference log-probs (once, before training)"] = (
            f"{m['reference_seconds']:.3f} s for {args.reps + 5} steps' pairs")
        f = sorted(m["first_token_s"])
        extra["last optimizer step -> first generated token (s), median of 3"] = round(f[1], 4)
        extra["matmul rate (TFLOP/s, measured)"] = round(m["matmul_flops"] / 1e12, 2)
        extra["MFU"] = ("model FLOPs / step time / matmul rate, model FLOPs = 6 * (layer params * tokens + lm-head "
                        "params * response tokens): the work a step needs (logits are needed at response positions "
                        "only; attention not counted). The naive step runs more (lm-head on every position, a "
                        "reference forward) for the same count")
    if "median_ms" in m and "median_ms" in naive:
        diff = max(abs(a - b) for a, b in zip(m["losses"], naive["losses"]))
        extra["losses, metareward vs naive (same steps)"] = (f"first {m['losses'][0]:.6f} vs {naive['losses'][0]:.6f}"
                                                             f" (log 2 = {math.log(2):.6f}); max |diff| {diff:.2e}")
    report("DPO training step", torch.device(args.device), rows,
           ["provider", "step median_ms", "p20_ms", "p80_ms", "tokens/step", "tokens/s", "speedup", "peak total",
            "peak / naive", "step peak", "MFU %", "note"], args.out, extra)
    return 0 if all("median_ms" in results.get(p, {}) for p in PROVIDERS) else 1


if __name__ == "__main__":
    sys.exit(main())
