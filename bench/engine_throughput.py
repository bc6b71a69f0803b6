"""Engine throughput against transformers' generate (batched, left-padded), side by side in one process on the
same random-weight Llama, prompts and lengths: the generation phase only (after loading and a warm-up), median
of several runs.

  python bench/engine_throughput.py [--device cuda|cpu] [--out results/engine_throughput.json]
  python bench/engine_throughput.py --vllm [--out results/vllm.json]   # vLLM as a peer on the plain workload
  python bench/engine_throughput.py --model /work/cache/smollm2-135m-f32 [--busy] [--out results/smollm2.json]

plain  greedy, ignore_eos. CPU: a 20M-parameter Llama (hidden 384, 6 layers, 6/2 heads, vocab 32000, tied),
       32 chat prompts, 128 new tokens, float32. GPU: Llama-3-8B shape in bf16, 256 prompts of 512 random
       tokens, 512 new tokens. The engine's greedy tokens are compared with transformers'.
judge  the recipe's judge template (rubric + question + response) for 64 responses (16 questions x 4),
       n=5 judgments each (temperature 0.8; 32 tokens on CPU, 128 on GPU, ignore_eos): prefill tokens computed
       against the naive count (all 320 requests prefilling their whole prompt), and end to end against generate
       on the same 320 prompts (one batch on CPU, batches of 160 on GPU). Llama-2's tokenizer when
       ../shared/data has it, else the byte-level one (longer prompts: the rubric alone is ~1500 tokens).
--vllm runs vLLM alone (its own process: it takes the GPU memory for its cache) on the plain workload, with
dummy weights of the same shape: a throughput peer, not a token-for-token comparison.
Ceiling of a decode step: (weight bytes + KV bytes read) / copy bandwidth measured in the same run."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import copy_bandwidth, report, time_fn  # noqa: E402
from metareward.engine import Engine, SamplingParams  # noqa: E402
from metareward.model import CausalLM, ModelConfig  # noqa: E402
from metareward.model.tokenizer import chat_ids, tiny_tokenizer  # noqa: E402
from metareward.judging.templates import load_template  # noqa: E402

T0 = time.perf_counter()
LLAMA2_TOKENIZER = Path(__file__).resolve().parents[2] / "shared/data/tokenizers/llama2"
LLAMA2_CHAT = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token }}[INST] {{ m['content'] }} [/INST]"
               "{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}")
SHAPES = {
    "small": dict(vocab_size=32000, hidden_size=384, intermediate_size=768, num_hidden_layers=6,
                  num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True),
    # same size, deeper and narrower: per-layer work (where transformers' per-step overhead lives) outweighs
    # the lm-head; 17.0M parameters
    "small-deep": dict(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=12,
                       num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=True),
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0, tie_word_embeddings=False),
}
WORDS = ("the model answer question data time people water energy city history music system language light "
         "because which often between small large first important example process result change explain "
         "describe simple different world number problem method learn reason should could would every").split()


def hf_config(shape: str, layers: int | None = None, max_len: int = 4096):
    from transformers import LlamaConfig
    over = {"num_hidden_layers": layers} if layers else {}
    return LlamaConfig(**{**SHAPES[shape], **over}, max_position_embeddings=max_len, bos_token_id=1, eos_token_id=2,
                       architectures=["LlamaForCausalLM"])


def build_models(cfg, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """(transformers model, metareward CausalLM) holding the SAME weight tensors: transformers' own random init,
    run on the target device (seconds for 8B on a GPU), then assigned into ours, which was built on meta."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    hf.generation_config.eos_token_id = None  # ignore_eos: every row runs to max_new_tokens
    with torch.device("meta"):
        ours = CausalLM(ModelConfig.from_hf(cfg.to_dict(), {"eos_token_id": cfg.eos_token_id}))
    ours.load_state_dict(hf.state_dict(), strict=False, assign=True)
    ours.tie_weights()
    missing = [n for n, p in ours.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"weights not loaded into metareward's model: {missing[:3]}")
    return hf, ours.eval()


