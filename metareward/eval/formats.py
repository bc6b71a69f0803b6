"""Eval data in and out (the prompt sets themselves are read by metareward.prompts): baseline answers,
human-labelled judge data (LLMBar, PandaLM, chosen/rejected pairs), and answer files in the exact layout the
official AlpacaEval / Arena-Hard v0.1 / MT-Bench (FastChat) tools read."""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ..errors import UserError
from ..io import write_json, write_jsonl
from ..prompts import Prompt
from ..prompts import get as _get
from ..prompts import read_rows as _rows
from ..prompts import turn_text as _turn_text


@dataclass(frozen=True)
class JudgePair:
    question: str
    answer_1: str
    answer_2: str
    label: int  # 1: answer_1 is better, 2: answer_2 is better, 0: tie
    meta: dict = field(default_factory=dict)


# ---- baseline answers ----

def read_reference_answers(path, turn: int = 0) -> dict[str, str]:
    """{prompt id: answer text} from: a FastChat/Arena-Hard answer file (question_id + choices; `turn` picks
    the turn of choices[0]); an AlpacaEval file (instruction + output or reference_output, keyed by row
    index like read_prompts); or the project's own answers ({id or prompt_id, response or output})."""
    out, seen = {}, {}
    for k, (where, row) in enumerate(_rows(path)):
        if "choices" in row:
            key = str(_get(where, row, "question_id", (str, int)))
            choices = _get(where, row, "choices", list)
            turns = _get(where, choices[0], "turns", list) if choices and isinstance(choices[0], dict) else None
            if turns is None:
                raise UserError(f"{where}: 'choices' must hold at least one object with 'turns'")
            if turn >= len(turns):
                raise UserError(f"{where}: the answer has {len(turns)} turn(s), turn {turn + 1} was asked for")
            text = _turn_text(where, turns[turn])
        elif "instruction" in row:
            key, text = str(k), _get(where, row, "output" if "output" in row else "reference_output")
        else:
            id_key = "prompt_id" if "prompt_id" in row and "id" not in row else "id"
            key = str(_get(where, row, id_key, (str, int)))
            text = _get(where, row, "response" if "response" in row else "output")
        if key in seen:
            raise UserError(f"{where}: duplicate id {key!r} (first at {seen[key]})")
        seen[key] = where
        out[key] = text
    return out


def require_answers(prompts: Sequence[Prompt], answers: Mapping, source: str) -> None:
    """Every prompt id must have an answer (extra answers are ignored: a run may use part of a set)."""
    missing = [p.id for p in prompts if p.id not in answers]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise UserError(f"{len(missing)} of {len(prompts)} prompt ids have no answer in {source}: {shown}")


# ---- human-labelled judge data ----

def _label(where, row, key, allowed):
    v = _get(where, row, key, int)
    if v not in allowed:
        raise UserError(f"{where}: {key} must be one of {', '.join(map(str, allowed))}, got {v}")
    return v


def _answer(where, row, key) -> str:
    # an answer that is a bare JSON scalar is read as its text: PandaLM's test set has 6 responses stored
    # as JSON `true` (lines 158-163); they are read as the text "True"
    v = row.get(key)
    return str(v) if isinstance(v, (bool, int, float)) else _get(where, row, key)


def _llmbar(where, row):
    return JudgePair(_get(where, row, "input"), _answer(where, row, "output_1"), _answer(where, row, "output_2"),
                     _label(where, row, "label", (1, 2)), {"subset": row.get("subset")})


def _pandalm(where, row):
    votes = [_label(where, row, f"annotator{a}", (0, 1, 2)) for a in (1, 2, 3)]
    label = next((v for v in (1, 2, 0) if votes.count(v) >= 2), 0)  # 1/2/0 one vote each: no majority → tie
    question = _get(where, row, "instruction")
    extra = _get(where, row, "input") if "input" in row else ""
    return JudgePair(question + "\n\n" + extra if extra else question, _answer(where, row, "response1"),
                     _answer(where, row, "response2"), label, {"votes": votes, "cmp_key": row.get("cmp_key")})


def _pairs(where, row):
    return JudgePair(_get(where, row, "prompt"), _answer(where, row, "chosen"), _answer(where, row, "rejected"), 1)


JUDGE_READERS = {"llmbar": _llmbar, "pandalm": _pandalm, "pairs": _pairs}


