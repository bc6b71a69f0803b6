"""Evaluation loads models one at a time (the model, a baseline model, a judge) and frees each after use."""
from __future__ import annotations

import contextlib
import gc

import torch

from ..engine import Engine, SamplingParams
from ..errors import warn
from ..recipe.roles import generate_fitting, read_next, strip_stop
from ..recipe.templates import load_template
from .formats import EvalPrompt, turn_messages
from .templates import pairwise_prompt, parse_pairwise_verdict


@contextlib.contextmanager
def serving(path: str, dtype=None, device=None, chat_template=None):
    """(model, tokenizer, engine) for the duration of the block."""
    from ..model import load_model
    model, tok = load_model(path, dtype=dtype, device=device, chat_template=chat_template)
    engine = Engine(model, tok)
    try:
        yield model, tok, engine
    finally:
        engine.release()
        del engine, model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def answer(engine: Engine, prompts: list[EvalPrompt], params: SamplingParams, desc: str = "answers") -> dict:
    """{prompt id: [answer per turn]}: turn k of every prompt in one batch, each turn seeing the model's own
    earlier answers (MT-Bench's second turn)."""
    out = {p.id: [] for p in prompts}
    for k in range(max(len(p.turns) for p in prompts)):
        todo = [p for p in prompts if len(p.turns) > k]
        ids = [engine.encode(turn_messages(p, out[p.id])) for p in todo]
        ok = [i for i, x in enumerate(ids) if len(x) < engine.max_model_len]
        if len(ok) < len(ids):  # the engine refuses such a prompt: an empty answer, with a warning, not a crash
            skipped = [p.id for p, x in zip(todo, ids) if len(x) >= engine.max_model_len]
            warn(f"{desc} (turn {k + 1}): {len(skipped)} of {len(ids)} prompts exceed the model's context "
                 f"({engine.max_model_len} tokens) and get an empty answer: {', '.join(skipped[:5])}"
                 + (", ..." if len(skipped) > 5 else ""))
        outs = engine.generate([ids[i] for i in ok], params, desc=f"{desc} (turn {k + 1})")
        texts = dict(zip(ok, (o.samples[0].text for o in outs)))
        for i, p in enumerate(todo):
            out[p.id].append(texts.get(i, ""))
    return out


def pairwise(engine: Engine, questions: list[str], a: list[str], b: list[str], mode: str, max_tokens: int,
             template: str | None = None, desc: str = "judge") -> tuple[list[str | None], list[str]]:
    """The judge's verdict ("A" / "B" / "tie" / None) for each (question, response A, response B), greedy.
    expected mode: the more probable of "A" and "B" after the judge's text and "Winner: " (small models
    that do not write the verdict line)."""
    ids = [engine.encode([{"role": "user", "content": pairwise_prompt(q, x, y, template)}])
           for q, x, y in zip(questions, a, b)]
    params = [SamplingParams(temperature=0, max_tokens=max_tokens)] * len(ids)
    outs = generate_fitting(engine, ids, params, "\nWinner: " if mode == "expected" else "", desc)
    texts = [o.samples[0].text if o else "" for o in outs]
    if mode == "parse":
        return [parse_pairwise_verdict(t) if o else None for o, t in zip(outs, texts)], texts
    ctxs = [o.prompt_token_ids + strip_stop(engine, o.samples[0].token_ids) for o in outs if o]
    lps = iter(read_next(engine, ctxs, "\nWinner: ", ["A", "B"], f"{desc} verdicts") if ctxs else [])
    verdicts = []
    for o in outs:
        la, lb = next(lps) if o else (0.0, 0.0)
        verdicts.append(None if la == lb else ("A" if la > lb else "B"))
    return verdicts, texts


def pointwise(engine: Engine, questions: list[str], responses: list[str], mode: str, max_tokens: int,
              desc: str = "judge") -> list[float | None]:
    """The recipe's judge prompt and score (parse: the last "Score: x"; expected: E[score] from the logits)."""
    from ..recipe import scoring
    t = load_template("judge")
    ids = [engine.encode([{"role": "user", "content": t.render(question=q, response=r)}])
           for q, r in zip(questions, responses)]
    params = [SamplingParams(temperature=0, max_tokens=max_tokens)] * len(ids)
    suffix = "\n" + scoring.SCORE_PREFIX
    outs = generate_fitting(engine, ids, params, suffix if mode == "expected" else "", desc)
    if mode == "parse":
        return [scoring.parse_score(o.samples[0].text) if o else None for o in outs]
    ctxs = [o.prompt_token_ids + strip_stop(engine, o.samples[0].token_ids) for o in outs if o]
    lps = iter(read_next(engine, ctxs, suffix, scoring.SCORE_CANDIDATES, f"{desc} scores") if ctxs else [])
    return [scoring.expected_value(next(lps)) if o else None for o in outs]