def load_tokenizer():
    """Llama-2's tokenizer (realistic prompt lengths) when the shared copy is there, else the byte-level one."""
    if (LLAMA2_TOKENIZER / "tokenizer.model").is_file():
        from transformers import LlamaTokenizer
        tok = LlamaTokenizer.from_pretrained(str(LLAMA2_TOKENIZER), local_files_only=True)
        tok.chat_template = LLAMA2_CHAT
        return tok, "llama2 (32000)"
    return tiny_tokenizer(), "byte-level tiny_tokenizer (262)"


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def plain_prompts(tok, n: int, rng: random.Random) -> list[list[int]]:
    return [chat_ids(tok, [{"role": "user", "content": f"Question {i}: {words(rng, rng.randint(10, 60))}?"}])
            for i in range(n)]


def judge_prompts(tok, questions: int, per_question: int, rng: random.Random) -> list[list[int]]:
    template = load_template("judge")
    out = []
    for q in range(questions):
        question = f"Question {q}: {words(rng, rng.randint(10, 40))}?"
        for _ in range(per_question):
            response = words(rng, rng.randint(40, 160)) + "."
            out.append(chat_ids(tok, [{"role": "user", "content": template.render(question=question,
                                                                                  response=response)}]))
    return out


def hf_generate(hf, prompts: list[list[int]], max_new: int, batch: int, sample: bool, pad: int) -> list[list[int]]:
    """transformers' generate over `prompts` in batches (left-padded, sorted by length) -> new tokens per prompt."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    kw = dict(do_sample=True, temperature=0.8, top_k=0, top_p=1.0) if sample else dict(do_sample=False)
    for s in range(0, len(order), batch or len(order)):
        rows = [prompts[i] for i in order[s:s + (batch or len(order))]]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, x in enumerate(rows):
            ids[r, width - len(x):], mask[r, width - len(x):] = torch.tensor(x), 1
        gen = hf.generate(input_ids=ids.to(hf.device), attention_mask=mask.to(hf.device), max_new_tokens=max_new,
                          min_new_tokens=max_new, pad_token_id=pad, **kw)
        assert gen.shape[1] == width + max_new, "generate stopped early"
        for r, i in enumerate(order[s:s + len(rows)]):
            out[i] = gen[r, width:].tolist()
    return out


class DecodeSteps:
    """Times each engine step that is a decode step (the whole step: schedule, forward, sample, bookkeeping; its
    sample() ends in a host copy, so the time includes the GPU's work), the parts of it, and the KV it reads.
    Parts: forward (the model's hidden_states + compute_logits), sample, and host = the rest (scheduling,
    block-table updates, input tensors, postprocessing)."""

    def __init__(self, engine: Engine):
        self.reset()
        step, run, sample = engine.step, engine.runner.run, engine.runner.sample
        model = engine.model
        hidden, logits = model.hidden_states, model.compute_logits
        self.pending: dict | None = None

        def timed(name, fn):
            def call(*a, **k):
                t0 = time.perf_counter()
                out = fn(*a, **k)
                if self.pending is not None:
                    self.pending[name] = self.pending.get(name, 0.0) + time.perf_counter() - t0
                return out
            return call

        def timed_run(batch):
            if not batch.prefill:  # context each sequence attends to, the new token included
                self.pending = {"ctx": sum(len(s) for s in batch.seqs), "batch": len(batch.seqs)}
            return run(batch)

        def timed_step():
            self.pending = None
            t0 = time.perf_counter()
            out = step()
            if self.pending is not None:
                p = self.pending
                self.times.append(time.perf_counter() - t0)
                self.ctx_tokens.append(p["ctx"])
                self.batch.append(p["batch"])
                self.forward.append(p.get("forward", 0.0))
                self.sample.append(p.get("sample", 0.0))
                self.threads.append(torch.get_num_threads())
            self.pending = None
            return out
        engine.step, engine.runner.run = timed_step, timed_run
        engine.runner.sample = timed("sample", sample)
        model.hidden_states, model.compute_logits = timed("forward", hidden), timed("forward", logits)

    def reset(self) -> None:
        self.times, self.ctx_tokens, self.batch, self.forward, self.sample = [], [], [], [], []
        self.threads: list[int] = []

    def host(self) -> list[float]:
        return [t - f - s for t, f, s in zip(self.times, self.forward, self.sample)]


def floor_seconds(model, ctx_tokens: int, bandwidth: float) -> float:
    c = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if not c.tie_word_embeddings:  # the input embedding is read a row per token, not whole
        weights -= model.model.embed_tokens.weight.numel() * model.model.embed_tokens.weight.element_size()
    kv = ctx_tokens * c.num_layers * 2 * c.num_kv_heads * c.head_dim * model.dtype.itemsize
    return (weights + kv) / bandwidth


def note(msg: str) -> None:  # progress on stderr: a slow phase shows where it is
    print(f"[{time.perf_counter() - T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


def in_seconds(t: dict) -> dict:
    return {k.replace("_ms", "_s"): t[k] / 1e3 for k in ("median_ms", "p20_ms", "p80_ms")}


def time_engine(engine: Engine, steps: DecodeSteps, prompts, params, warm: SamplingParams, reps: int) -> dict:
    engine.generate(prompts, warm, use_tqdm=False)  # warm-up: lazy init, CUDA graphs, kernel autotuning
    last = {}

    def run():
        engine.blocks.reset_cache()  # every run starts cold: prefix-cache hits come from within the run only
        engine.stats = type(engine.stats)()
        steps.reset()
        last["outs"] = engine.generate(prompts, params, use_tqdm=False)
        note(f"engine run: {engine.stats.seconds:.2f} s")
    t = time_fn(run, engine.model.device, warmup=0, rep=reps)
    engine.release()  # give the KV cache's memory back before transformers runs
    return {**in_seconds(t), "stats": engine.stats, "outs": last["outs"], "step_times": steps.times,
            "ctx_tokens": steps.ctx_tokens}


def time_hf(hf, prompts, max_new: int, batch: int, sample: bool, pad: int, reps: int) -> dict:
    hf_generate(hf, prompts[:8], 2, batch, sample, pad)  # warm-up
    last = {}

    def run():
        t0 = time.perf_counter()
        last["outs"] = hf_generate(hf, prompts, max_new, batch, sample, pad)
        note(f"transformers run: {time.perf_counter() - t0:.2f} s")
    t = time_fn(run, hf.device, warmup=0, rep=reps)
    return {**in_seconds(t), "outs": last["outs"]}


def greedy_match(engine_outs, hf_outs) -> dict:
    ours = [o.samples[0].token_ids for o in engine_outs]
    agree = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), len(x)) for x, y in zip(ours, hf_outs)]
    return {"rows equal": f"{sum(a == len(x) for a, x in zip(agree, ours))}/{len(ours)}",
            "tokens before the first difference": f"{sum(agree)}/{sum(map(len, ours))}",
            "first differences at": sorted(a for a, x in zip(agree, ours) if a < len(x))}


def engine_row(workload: str, r: dict, model, bandwidth: float, new_tokens: int) -> dict:
    n = len(r["step_times"])
    step_ms = 1e3 * sum(r["step_times"]) / max(n, 1)
    floor_ms = 1e3 * sum(floor_seconds(model, c, bandwidth) for c in r["ctx_tokens"]) / max(n, 1)
    return {"workload": workload, "provider": "engine", "median_s": r["median_s"], "p20_s": r["p20_s"],
            "p80_s": r["p80_s"], "out tok/s": new_tokens / r["median_s"], "prefill tokens": r["stats"].computed_tokens,
            "decode step ms": step_ms, "floor ms": floor_ms, "step / floor": step_ms / floor_ms if n else None}


def hf_row(workload: str, r: dict, new_tokens: int, prefill: int) -> dict:
    return {"workload": workload, "provider": "transformers", **{k: r[k] for k in ("median_s", "p20_s", "p80_s")},
            "out tok/s": new_tokens / r["median_s"], "prefill tokens": prefill}


def vllm_run(args, cfg, prompts: list[list[int]], new: int, device: torch.device) -> dict:
    from vllm import LLM
    from vllm import SamplingParams as VllmParams
    with tempfile.TemporaryDirectory() as d:
        cfg.save_pretrained(d)
        llm = LLM(model=d, load_format="dummy", dtype="bfloat16", skip_tokenizer_init=True, seed=0,
                  max_model_len=cfg.max_position_embeddings, gpu_memory_utilization=0.85)
    reqs = [{"prompt_token_ids": p} for p in prompts]
    llm.generate(reqs, VllmParams(temperature=0, max_tokens=4, ignore_eos=True, detokenize=False), use_tqdm=False)
    params, last = VllmParams(temperature=0, max_tokens=new, ignore_eos=True, detokenize=False), {}
    t = time_fn(lambda: last.update(outs=llm.generate(reqs, params, use_tqdm=False)), device, warmup=0, rep=args.reps)
    assert all(len(o.outputs[0].token_ids) == new for o in last["outs"])
    return {"workload": "plain", "provider": "vllm (dummy weights)", **in_seconds(t)}


# ----------------------------------------------------------------------------------------------------------
# --model DIR: a real checkpoint (SmolLM2-135M-Instruct on CPU) against transformers on the same tensors
# ----------------------------------------------------------------------------------------------------------
SEED_PROMPTS = Path(__file__).resolve().parents[2] / "shared/data/seed_prompts.jsonl"


def hf_twin(model, path: str):
    """transformers' model for the checkpoint at `path`, holding the SAME tensors as our `model`."""
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=model.dtype)  # on the CPU: its buffers (RoPE) are real
    missing, _ = hf.load_state_dict(model.state_dict(), strict=False, assign=True)
    hf.tie_weights()
    if [n for n in missing if "lm_head" not in n]:
        raise RuntimeError(f"weights not loaded into transformers' model: {missing[:3]}")
    if hf.lm_head.weight.data_ptr() != model.lm_head.weight.data_ptr():
        raise RuntimeError("transformers' lm_head does not share our weights")
    return hf.eval()


