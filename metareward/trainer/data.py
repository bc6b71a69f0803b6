"""Preference pairs for DPO: read TRL-format JSONL, tokenize with the chat template, truncate to max_length,
order them by (seed, epoch), and pack chosen and rejected sequences into variable-length micro-batches.

Target convention: a sequence is prompt tokens p_0..p_{n-1} followed by response tokens. The logits at
position t predict token t+1, so targets[t] = input_ids[t+1] for t = n-1 .. L-2 (the positions whose next
token is a response token) and -100 everywhere else, including each sequence's last position. A sequence
with r response tokens thus has exactly r targets."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, fields
from functools import partial
from typing import Sequence

import numpy as np
import torch

from ..errors import UserError
from ..io import read_jsonl
from ..model.tokenizer import chat_ids

IGNORE_INDEX = -100
FIELDS = ("prompt", "chosen", "rejected")


class TruncationWarning(UserWarning):
    pass


@dataclass
class Pair:
    prompt: list[dict]    # messages [{"role", "content"}, ...]: system, earlier turns, the user message
    chosen: list[dict]    # assistant messages (normally one)
    rejected: list[dict]
    where: str            # "file:line", for error messages


@dataclass
class TokenizedPair:
    prompt: list[int]     # chat template of the prompt messages, generation prompt included
    chosen: list[int]     # the response tokens after the prompt, end-of-turn / EOS tokens included
    rejected: list[int]

    @property
    def num_tokens(self) -> int:  # both sequences: what the pair costs in a packed micro-batch
        return 2 * len(self.prompt) + len(self.chosen) + len(self.rejected)


@dataclass
class DataStats:
    read: int = 0        # pairs in the input
    kept: int = 0        # pairs kept, truncated ones included
    truncated: int = 0   # kept pairs with chosen and/or rejected cut to fit max_length
    dropped: int = 0     # pairs whose prompt alone leaves no room for a response token
    max_length: int = 0

    def message(self) -> str:
        return (f"{self.truncated + self.dropped} of {self.read} preference pairs exceed max_length="
                f"{self.max_length} tokens: {self.truncated} truncated (responses cut), {self.dropped} dropped "
                f"(the prompt alone leaves no room for a response)")


# ---- reading and validation ----

def _messages(value, field: str, where: str) -> list[dict]:
    response = field != "prompt"
    if isinstance(value, str):  # TRL's standard form: a bare user message / assistant reply
        value = [{"role": "assistant" if response else "user", "content": value}]
    if not isinstance(value, list):
        raise UserError(f"{where}: {field!r} must be a string or a list of messages, got {type(value).__name__}")
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise UserError(f"{where}: {field}[{i}] must be a message {{\"role\": string, \"content\": string}}")
        if response and m["role"] != "assistant":
            # every token after the prompt is trained as the model's own output
            raise UserError(f"{where}: {field}[{i}] has role {m['role']!r}; response messages must be 'assistant'")
    if not any(m["content"].strip() for m in value):
        raise UserError(f"{where}: {field!r} is empty")
    return [dict(m) for m in value]


def parse_pair(obj: dict, where: str) -> Pair:
    prompt, chosen, rejected = (_messages(obj[f], f, where) for f in FIELDS)
    if chosen == rejected:
        raise UserError(f"{where}: 'chosen' and 'rejected' are identical")
    return Pair(prompt, chosen, rejected, where)


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    return [parse_pair(obj, f"{path}:{line}") for line, obj in read_jsonl(path, FIELDS)]


# ---- tokenization and truncation ----

def _chat(tok, messages: list[dict], gen: bool, where: str) -> list[int]:
    try:
        return chat_ids(tok, messages, add_generation_prompt=gen)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def tokenize_pair(tok, pair: Pair) -> TokenizedPair:
    prompt = _chat(tok, pair.prompt, True, pair.where)
    if not prompt:
        raise UserError(f"{pair.where}: the chat template renders the prompt as no tokens")
    responses = []
    for field in ("chosen", "rejected"):
        full = _chat(tok, pair.prompt + getattr(pair, field), False, pair.where)
        if full[:len(prompt)] != prompt:
            raise UserError(f"{pair.where}: the chat template is not prefix-stable: the prompt's tokens (with the "
                            f"generation prompt) are not a prefix of prompt + {field}; DPO needs the response "
                            f"tokens to follow the prompt's, so use a template that renders a conversation's "
                            f"beginning the same whatever comes after it")
        if len(full) == len(prompt):
            raise UserError(f"{pair.where}: {field!r} renders as no tokens after the prompt")
        responses.append(full[len(prompt):])
    return TokenizedPair(prompt, *responses)


def truncate(tp: TokenizedPair, max_length: int) -> TokenizedPair | None:
    # keep the prompt, cut each response so prompt + response <= max_length; None when not one token fits
    room = max_length - len(tp.prompt)
    if room < 1:
        return None
    return TokenizedPair(tp.prompt, tp.chosen[:room], tp.rejected[:room])


def tokenize_pairs(tok, pairs: Sequence[Pair], max_length: int) -> tuple[list[TokenizedPair], DataStats]:
    """Tokenize and truncate. Warns once (TruncationWarning, text = stats.message()) when any pair was
    truncated or dropped. Dataset indices (PackedBatch.pair_index) index the returned list."""
    if max_length < 2:
        raise UserError(f"max_length must be >= 2 (a prompt token and a response token), got {max_length}")
    out, stats = [], DataStats(read=len(pairs), max_length=max_length)
    for pair in pairs:
        tp = tokenize_pair(tok, pair)
        cut = truncate(tp, max_length)
        if cut is None:
            stats.dropped += 1
            continue
        stats.truncated += (len(cut.chosen), len(cut.rejected)) != (len(tp.chosen), len(tp.rejected))
        out.append(cut)
    stats.kept = len(out)
    if not out:
        raise UserError(f"no preference pair fits max_length={max_length}: every prompt alone takes all of it")
    if stats.truncated or stats.dropped:
        warnings.warn(stats.message(), TruncationWarning, stacklevel=2)
    return out, stats


def load_pairs(path: str | os.PathLike, tok, max_length: int) -> tuple[list[TokenizedPair], DataStats]:
    return tokenize_pairs(tok, read_pairs(path), max_length)


# ---- packing ----

@dataclass
class PackedBatch:
    # N tokens of S = 2P sequences, in the order chosen_0, rejected_0, chosen_1, rejected_1, ...
    input_ids: torch.Tensor        # [N] int64
    positions: torch.Tensor        # [N] int64, restarting at 0 for each sequence
    targets: torch.Tensor          # [N] int64, next-token targets on response positions, -100 elsewhere
    seq_ids: torch.Tensor          # [N] int64 in [0, S): the sequence of each token
    loss_index: torch.Tensor       # [M] int64, the positions with a target, ascending (M = sum response_tokens)
    response_tokens: torch.Tensor  # [S] int64, targets per sequence
    seq_lens: list[int]            # [S] host ints, for the attention backend (model.attention.Packed)
    pair_index: list[int]          # [P] dataset index of each pair

    @property
    def num_pairs(self) -> int:
        return len(self.pair_index)

    @property
    def chosen_tokens(self) -> torch.Tensor:  # [P]
        return self.response_tokens[0::2]

    @property
    def rejected_tokens(self) -> torch.Tensor:  # [P]
        return self.response_tokens[1::2]

    def to(self, device, non_blocking: bool = True) -> "PackedBatch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in moved.items():
            if isinstance(v, torch.Tensor):
                moved[k] = v.to(device, non_blocking=non_blocking)
        return PackedBatch(**moved)


def pack(pairs: Sequence[TokenizedPair], indices: Sequence[int]) -> PackedBatch:
    ids, pos, tgt, sid, loss_index, lens, nresp = [], [], [], [], [], [], []
    for i in indices:
        p = pairs[i]
        n = len(p.prompt)
        for resp in (p.chosen, p.rejected):
            start, length = len(ids), n + len(resp)
            ids += p.prompt + resp
            pos += range(length)
            sid += [len(lens)] * length
            # position t predicts token t+1: targets sit on positions n-1 .. length-2
            tgt += [IGNORE_INDEX] * (n - 1) + resp + [IGNORE_INDEX]
            loss_index += range(start + n - 1, start + length - 1)
            lens.append(length)
            nresp.append(len(resp))
    t = partial(torch.tensor, dtype=torch.int64)
    return PackedBatch(t(ids), t(pos), t(tgt), t(sid), t(loss_index), t(nresp), lens, list(indices))


def sequence_logps(token_logps: torch.Tensor, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sums -> (chosen [P], rejected [P]), in float32 or wider. token_logps is either [N] (one
    per position, 0 where the target is -100) or [M] (only the positions in batch.loss_index: gathering the
    hidden states there first skips the lm-head on prompt tokens, often most of a sequence). M < N always,
    since a sequence's last position never has a target."""
    ids = batch.seq_ids if token_logps.shape[0] == batch.seq_ids.shape[0] else batch.seq_ids[batch.loss_index]
    dtype = torch.promote_types(token_logps.dtype, torch.float32)
    sums = torch.zeros(len(batch.seq_lens), dtype=dtype, device=token_logps.device)
    sums = sums.index_add(0, ids, token_logps.to(dtype))  # out of place: autograd flows to token_logps
    return sums[0::2], sums[1::2]


