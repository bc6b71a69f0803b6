"""The generation engine: prompts in, samples out. step() reads as schedule -> run -> postprocess."""
from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from ..model.tokenizer import chat_ids
from .block_manager import BlockManager
from .model_runner import ModelRunner
from .params import SamplingParams
from .scheduler import Batch, Scheduler
from .sequence import Sequence, sample_seed
from .threads import ThreadCount


@dataclass
class Sample:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length"
    cumulative_logprob: float
    logprobs: list[float] | None
    num_cached_tokens: int  # prompt tokens this sample did not compute (prefix cache, or shared with sample 0)


@dataclass
class Output:
    prompt_token_ids: list[int]
    samples: list[Sample]
    num_prompt_tokens: int
    num_cached_tokens: int  # summed over the samples

    @property
    def outputs(self) -> list[Sample]:  # vLLM's name
        return self.samples


@dataclass
class Stats:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    computed_tokens: int = 0  # prefill tokens actually run through the model
    output_tokens: int = 0
    seconds: float = 0.0
    preemptions: int = 0

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / max(1, self.prompt_tokens)

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / max(self.seconds, 1e-9)


def _check_finite(logprob: float) -> None:
    # NaN logits (broken weights, an overflow in float16) give a NaN log-probability: the host already holds it,
    # so the check costs no device sync
    if logprob != logprob:
        raise UserError("the model's logits are not finite (NaN): its weights are broken, or float16 overflows "
                        "(try float32 or bfloat16)")


