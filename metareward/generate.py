"""`metareward generate`: a prompts file in, one JSONL line per sample out."""
from __future__ import annotations

from pathlib import Path

from .engine import Engine, SamplingParams
from .errors import UserError
from .io import atomic_write, dumps
from .prompts import read_prompts


def generate_file(engine: Engine, prompts_path: str | Path, output: str | Path, params: SamplingParams,
                  raw: bool = False, skip_long: bool = False, use_tqdm: bool = True) -> dict:
    prompts = read_prompts(prompts_path)
    encoded, kept, skipped = [], [], 0
    for p in prompts:
        ids = engine.encode(p.question if raw else p.messages())
        if len(ids) >= engine.max_model_len:
            if skip_long:
                skipped += 1
                continue
            raise UserError(f"{p.where}: prompt has {len(ids)} tokens; the context is {engine.max_model_len} "
                            "(--skip-long skips such prompts)")
        encoded.append(ids)
        kept.append(p)
    if not kept:
        raise UserError(f"no prompt of {prompts_path} fits the context")
    outputs = engine.generate(encoded, params, use_tqdm=use_tqdm)
    with atomic_write(output) as f:
        for p, out in zip(kept, outputs):
            for j, s in enumerate(out.samples):
                f.write(dumps({
                    "prompt_id": p.id, "sample_index": j, "prompt": p.raw, "text": s.text,
                    "token_ids": s.token_ids, "finish_reason": s.finish_reason,
                    "num_prompt_tokens": out.num_prompt_tokens, "num_generated_tokens": len(s.token_ids),
                    "num_cached_tokens": s.num_cached_tokens, "cumulative_logprob": s.cumulative_logprob,
                    **({"logprobs": s.logprobs} if s.logprobs is not None else {}),
                }) + "\n")
    st = engine.stats
    return {"prompts": len(kept), "skipped_long": skipped, "samples": sum(len(o.samples) for o in outputs),
            "output_tokens": st.output_tokens, "tokens_per_s": st.tokens_per_s, "prefix_cache_hit_rate": st.hit_rate}