def useful(tokens: list[int], eos: frozenset) -> int:
    """Generated tokens up to and including the first stop token (what the engine returns)."""
    return next((i + 1 for i, t in enumerate(tokens) if t in eos), len(tokens))


def hf_rows(hf, prompts: list[list[int]], pad: int, batch: int, **kw) -> list[list[int]]:
    """transformers' generate over `prompts` in batches of `batch` prompts (left-padded, in the given order);
    -> the new tokens of every returned row (num_return_sequences rows per prompt, in order)."""
    out = []
    for s in range(0, len(prompts), batch):
        rows = prompts[s:s + batch]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, x in enumerate(rows):
            ids[r, width - len(x):], mask[r, width - len(x):] = torch.tensor(x), 1
        gen = hf.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad, **kw)
        out += gen[:, width:].tolist()
    return out


def linear_floor(model, batch: int, reps: int = 5) -> float:
    """Seconds of one decode step's matmuls alone: every Linear of the model (the lm-head included) applied to
    a [batch, in_features] input, one after another, median of `reps` passes."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    xs = [torch.randn(batch, m.in_features, dtype=model.dtype, device=model.device) for m in linears]
    times = []
    with torch.inference_mode():
        for i in range(reps + 1):
            t0 = time.perf_counter()
            for m, x in zip(linears, xs):
                m(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


class Competitor:
    """A CPU-bound process pinned to the last core this process may use (`with Competitor():`)."""

    def __enter__(self):
        import subprocess
        core = max(os.sched_getaffinity(0))
        self.proc = subprocess.Popen([sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{core}}})\n"
                                      "while True: pass"])
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def uptime() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0] if Path("/proc/loadavg").exists() else "n/a"


def alternate(runs: dict, reps: int, busy: bool) -> dict:
    """runs: {provider: fn() -> useful tokens}; each rep runs every provider once, alternating (and, with busy,
    again with a competing process). -> {(phase, provider): {"times": [...], "tokens": [...], "load": [...]}}"""
    out = {}
    phases = ["quiet", "busy"] if busy else ["quiet"]
    for rep in range(reps):
        for phase in phases:
            with Competitor() if phase == "busy" else contextlib.nullcontext():
                for name, fn in runs.items():
                    load = uptime()
                    t0 = time.perf_counter()
                    tokens = fn()
                    dt = time.perf_counter() - t0
                    r = out.setdefault((phase, name), {"times": [], "tokens": [], "load": []})
                    r["times"].append(dt)
                    r["tokens"].append(tokens)
                    r["load"].append(load)
                    if hasattr(fn, "after"):  # outside the timing: e.g. the step summary and the matmul floor
                        fn.after(phase)
                    note(f"rep {rep} {phase} {name}: {dt:.2f} s, {tokens} useful tokens, {tokens / dt:.1f} tok/s, "
                         f"load {load}")
    return out


def rows_of(workload: str, res: dict, engine_run=None, extra: dict | None = None) -> list[dict]:
    rows = []
    for (phase, name), r in res.items():
        rates = [n / t for n, t in zip(r["tokens"], r["times"])]
        more = {}
        if name == "engine":
            more = dict(extra or {})
            per_rep = getattr(engine_run, "summaries", {}).get(phase, [])
            for k in (per_rep[0] if per_rep else {}):  # median over the reps of each step figure
                vals = [x[k] for x in per_rep if k in x]
                more[k] = statistics.median(vals) if isinstance(vals[0], (int, float)) else "/".join(sorted(set(vals)))
        rows.append({"workload": workload, "phase": phase, "provider": name,
                     "median_s": statistics.median(r["times"]), "useful tokens": statistics.median(r["tokens"]),
                     "useful tok/s": statistics.median(rates), "load": "/".join(r["load"]), **more})
    for r in rows:
        base = next(x for x in rows if x["phase"] == r["phase"] and x["provider"] == "transformers")
        r["speedup"] = r["useful tok/s"] / base["useful tok/s"]
    return rows


def step_summary(steps: DecodeSteps, model, at_batch: int | None) -> dict:
    """Median decode step (ms) and its parts; with at_batch, only the steps of that batch size, against the
    model's matmuls alone at that size."""
    pick = [i for i, b in enumerate(steps.batch) if at_batch is None or b == at_batch]
    if not pick:
        return {}
    med = lambda xs: 1e3 * statistics.median([xs[i] for i in pick])  # noqa: E731
    threads = sorted(set(steps.threads[i] for i in pick))
    out = {"decode steps": len(pick), "engine threads": "/".join(map(str, threads)), "step ms": med(steps.times),
           "forward ms": med(steps.forward),
           "sample ms": med(steps.sample), "host ms": med(steps.host())}
    if at_batch:
        out["batch"] = at_batch
        saved = torch.get_num_threads()
        torch.set_num_threads(steps.threads[pick[-1]])  # the engine's own thread count
        try:
            out["matmul floor ms"] = 1e3 * linear_floor(model, at_batch)
        finally:
            torch.set_num_threads(saved)
        out["step / floor"] = out["step ms"] / out["matmul floor ms"]
    return out


