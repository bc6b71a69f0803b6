"""The rows of a Meta-Rewarding iteration's artifacts, one type per file; their fields are the JSON keys.
`prompt` is the prompt as the prompts file gave it (a string or chat messages)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Response:  # responses.jsonl
    prompt_id: str
    prompt: object
    response_index: int
    text: str
    num_tokens: int
    finish_reason: str
    duplicate_of: int | None  # an identical earlier response of the same prompt: not judged


@dataclass(frozen=True)
class Judgment:  # judgments.jsonl
    prompt_id: str
    response_index: int
    judgment_index: int
    text: str
    score: float | None  # None: no valid score (or the prompt outgrew the context)


@dataclass(frozen=True)
class MetaJudgment:  # meta_judgments.jsonl
    prompt_id: str
    response_index: int
    first: int  # judgment shown as A
    second: int  # judgment shown as B
    winner: str | None  # "first" | "second" | None (no valid verdict)
    text: str


@dataclass(frozen=True)
class ActorPair:  # actor_pairs.jsonl (TRL's prompt/chosen/rejected, plus where they came from)
    prompt_id: str
    prompt: object
    chosen: str
    rejected: str
    chosen_index: int
    rejected_index: int
    chosen_score: float
    rejected_score: float
    chosen_tokens: int
    rejected_tokens: int


@dataclass(frozen=True)
class JudgePair:  # judge_pairs.jsonl: the prompt is the judge prompt of the response (text, or messages)
    prompt_id: str
    response_index: int
    prompt: str | list
    chosen: str
    rejected: str
    chosen_judgment: int
    rejected_judgment: int
    chosen_elo: float
    rejected_elo: float
    chosen_score: float | None
    rejected_score: float | None