def read_judge_pairs(path, format: str, seed: int | None = 0) -> list[JudgePair]:
    """Human-labelled pairs. `pairs` ({prompt, chosen, rejected}) always has the better answer first, so a
    seeded coin puts it second (label 2) in about half the rows — otherwise a judge that always says "A"
    would score 100%; seed=None keeps the file's order. LLMBar and PandaLM keep their own order."""
    if format not in JUDGE_READERS:
        raise UserError(f"unknown judge data format {format!r}: expected one of {', '.join(JUDGE_READERS)}")
    pairs = [JUDGE_READERS[format](where, row) for where, row in _rows(path)]
    if format == "pairs" and seed is not None:
        coin = random.Random(seed)
        pairs = [JudgePair(p.question, p.answer_2, p.answer_1, 2) if coin.random() < 0.5 else p for p in pairs]
    return pairs


# ---- answer files for the official tools ----

def answer_id(model_id: str, question_id, turns: Sequence[str]) -> str:
    # FastChat writes a random shortuuid; a hash of what was answered makes an export reproducible
    key = json.dumps([model_id, question_id, list(turns)], ensure_ascii=False)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:22]


def _require_format(prompts: Sequence[Prompt], fmt: str) -> None:
    # the official tools match answers to their own questions (AlpacaEval by instruction text): any other
    # prompt set would be scored against nothing
    for p in prompts:
        if p.meta.get("format") != fmt:
            raise UserError(f"a {fmt} export needs the {fmt} question set; prompt {p.id!r} was read as "
                            f"{p.meta.get('format')!r}")


def export_alpaca_eval(path, prompts: Sequence[Prompt], answers: Mapping[str, str], generator: str) -> None:
    """AlpacaEval model_outputs.json: a JSON list of {instruction, output, generator, dataset}."""
    _require_format(prompts, "alpaca_eval")
    require_answers(prompts, answers, "the model's answers")
    rows = [{"instruction": p.turns[0], "output": answers[p.id], "generator": generator}
            | ({"dataset": p.meta["dataset"]} if "dataset" in p.meta else {}) for p in prompts]
    write_json(path, rows)


def export_arena_hard(path, prompts: Sequence[Prompt], answers: Mapping[str, str], model_id: str,
                      token_lens: Mapping[str, int], tstamp: float | None = None) -> None:
    """Arena-Hard v0.1 model_answer/<model_id>.jsonl, laid out like its gpt-4-0314 baseline file:
    {question_id, answer_id, model_id, choices: [{index: 0, turns: [{content, token_len}]}], tstamp}.
    token_len is the caller's count; Arena-Hard counts tiktoken gpt-3.5-turbo tokens (its length/style
    control reads it)."""
    _require_format(prompts, "arena_hard")
    require_answers(prompts, answers, "the model's answers")
    require_answers(prompts, token_lens, "the token counts")
    ts = time.time() if tstamp is None else float(tstamp)
    rows = []
    for p in prompts:
        qid, text = p.meta["question_id"], answers[p.id]
        rows.append({"question_id": qid, "answer_id": answer_id(model_id, qid, [text]), "model_id": model_id,
                     "choices": [{"index": 0, "turns": [{"content": text, "token_len": int(token_lens[p.id])}]}],
                     "tstamp": ts})
    write_jsonl(path, rows)


def export_mt_bench(path, prompts: Sequence[Prompt], answers: Mapping[str, Sequence[str]], model_id: str,
                    tstamp: float | None = None) -> None:
    """FastChat llm_judge model_answer/<model_id>.jsonl:
    {question_id, answer_id, model_id, choices: [{index: 0, turns: [answer_1, answer_2]}], tstamp}."""
    _require_format(prompts, "mt_bench")
    require_answers(prompts, answers, "the model's answers")
    ts = time.time() if tstamp is None else float(tstamp)
    rows = []
    for p in prompts:
        qid, turns = p.meta["question_id"], list(answers[p.id])
        if len(turns) != len(p.turns) or not all(isinstance(t, str) for t in turns):
            raise UserError(f"question {p.id}: expected {len(p.turns)} answer strings, got {len(turns)}")
        rows.append({"question_id": qid, "answer_id": answer_id(model_id, qid, turns), "model_id": model_id,
                     "choices": [{"index": 0, "turns": turns}], "tstamp": ts})
    write_jsonl(path, rows)