def model_main(args) -> int:
    from transformers.utils import logging as hf_logging

    from metareward.model import load_model
    hf_logging.set_verbosity_error()
    model, tok = load_model(args.model, dtype="float32", device="cpu")
    model.eval()
    hf = hf_twin(model, args.model)
    eos = frozenset(set(model.config.eos_token_ids) | {tok.eos_token_id})
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows = [json.loads(x) for x in Path(args.prompts_file).read_text().splitlines() if x.strip()][:args.prompts]
    prompts = [chat_ids(tok, [{"role": "user", "content": r["prompt"]}]) for r in rows]
    engine = Engine(model, tok, max_num_seqs=256, num_threads=args.threads)
    steps = DecodeSteps(engine)
    lens = sorted(map(len, prompts))
    extra = {"model": f"{args.model}: {model.config.num_params / 1e6:.1f}M params, float32",
             "prompts": f"the first {len(prompts)} of {args.prompts_file} as chat ({lens[0]}-{lens[-1]} tokens, "
                        f"median {lens[len(lens) // 2]})",
             "threads": f"engine: {'one per free core' if args.threads is None else args.threads}; transformers: "
                        f"{args.hf_threads or f'torch default ({torch.get_num_threads()})'}",
             "load average at start": uptime()}
    table, details = [], {}
    workloads = args.workloads.split(",")
    responses = None

    def engine_run(ps, params, floor_batch=None):
        def run():
            engine.blocks.reset_cache()  # every run starts cold: prefix-cache hits come from within the run
            steps.reset()
            outs = engine.generate(ps, params, use_tqdm=False)
            run.outs, run.computed = outs, engine.stats.computed_tokens
            return sum(len(s.token_ids) for o in outs for s in o.samples)

        def after(phase):
            run.summaries.setdefault(phase, []).append(step_summary(steps, model, floor_batch))
        run.after, run.summaries = after, {}
        engine.generate(ps[:2], SamplingParams(max_tokens=2), use_tqdm=False)  # warm-up
        return run

    def hf_run(ps, batch, **kw):
        def run():
            saved = torch.get_num_threads()
            torch.set_num_threads(args.hf_threads or saved)
            try:
                outs = hf_rows(hf, ps, pad, batch, **kw)
            finally:
                torch.set_num_threads(saved)
            run.outs = outs
            return sum(useful(x, eos) for x in outs)
        hf_rows(hf, ps[:2], pad, 2, max_new_tokens=2, do_sample=False)  # warm-up
        return run

    if "greedy" in workloads:  # greedy, one batch, fixed length: tokens must agree
        e = engine_run(prompts, SamplingParams(temperature=0, max_tokens=args.greedy_new, ignore_eos=True),
                       len(prompts))
        h = hf_run(prompts, len(prompts), do_sample=False, max_new_tokens=args.greedy_new,
                   min_new_tokens=args.greedy_new)
        res = alternate({"engine": e, "transformers": h}, args.reps, args.busy)
        table += rows_of("greedy", res, e)
        details["greedy tokens, engine vs transformers"] = greedy_match(e.outs, h.outs)
    if "actor" in workloads or "judge" in workloads:  # n samples at temperature 0.8, top-p 0.95, EOS on
        n = args.actor_n
        params = [SamplingParams(n=n, temperature=0.8, top_p=0.95, max_tokens=args.actor_new, seed=i)
                  for i in range(len(prompts))]
        e = engine_run(prompts, params, len(prompts) * n)
        h = hf_run(prompts, len(prompts), do_sample=True, temperature=0.8, top_p=0.95, top_k=0,
                   num_return_sequences=n, max_new_tokens=args.actor_new)
        if "actor" in workloads:
            res = alternate({"engine": e, "transformers": h}, args.reps, args.busy)
            table += rows_of("actor", res, e)
        else:
            e()
        responses = [(r["prompt"], s.text) for r, o in zip(rows, e.outs) for s in o.samples]
    if "judge" in workloads:  # the recipe's judge template over the actor's responses, N judgments each
        template = load_template("judge", args.judge_template)
        judge = []
        for q, a in responses:
            msgs = template.render(question=q, response=a)  # one user message, or a few-shot conversation
            judge.append(chat_ids(tok, [{"role": "user", "content": msgs}] if isinstance(msgs, str) else msgs))
        params = [SamplingParams(n=args.judge_n, temperature=0.8, top_p=0.95, max_tokens=args.judge_new, seed=i)
                  for i in range(len(judge))]
        e = engine_run(judge, params)
        h = hf_run(judge, args.hf_batch, do_sample=True, temperature=0.8, top_p=0.95, top_k=0,
                   num_return_sequences=args.judge_n, max_new_tokens=args.judge_new)
        res = alternate({"engine": e, "transformers": h}, args.reps, args.busy)
        table += rows_of("judge", res, e, {"prefill tokens": e.computed})
        jl = sorted(map(len, judge))
        details["judge"] = (f"{len(judge)} prompts ({jl[0]}-{jl[-1]} tokens, median {jl[len(jl) // 2]}) x "
                            f"n={args.judge_n}; transformers in batches of {args.hf_batch} prompts")
    if "host" in workloads:
        details["host time per decode step at B=256 (ms)"] = host_prep_times()
    extra.update(details)
    extra["load average at end"] = uptime()
    report("engine vs transformers on a real model", torch.device("cpu"), table,
           ["workload", "phase", "provider", "median_s", "useful tokens", "useful tok/s", "speedup", "load",
            "engine threads", "batch", "step ms", "forward ms", "sample ms", "host ms", "matmul floor ms", "step / floor"],
           args.out, extra)
    return 0