# ---- order, global batches, ranks, micro-batches ----

def epoch_order(num_pairs: int, seed: int, epoch: int) -> list[int]:
    # one independent stream per (seed, epoch) via numpy's SeedSequence: the same on every rank and machine
    if seed < 0 or epoch < 0:
        raise UserError(f"seed and epoch must be >= 0, got {seed} and {epoch}")
    return np.random.default_rng([seed, epoch]).permutation(num_pairs).tolist()


def global_batches(order: Sequence[int], batch_size: int) -> list[list[int]]:
    # the last batch may be short; the loss is scaled by each batch's own pair count, so it needs no padding
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    return [list(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]


def rank_share(batch: Sequence[int], rank: int, world_size: int) -> list[int]:
    # K ranks together see exactly the global batch that one process sees
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world size {world_size}")
    return list(batch[rank::world_size])


def micro_batches(pairs: Sequence[TokenizedPair], indices: Sequence[int], token_budget: int) -> list[list[int]]:
    """Split whole pairs into groups of at most token_budget tokens (both sequences counted). A pair larger
    than the budget goes alone into its own micro-batch. First-fit decreasing: at most 11/9 of the optimal
    number of micro-batches (+1), where next-fit in data order can need 2x; each micro-batch is one forward
    and backward, and under FSDP one all-gather of every layer's weights."""
    if token_budget < 1:
        raise UserError(f"micro_batch_tokens must be >= 1, got {token_budget}")
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(indices, key=lambda i: -pairs[i].num_tokens):  # stable: ties keep the given order
        size = pairs[i].num_tokens
        b = next((b for b, r in enumerate(room) if size <= r), None)
        if b is None:
            bins.append([i])
            room.append(token_budget - size)  # negative for an oversized pair: nothing else joins it
        else:
            bins[b].append(i)
            room[b] -= size
    return bins


@dataclass
class Step:
    num_pairs: int                 # pairs in the global batch over all ranks: the denominator of the mean loss
    micro_batches: list[list[int]]  # this rank's share (dataset indices), split by the token budget
    max_micro_batches: int         # the most any rank has this step: FSDP ranks must all run this many passes


def epoch_steps(pairs: Sequence[TokenizedPair], seed: int, epoch: int, batch_size: int, token_budget: int,
                rank: int = 0, world_size: int = 1) -> list[Step]:
    """The optimizer steps of one epoch for one rank. Every rank computes every rank's plan (no
    communication), so a rank with fewer micro-batches knows how many padding passes to run."""
    if batch_size < world_size:
        raise UserError(f"batch_size ({batch_size}) must be >= the number of processes ({world_size})")
    steps = []
    for batch in global_batches(epoch_order(len(pairs), seed, epoch), batch_size):
        plans = [micro_batches(pairs, rank_share(batch, r, world_size), token_budget) for r in range(world_size)]
        steps.append(Step(len(batch), plans[rank], max(map(len, plans))))
    return steps
