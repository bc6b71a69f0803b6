"""Asking a model to judge, on an engine: one implementation for the three kinds of request (a pointwise
score, a meta-judge's winner between two judgments, a pairwise verdict between two answers) and both ways of
reading the answer: `parse` (the value the judge writes in its text) and `expected` (the value read from the
next-token distribution after the judge's text and a fixed prefix such as "Score: ", for small models that
reason but never write the verdict line). Used by the recipe's stages and by every `eval` command."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from ..engine import Engine, SamplingParams
from ..errors import UserError, warn
from . import parse
from .templates import Template, load_template


@dataclass(frozen=True)
class Reader:
    """How a judge's answer becomes a value."""
    parse: Callable[[str], object]  # parse mode: the text -> the value or None
    prefix: str  # expected mode: appended to the judge's text; the next token is one of the candidates
    candidates: tuple[str, ...]
    from_logprobs: Callable[[list[float]], object]  # the candidates' log-probs -> the value or None


_AB = {"first": "A", "second": "B", None: None}
SCORE = Reader(parse.parse_score, "\n" + parse.SCORE_PREFIX, parse.SCORE_CANDIDATES, parse.expected_value)
WINNER = Reader(parse.parse_winner, "\n" + parse.WINNER_PREFIX, parse.WINNER_CANDIDATES,
                lambda lp: parse.expected_winner(*lp))
VERDICT = Reader(parse.parse_pairwise, "\nWinner: ", ("A", "B"), lambda lp: _AB[parse.expected_winner(*lp)])
MODES = ("parse", "expected")


@dataclass(frozen=True)
class Judged:
    text: str
    value: object  # a score, "first"/"second", "A"/"B"/"tie"; None when the answer holds none


def judge(engine: Engine, prompts: list[str | list[dict]], params: SamplingParams | list[SamplingParams],
          reader: Reader, mode: str, desc: str) -> list[list[Judged] | None]:
    """Each prompt (a user message, or a conversation: see templates.py) answered params.n times and read; None
    for a prompt that leaves no room for its answer in the context (a warning says how many)."""
    if mode not in MODES:
        raise UserError(f"unknown judging mode {mode!r}: choose parse or expected")
    params = params if isinstance(params, list) else [params] * len(prompts)
    ids = [engine.encode([{"role": "user", "content": p}] if isinstance(p, str) else p) for p in prompts]
    expected = mode == "expected"
    outs = generate_fitting(engine, ids, params, reader.prefix if expected else "", desc)
    if not expected:
        return [[Judged(s.text, reader.parse(s.text)) for s in o.samples] if o else None for o in outs]
    contexts = [o.prompt_token_ids + strip_stop(engine, s.token_ids) for o in outs if o for s in o.samples]
    lps = iter(read_next(engine, contexts, reader.prefix, reader.candidates, f"{desc} (reading values)")
               if contexts else [])
    return [[Judged(s.text, reader.from_logprobs(next(lps))) for s in o.samples] if o else None for o in outs]


def scores(engine: Engine, items: Sequence[tuple[str, str]], params, *, mode: str, template: Template | None = None,
           desc: str = "judge") -> list[list[Judged] | None]:
    """The pointwise rubric over (question, response) items: scores in [0, 5]."""
    t = template or load_template("judge")
    return judge(engine, [t.render(question=q, response=r) for q, r in items], params, SCORE, mode, desc)


def winners(engine: Engine, items: Sequence[tuple[str, str, str, str]], params, *, mode: str,
            template: Template | None = None, desc: str = "meta-judge") -> list[list[Judged] | None]:
    """The meta-judge over (question, response, judgment A, judgment B): "first" (A) or "second" (B)."""
    t = template or load_template("meta_judge")
    prompts = [t.render(question=q, response=r, judgment_a=a, judgment_b=b) for q, r, a, b in items]
    return judge(engine, prompts, params, WINNER, mode, desc)


def verdicts(engine: Engine, items: Sequence[tuple[str, str, str]], params, *, mode: str,
             template: Template | None = None, desc: str = "pairwise judge") -> list[list[Judged] | None]:
    """The pairwise judge over (question, response A, response B): "A", "B" or "tie"."""
    t = template or load_template("pairwise")
    prompts = [t.render(question=q, response_a=a, response_b=b) for q, a, b in items]
    return judge(engine, prompts, params, VERDICT, mode, desc)


# -- the engine side of a request --------------------------------------------------------------------------

def generate_fitting(engine: Engine, ids: list[list[int]], params: list[SamplingParams], suffix: str,
                     desc: str) -> list:
    """engine.generate over the prompts that leave room for their whole answer (and, in expected mode, for
    the `suffix` read after it); None for the others, with a warning: a judge prompt that outgrows the
    context (a long question and response) costs its verdict, not the whole run."""
    extra = len(engine.tokenizer.encode(suffix, add_special_tokens=False)) if suffix else 0
    ok = [i for i, (x, p) in enumerate(zip(ids, params)) if len(x) + p.max_tokens + extra < engine.max_model_len]
    if len(ok) < len(ids):
        warn(f"{desc}: {len(ids) - len(ok)} of {len(ids)} prompts leave no room for the answer in the context "
             f"({engine.max_model_len} tokens) and are skipped")
    outs = engine.generate([ids[i] for i in ok], [params[i] for i in ok], desc=desc) if ok else []
    full: list = [None] * len(ids)
    for i, o in zip(ok, outs):
        full[i] = o
    return full


def continuation(tok, prefix: str, candidates: Sequence[str]) -> tuple[list[int], list[int]]:
    """(prefix ids, one token id per candidate) such that prefix + candidate tokenizes as prefix ids + that
    one token. Tries `prefix` + "4" and then `prefix without its trailing space` + " 4", which is how
    BPE vocabularies (Llama 3, Qwen) hold a digit after a space."""
    for pre, sep in ((prefix, ""), (prefix.rstrip(" "), " ")):
        base = tok.encode(pre, add_special_tokens=False)
        ids = []
        for c in candidates:
            full = tok.encode(pre + sep + c, add_special_tokens=False)
            if len(full) != len(base) + 1 or full[:-1] != base:
                break
            ids.append(full[-1])
        else:
            return base, ids
    raise UserError(f"expected mode: this tokenizer does not read each of {list(candidates)} after "
                    f"{prefix!r} as one token; use parse mode")


def read_next(engine: Engine, contexts: list[list[int]], prefix: str, candidates: Sequence[str],
              desc: str) -> list[list[float]]:
    """Log-probs of the candidates right after each context + prefix (expected mode)."""
    pre, ids = continuation(engine.tokenizer, prefix, candidates)
    return engine.next_token_logprobs([c + pre for c in contexts], ids, desc=desc)


def strip_stop(engine: Engine, token_ids: list[int]) -> list[int]:
    """A sample's tokens without the EOS it may end with (expected mode appends text after them)."""
    return token_ids[:-1] if token_ids and token_ids[-1] in engine.eos_ids else token_ids