class Engine:
    def __init__(self, model, tokenizer, *, max_model_len: int | None = None, block_size: int = 16,
                 max_num_seqs: int = 256, max_num_batched_tokens: int | None = None, num_kv_blocks: int | None = None,
                 kv_cache_memory: float | None = None, cuda_graphs: bool | None = None, seed: int = 0,
                 num_threads: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        cfg = model.config
        self.max_model_len = min(max_model_len or cfg.max_position_embeddings, cfg.max_position_embeddings)
        cfg.check_context(self.max_model_len)
        cuda = model.device.type == "cuda"
        if max_num_batched_tokens is None:  # CPU prefill is compute-bound at a few thousand tokens already
            max_num_batched_tokens = 8192 if cuda else 2048
        if kv_cache_memory is None:  # CUDA: fraction of free memory; CPU: bytes
            kv_cache_memory = 0.85 if cuda else float(2**30)
        if block_size < 1 or max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise UserError("block_size, max_num_seqs and max_num_batched_tokens must be >= 1")
        if num_threads is not None and num_threads < 1:
            raise UserError(f"num_threads must be >= 1 (or None: one per free core), got {num_threads}")
        self.runner = ModelRunner(model, block_size, self.max_model_len, max_num_seqs, num_kv_blocks,
                                  kv_cache_memory, cuda if cuda_graphs is None else cuda_graphs)
        self.blocks: BlockManager | None = None
        self.scheduler: Scheduler | None = None
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        # CPU: intra-op threads = free cores (None) or a fixed count; CUDA: the host threads are not the limit
        self.threads = None if cuda else ThreadCount(num_threads)
        eos = set(cfg.eos_token_ids)
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)
        self.eos_ids = frozenset(eos)
        self.rng = random.Random(seed)
        self.stats = Stats()
        self._next_id = 0

    # -- memory ----------------------------------------------------------------------------------------
    def wake(self) -> None:
        """Allocate the KV cache (on first use, or after release())."""
        if self.runner.kv is None:
            self.runner.allocate()
            self.blocks = BlockManager(self.runner.num_blocks(), self.runner.block_size)
            self.scheduler = Scheduler(self.blocks, self.max_num_seqs, self.max_num_batched_tokens)

    def release(self) -> None:
        """Free the KV cache (and the graphs that point into it), e.g. for training. Cached prefixes go with
        the memory; whether the weights changed is for ModelRunner.sync_weights to notice, not this."""
        self.runner.release()
        self.blocks = self.scheduler = None

    # -- prompts ---------------------------------------------------------------------------------------
    def encode(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt) and prompt:
            return chat_ids(self.tokenizer, prompt)
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return list(prompt)
        raise UserError(f"a prompt must be a string, a list of chat messages or a list of token ids, "
                        f"got {type(prompt).__name__}")

    def _check(self, ids: list[int], params: SamplingParams, index: int) -> None:
        if not ids:
            raise UserError(f"prompt {index} is empty")
        if len(ids) >= self.max_model_len:
            raise UserError(f"prompt {index} has {len(ids)} tokens; the context is {self.max_model_len}")
        vocab = self.model.config.vocab_size
        if min(ids) < 0 or max(ids) >= vocab:
            raise UserError(f"prompt {index} has token ids outside [0, {vocab})")
        need = self.blocks.blocks_for(min(len(ids) + params.max_tokens, self.max_model_len))
        if need > len(self.blocks.blocks):
            raise UserError(f"prompt {index} needs {need} KV blocks but the cache has {len(self.blocks.blocks)}: "
                            "lower max_tokens or give the cache more memory")

    # -- generation ------------------------------------------------------------------------------------
    def generate(self, prompts: list, params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = True, desc: str = "generate") -> list[Output]:
        params = params or SamplingParams()
        params = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(params) != len(prompts):
            raise UserError(f"{len(prompts)} prompts but {len(params)} sampling params")
        ids, done = self._run(prompts, params, None, use_tqdm, desc)
        return [self._output(x, sorted(d, key=lambda s: s.sample)) for x, d in zip(ids, done)]

    def next_token_logprobs(self, prompts: list, token_ids: list[int], use_tqdm: bool = True,
                            desc: str = "score") -> list[list[float]]:
        """log p(t | prompt) for each candidate t in token_ids, after each prompt: [len(prompts), len(token_ids)].
        Prefill only (through the same prefix cache), no sampling."""
        params = [SamplingParams(max_tokens=1)] * len(prompts)
        _, done = self._run(prompts, params, torch.tensor(token_ids), use_tqdm, desc)
        return [d[0].captured for d in done]

    def _run(self, prompts, params, capture, use_tqdm, desc):
        self.wake()
        if self.runner.sync_weights():  # trained or re-gathered since the last call: cached KV is stale
            self.blocks.reset_cache()
        ids = [self.encode(p) for p in prompts]
        for i, (x, p) in enumerate(zip(ids, params)):
            self._check(x, p, i)
        done: list[list[Sequence]] = [[] for _ in prompts]
        for i, (x, p) in enumerate(zip(ids, params)):
            self.scheduler.add(self._new_seq(i, 0, x, p, capture))
        bar = tqdm(total=len(prompts), desc=desc, unit="req", disable=not use_tqdm, dynamic_ncols=True)
        st = self.stats
        t0, out0, pre0 = time.perf_counter(), st.output_tokens, self.scheduler.num_preemptions
        prompt0, cached0 = st.prompt_tokens, st.cached_tokens
        with bar, self.threads or contextlib.nullcontext():  # the bar closes before an error is printed
            while self.scheduler.has_work():
                for seq in self.step():
                    done[seq.request].append(seq)
                    if len(done[seq.request]) == params[seq.request].n:
                        bar.update(1)
                if self.threads:
                    self.threads.update()
                if use_tqdm:
                    tok_s = (st.output_tokens - out0) / max(time.perf_counter() - t0, 1e-9)
                    hits = (st.cached_tokens - cached0) / max(1, st.prompt_tokens - prompt0)  # this call's
                    bar.set_postfix_str(f"{tok_s:.0f} tok/s out, prefix cache {hits:.0%}", refresh=False)
        self.stats.seconds += time.perf_counter() - t0
        self.stats.preemptions += self.scheduler.num_preemptions - pre0
        return ids, done

    def _new_seq(self, request: int, sample: int, ids: list[int], p: SamplingParams, capture=None) -> Sequence:
        self._next_id += 1
        return Sequence(self._next_id, request, sample, ids, p, self._seed(p, sample), capture)

    def _seed(self, p: SamplingParams, sample: int) -> int:
        return sample_seed(p.seed, sample) if p.seed is not None else self.rng.getrandbits(63)

    # -- one step: schedule -> run -> postprocess --------------------------------------------------------
    def step(self) -> list[Sequence]:
        """Advance every scheduled sequence by one step; -> the sequences that finished in it."""
        batch = self.scheduler.schedule()
        if not batch.seqs:
            raise RuntimeError("the scheduler found nothing to run")  # _check makes this unreachable
        logits = self.runner.run(batch)
        return self._postprocess(batch, logits)

    def _postprocess(self, batch: Batch, logits: torch.Tensor) -> list[Sequence]:
        if batch.prefill:
            self.stats.computed_tokens += sum(batch.num_tokens)
        rows, seqs, row = [], [], -1  # logits row -> the sequence that takes its next token from it
        for seq, n in zip(batch.seqs, batch.num_tokens):
            seq.num_computed += n
            if seq.num_computed < len(seq):
                continue  # a chunk of a longer prompt: no token yet
            row += 1
            rows.append(row)
            seqs.append(seq)
            if not seq.prefilled_once:
                self.stats.prompt_tokens += seq.num_prompt_tokens
                self.stats.cached_tokens += seq.num_cached
                if seq.forks:  # the other samples share this prefill
                    for child in self._fork(seq):
                        rows.append(row)
                        seqs.append(child)
                seq.prefilled_once = True
        if not seqs:
            return []
        logits = logits[torch.tensor(rows, device=logits.device)] if len(rows) > logits.shape[0] else logits
        if seqs[0].capture is not None:  # next_token_logprobs: read the distribution, sample nothing
            for seq, lp in zip(seqs, self.runner.logprobs_of(logits, seqs[0].capture)):
                _check_finite(lp[0])
                seq.captured, seq.finish_reason = lp, "stop"
                self.scheduler.finish(seq)
            return seqs
        finished = []
        for seq, tok, lp in zip(seqs, *self.runner.sample(logits, seqs)):
            _check_finite(lp)
            seq.append(tok, lp)
            self.stats.output_tokens += 1
            if self._stopped(seq):
                self.scheduler.finish(seq)
                finished.append(seq)
        return finished

    def _fork(self, seq: Sequence) -> list[Sequence]:
        children = []
        for j in range(1, seq.params.n):
            self._next_id += 1
            child = seq.fork(self._next_id, j, self._seed(seq.params, j))
            self.scheduler.fork(seq, child)
            if child.prefilled_once:  # shares seq's prefill (else it is recomputed, and counted, later)
                self.stats.prompt_tokens += child.num_prompt_tokens
                self.stats.cached_tokens += child.num_cached
            children.append(child)
        return children

    def _stopped(self, seq: Sequence) -> bool:
        p, tok = seq.params, seq.token_ids[-1]
        if (tok in self.eos_ids and not p.ignore_eos) or tok in p.stop_token_ids:
            seq.finish_reason = "stop"
        elif p.stop and self._stop_string(seq) is not None:
            seq.finish_reason = "stop"
        elif seq.num_output >= p.max_tokens or len(seq) >= self.max_model_len:
            seq.finish_reason = "length"
        return seq.finish_reason is not None

    def _stop_string(self, seq: Sequence) -> int | None:
        # Search only the tail that the newest token can have completed: a stop string of c characters
        # spans at most 4c byte-level tokens, plus a few for a partial character at the window's start.
        window = 4 * max(len(s) for s in seq.params.stop) + 4
        tail = self.tokenizer.decode(seq.output_ids[-window:], skip_special_tokens=True)
        return next((i for i in (tail.find(s) for s in seq.params.stop) if i >= 0), None)

    def _output(self, prompt_ids: list[int], seqs: list[Sequence]) -> Output:
        samples = []
        for s in seqs:
            text = self.tokenizer.decode(s.output_ids, skip_special_tokens=True)
            if s.params.stop:
                cuts = [i for i in (text.find(x) for x in s.params.stop) if i >= 0]
                text = text[:min(cuts)] if cuts else text
            samples.append(Sample(text, s.output_ids, s.finish_reason, s.cumulative_logprob,
                                  s.logprobs if s.params.logprobs else None, s.num_cached))
        return Output(prompt_ids, samples, len(prompt_ids), sum(s.num_cached_tokens for s in samples))
