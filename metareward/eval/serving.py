"""Evaluation loads models one at a time (the model, a baseline model, a judge) and frees each after use."""
from __future__ import annotations

import contextlib
import gc

import torch

from ..engine import Engine, SamplingParams
from ..errors import UserError, warn
from ..prompts import Prompt


def is_model(ref: str) -> bool:
    from pathlib import Path
    return ref == "tiny-random" or Path(ref).is_dir() or ref.endswith(".gguf") and Path(ref).is_file()


def require_model(ref: str, what: str = "model") -> None:
    if not is_model(ref):
        raise UserError(f"{what}: model directory not found: {ref}")


@contextlib.contextmanager
def serving(path: str, *, dtype=None, device=None, chat_template=None, engine_kwargs: dict | None = None):
    """(model, tokenizer, engine) for the duration of the block."""
    from ..model import load_model
    model, tok = load_model(path, dtype=dtype, device=device, chat_template=chat_template)
    engine = Engine(model, tok, **(engine_kwargs or {}))
    try:
        yield model, tok, engine
    finally:
        engine.release()
        del engine, model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def answer(engine: Engine, prompts: list[Prompt], params: SamplingParams, desc: str = "answers") -> dict:
    """{prompt id: [answer per turn]}: turn k of every prompt in one batch, each turn seeing the model's own
    earlier answers (MT-Bench's second turn). A prompt longer than the context gets an empty answer."""
    out = {p.id: [] for p in prompts}
    for k in range(max(len(p.turns) for p in prompts)):
        todo = [p for p in prompts if len(p.turns) > k]
        ids = [engine.encode(p.messages(out[p.id])) for p in todo]
        ok = [i for i, x in enumerate(ids) if len(x) < engine.max_model_len]
        if len(ok) < len(ids):
            skipped = [p.id for p, x in zip(todo, ids) if len(x) >= engine.max_model_len]
            warn(f"{desc} (turn {k + 1}): {len(skipped)} of {len(ids)} prompts exceed the model's context "
                 f"({engine.max_model_len} tokens) and get an empty answer: {', '.join(skipped[:5])}"
                 + (", ..." if len(skipped) > 5 else ""))
        outs = engine.generate([ids[i] for i in ok], params, desc=f"{desc} (turn {k + 1})") if ok else []
        texts = dict(zip(ok, (o.samples[0].text for o in outs)))
        for i, p in enumerate(todo):
            out[p.id].append(texts.get(i, ""))
    return out