def host_prep_times(batch: int = 256, reps: int = 20) -> dict:
    """Host work of a decode step without the model: scheduling, block-table upkeep and the step's input
    tensors, for `batch` sequences holding 64 / 128 / 512 blocks each. 'rebuilt' is the earlier way, the whole
    [B, max_blocks] table rebuilt from the Python lists every step (what the issue measured)."""
    from metareward.engine.block_manager import BlockManager
    from metareward.engine.model_runner import ModelRunner
    from metareward.engine.scheduler import Scheduler
    from metareward.engine.sequence import Sequence
    cfg = ModelConfig.from_hf({"model_type": "llama", "vocab_size": 300, "hidden_size": 8, "intermediate_size": 8,
                               "num_hidden_layers": 1, "num_attention_heads": 1, "num_key_value_heads": 1,
                               "max_position_embeddings": 1 << 14})
    out = {}
    for nblk in (64, 128, 512):
        page = 16
        model = CausalLM(cfg)
        runner = ModelRunner(model, page, (nblk + 2) * page, batch, batch * (nblk + 2), 0, False)
        runner.allocate()
        bm = BlockManager(batch * (nblk + 2), page)
        sched = Scheduler(bm, batch, 1 << 30)
        seqs = [Sequence(i, i, 0, [1 + i % 250] + [i % 7] * (nblk * page - page // 2), SamplingParams(), 0)
                for i in range(batch)]
        for s in seqs:
            sched.add(s)
        b = sched.schedule()  # admit them all (one prefill batch), then decode steps
        for s, n in zip(b.seqs, b.num_tokens):
            s.num_computed += n
            s.token_ids.append(3)
        new, old = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            b = sched.schedule()
            runner._sync_tables(b.seqs)
            runner.decode_inputs(b.seqs)
            new.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            width = max(len(s.block_table) for s in b.seqs)
            torch.tensor([s.block_table + [0] * (width - len(s.block_table)) for s in b.seqs], dtype=torch.int32)
            old.append(time.perf_counter() - t0)
            for s in b.seqs:  # what postprocessing does: the KV is computed, a token appended
                s.num_computed += 1
                s.token_ids.append(3)
        out[f"{nblk} blocks"] = {"incremental": round(1e3 * statistics.median(new), 3),
                                 "table rebuilt (the rebuild alone)": round(1e3 * statistics.median(old), 3)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--shape", choices=list(SHAPES), help="default: llama3-8b on cuda, small on cpu")
    ap.add_argument("--layers", type=int, help="override the shape's layer count (smoke tests)")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], help="default: bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--prompts", type=int, help="plain: prompts (default 256 cuda, 32 cpu)")
    ap.add_argument("--prompt-len", type=int, help="plain: random prompts of this many tokens (default 512 cuda, "
                                                  "0 cpu: chat prompts)")
    ap.add_argument("--new", type=int, help="plain: new tokens (default 512 cuda, 128 cpu)")
    ap.add_argument("--judge-new", type=int, help="judge: tokens per judgment (default 128 cuda, 32 cpu)")
    ap.add_argument("--judge-questions", type=int, default=16, help="judge: questions (x4 responses, x5 judgments)")
    ap.add_argument("--hf-batch", type=int, help="judge: transformers' batch (0: all 320; default 160 cuda, 0 cpu)")
    ap.add_argument("--reps", type=int, default=3, help="timed runs of each provider, after a warm-up")
    ap.add_argument("--hf-reps", type=int, help="timed runs of transformers (default 2 cuda, 3 cpu)")
    ap.add_argument("--vllm", action="store_true", help="run vLLM alone on the plain workload")
    m = ap.add_argument_group("--model DIR: a real checkpoint on CPU against transformers on the same tensors")
    m.add_argument("--model", help="a model directory (e.g. /work/cache/smollm2-135m-f32)")
    m.add_argument("--judge-template", default=None,
                   help="judge: a template file (default: the built-in one; the SmolLM2 recipe's is "
                        "examples/templates/smollm2_judge.txt)")
    m.add_argument("--workloads", default="greedy,actor,judge,host", help="comma list of greedy, actor, judge, host")
    m.add_argument("--prompts-file", default=str(SEED_PROMPTS), help="JSONL with a `prompt` field per line")
    m.add_argument("--greedy-new", type=int, default=96, help="greedy: new tokens (ignore_eos)")
    m.add_argument("--actor-n", type=int, default=4, help="actor: samples per prompt")
    m.add_argument("--actor-new", type=int, default=128, help="actor: at most this many new tokens (EOS on)")
    m.add_argument("--judge-n", type=int, default=3, help="judge: judgments per response")
    m.add_argument("--busy", action="store_true", help="also run every rep with a CPU-bound process on one core")
    m.add_argument("--threads", type=int, help="engine threads (default: one per free core)")
    m.add_argument("--hf-threads", type=int, help="transformers' threads (default: torch's default)")
    args = ap.parse_args()
    if args.model:
        args.prompts, args.judge_new = args.prompts or 16, args.judge_new or 128
        args.hf_batch = args.hf_batch or 16
        return model_main(args)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    shape = args.shape or ("llama3-8b" if gpu else "small")
    dtype = getattr(torch, args.dtype or ("bfloat16" if gpu else "float32"))
    n_prompts, new = args.prompts or (256 if gpu else 32), args.new or (512 if gpu else 128)
    prompt_len = args.prompt_len if args.prompt_len is not None else (512 if gpu else 0)
    judge_new, hf_reps = args.judge_new or (128 if gpu else 32), args.hf_reps or (2 if gpu else 3)
    hf_batch = args.hf_batch if args.hf_batch is not None else (160 if gpu else 0)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()

    tok, tok_name = load_tokenizer()
    rng = random.Random(0)
    judge = judge_prompts(tok, args.judge_questions, 4, rng)
    cfg = hf_config(shape, args.layers, max_len=max(4096, max(map(len, judge)) + judge_new, prompt_len + new))
    if prompt_len:
        g = torch.Generator().manual_seed(0)
        plain = torch.randint(3, cfg.vocab_size, (n_prompts, prompt_len), generator=g).tolist()
    else:
        plain = plain_prompts(tok, n_prompts, rng)
    c = ModelConfig.from_hf(cfg.to_dict())
    extra = {"model": f"{shape}: {c.num_layers} layers, hidden {c.hidden_size}, heads {c.num_heads}/{c.num_kv_heads}, "
                      f"vocab {c.vocab_size}, {c.num_params / 1e6:.1f}M params, {dtype}, random init (std 0.02)",
             "plain": f"{n_prompts} prompts ({'random ids' if prompt_len else 'chat, ' + tok_name}, "
                      f"{min(map(len, plain))}-{max(map(len, plain))} tokens), {new} new tokens, greedy, ignore_eos"}
    if args.vllm:
        rows = [vllm_run(args, cfg, plain, new, device)]
        rows[0]["out tok/s"] = n_prompts * new / rows[0]["median_s"]
        report("engine throughput: vLLM peer", device, rows, ["workload", "provider", "median_s", "p20_s", "p80_s",
                                                              "out tok/s"], args.out, extra)
        return 0
    bandwidth = copy_bandwidth(device)
    hf, model = build_models(cfg, device, dtype)
    engine = Engine(model, tok, max_num_seqs=512, kv_cache_memory=0.45 if gpu else float(2**30))
    steps = DecodeSteps(engine)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    note("models built")

    greedy = SamplingParams(temperature=0, max_tokens=new, ignore_eos=True)
    e = time_engine(engine, steps, plain, greedy, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
                    args.reps)
    h = time_hf(hf, plain, new, 0, False, pad, hf_reps)
    rows = [engine_row("plain", e, model, bandwidth, n_prompts * new),
            hf_row("plain", h, n_prompts * new, sum(map(len, plain)))]
    extra["greedy tokens, engine vs transformers"] = greedy_match(e["outs"], h["outs"])

    # judge: n=5 samples of each prompt; the rubric is shared by all prompts, a whole prompt by its samples
    n = 5
    params = [SamplingParams(n=n, temperature=0.8, max_tokens=judge_new, ignore_eos=True, seed=i)
              for i in range(len(judge))]
    warm = SamplingParams(n=n, temperature=0.8, max_tokens=4, ignore_eos=True)
    e = time_engine(engine, steps, judge, params, warm, args.reps)
    repeated = [p for p in judge for _ in range(n)]
    h = time_hf(hf, repeated, judge_new, hf_batch, True, pad, hf_reps)
    naive = n * sum(map(len, judge))
    rows += [{**engine_row("judge", e, model, bandwidth, len(repeated) * judge_new),
              "fewer prefill x": naive / e["stats"].computed_tokens},
             {**hf_row("judge", h, len(repeated) * judge_new, naive), "fewer prefill x": 1.0}]
    for r in rows:
        r["speedup"] = next(x["median_s"] for x in rows if x["workload"] == r["workload"]
                            and x["provider"] == "transformers") / r["median_s"]
    lens = sorted(map(len, judge))
    extra.update({
        "judge": f"{len(judge)} prompts ({args.judge_questions} questions x 4 responses, {tok_name}, {lens[0]}-"
                 f"{lens[-1]} tokens, median {lens[len(lens) // 2]}) x n={n}, temperature 0.8, {judge_new} new "
                 f"tokens, ignore_eos; transformers: the {len(repeated)} prompts in batches of "
                 f"{hf_batch or len(repeated)}, sorted by length",
        "naive prefill tokens (judge)": naive,
        "engine prefix-cache hit rate (judge)": round(e["stats"].hit_rate, 4),
        "copy bandwidth (GB/s, read+write)": round(bandwidth / 1e9, 1),
        "floor": "(weight bytes + KV bytes read) / copy bandwidth, per decode step; the step is the engine's "
                 "whole step (schedule, forward, sample, bookkeeping)",
    })
    report("engine throughput", device, rows, ["workload", "provider", "median_s", "p20_s", "p80_s", "out tok/s",
                                               "speedup", "prefill tokens", "fewer prefill x", "decode step ms",
                                               "floor ms", "step / floor"], args.out, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
