"""The three roles are one engine with different prompts and sampling parameters. This module holds what
they share: per-request seeds, splitting requests over processes, and `expected` mode's next-token
reading of a score or a verdict."""
from __future__ import annotations

import hashlib
from typing import Callable, Sequence

from ..engine import Engine, SamplingParams
from ..errors import UserError, warn
from ..trainer.distributed import Dist


def seed_of(*parts) -> int:
    """A 63-bit seed from (run seed, iteration, stage, request key...): the same request gets the same seed
    in every run, process and batch, which makes resumed and multi-process runs reproduce each other."""
    h = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def sampling(c, n: int, seed: int) -> SamplingParams:
    return SamplingParams(n=n, temperature=c.temperature, top_p=c.top_p, max_tokens=c.max_tokens, seed=seed)


def question(prompt) -> str:
    """The text a judge sees as the question: the prompt, or the last user turn of a conversation."""
    if isinstance(prompt, str):
        return prompt
    return next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def messages(prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def split(dist: Dist, items: Sequence, fn: Callable[[list], list]) -> list:
    """fn over this process's share of items (every world_size-th), results back in the items' order on
    every process."""
    mine = fn(list(items[dist.rank::dist.world_size]))
    parts = dist.all_gather_object(mine)
    out = [None] * len(items)
    for r, part in enumerate(parts):
        out[r::dist.world_size] = part
    return out


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


def strip_stop(engine: Engine, token_ids: list[int]) -> list[int]:
    """A sample's tokens without the EOS it may end with (expected mode appends text after them)."""
    return token_ids[:-1] if token_ids and token_ids[-1] in engine.eos_ids else token_ids
