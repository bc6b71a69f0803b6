from __future__ import annotations

from enum import Enum, auto

import torch

from .params import SamplingParams

MASK64 = (1 << 64) - 1


class Status(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


def sample_seed(request_seed: int, sample_index: int) -> int:
    # Distinct, well-mixed 63-bit seeds for the n samples of a request (splitmix64 finalizer).
    z = (request_seed * 0x9E3779B97F4A7C15 + sample_index + 1) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return (z ^ (z >> 31)) >> 1


class Sequence:
    """One sample being generated: the prompt's tokens followed by its own output tokens, the KV blocks it
    holds, and how far its KV has been computed. The n samples of a request are n Sequences; samples
    1..n-1 are forked from sample 0 once its prompt is prefilled."""

    def __init__(self, seq_id: int, request: int, sample: int, token_ids: list[int], params: SamplingParams,
                 seed: int, capture: torch.Tensor | None = None):
        self.seq_id, self.request, self.sample = seq_id, request, sample
        self.token_ids = list(token_ids)
        self.num_prompt_tokens = len(token_ids)
        self.params = params
        self.seed = seed
        self.status = Status.WAITING
        self.block_table: list[int] = []
        self.num_computed = 0  # tokens whose KV is in the cache (or is written by the step being run)
        self.num_cached = 0  # prompt tokens this sample did not compute (prefix cache, or shared with sample 0)
        self.row = -1  # this sequence's row of the device block table while it holds blocks
        self.synced = 0  # leading block_table entries already written to that row
        self.logprobs: list[float] = []
        self.cumulative_logprob = 0.0
        self.finish_reason: str | None = None
        self.prefilled_once = False  # the prompt was computed at least once (preemption recomputes it)
        self.capture = capture  # next_token_logprobs: candidate token ids whose log-probs to read
        self.captured: list[float] | None = None

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_output(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def forks(self) -> bool:
        """This sample's first prefill is shared with the request's other samples."""
        return self.sample == 0 and self.params.n > 1 and not self.prefilled_once

    def append(self, token: int, logprob: float) -> None:
        self.token_ids.append(token)
        self.cumulative_logprob += logprob
        if self.params.logprobs:
            self.logprobs.append(logprob)

    def fork(self, seq_id: int, sample: int, seed: int) -> "Sequence":
        """A sibling sample of this (just prefilled) sequence: same prompt, no blocks yet. The scheduler shares
        this sequence's blocks with it, or queues it to be recomputed through the prefix cache."""
        return Sequence(seq_id, self.request, sample, self.token_ids[:self.num_prompt_tokens], self.params, seed)
