"""IFEval (Zhou et al. 2023, arXiv 2311.07911): 541 prompts with instructions a program can verify ("answer in
fewer than 100 words", "no commas", "wrap the answer in JSON"). The model answers greedily through the engine,
or the answers come from a file; lm-eval's checks (ifeval_checks.py) score them, strict and loose, per
instruction; the four accuracies carry 95% percentile bootstrap intervals over prompts."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io import read_jsonl, write_json, write_jsonl

DATA_NAME = "ifeval_input_data.jsonl"
METRICS = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")


def default_data() -> Path | None:
    """The project's shared copy beside a clone (<clone>/../shared/data), where the tests find it too. An
    installed package has no such neighbour: then --data is required."""
    p = Path(__file__).resolve().parents[3] / "shared" / "data" / DATA_NAME
    return p if p.is_file() else None


def load_data(path=None, limit: int | None = None) -> list[dict]:
    path = path or default_data()
    if path is None:
        raise UserError(f"no IFEval data: pass --data FILE (Google's instruction_following_eval "
                        f"data/input_data.jsonl, 541 rows); {DATA_NAME} was not found in ../shared/data beside the clone")
    rows = [r for _, r in read_jsonl(path, required=("key", "prompt", "instruction_id_list", "kwargs"))]
    from .ifeval_checks import known_instructions

    known = known_instructions()
    for r in rows:
        if len(r["instruction_id_list"]) != len(r["kwargs"]):
            raise UserError(f"{path}: key {r['key']}: {len(r['instruction_id_list'])} instructions but "
                            f"{len(r['kwargs'])} kwargs")
        unknown = sorted(set(r["instruction_id_list"]) - known)
        if unknown:
            raise UserError(f"{path}: key {r['key']}: unknown IFEval instruction {unknown[0]!r}")
    if len({r["key"] for r in rows}) != len(rows):
        raise UserError(f"{path}: duplicate keys")
    return rows[:limit] if limit is not None else rows


def read_responses(path, rows: list[dict]) -> list[str]:
    """The response to each row, matched by `key` when the file's rows have one, else by `prompt` text.
    Responses for prompts not in the data are ignored; a data row without a response is an error."""
    by_key, by_prompt = {}, {}
    for line, r in read_jsonl(path, required=("response",)):
        if not isinstance(r["response"], str):
            raise UserError(f"{path}:{line}: `response` must be a string")
        if "key" in r:
            by_key[r["key"]] = r["response"]
        elif "prompt" in r:
            by_prompt[r["prompt"]] = r["response"]
        else:
            raise UserError(f"{path}:{line}: a response row needs `key` or `prompt`")
    out, missing = [], []
    for r in rows:
        resp = by_key.get(r["key"], by_prompt.get(r["prompt"]))
        if resp is None:
            missing.append(r["key"])
        out.append(resp)
    if missing:
        raise UserError(f"{path} has no response for {len(missing)} of {len(rows)} IFEval prompts "
                        f"(keys {missing[:5]}{' ...' if len(missing) > 5 else ''})")
    return out


def answer(engine, rows: list[dict], max_tokens: int, desc: str = "ifeval") -> list[dict]:
    """Greedy answers through an engine: [{response, finish_reason, num_tokens}] in the rows' order."""
    from ..engine import SamplingParams

    if not rows:
        return []
    outs = engine.generate([[{"role": "user", "content": r["prompt"]}] for r in rows],
                           SamplingParams(temperature=0.0, max_tokens=max_tokens), desc=desc)
    return [{"response": o.samples[0].text, "finish_reason": o.samples[0].finish_reason,
             "num_tokens": len(o.samples[0].token_ids)} for o in outs]


def generation_stats(answers: list[dict], seconds: float, max_tokens: int) -> dict:
    n = sum(a["num_tokens"] for a in answers)
    return {"seconds": round(seconds, 2), "output_tokens": n, "tokens_per_s": round(n / max(seconds, 1e-9), 1),
            "truncated": sum(a["finish_reason"] == "length" for a in answers), "max_tokens": max_tokens}


def accuracies(strict: list[list[bool]], loose: list[list[bool]], idx: np.ndarray | None = None) -> dict:
    """The four IFEval accuracies over the prompts `idx` (all when None, repeats allowed: a bootstrap sample).
    Instruction level counts every instruction of every (resampled) prompt."""
    idx = np.arange(len(strict)) if idx is None else idx
    out = {}
    for mode, res in (("strict", strict), ("loose", loose)):
        passed = np.array([sum(r) for r in res])[idx]
        total = np.array([len(r) for r in res])[idx]
        out[f"prompt_level_{mode}_acc"] = float(np.mean(passed == total))
        out[f"inst_level_{mode}_acc"] = float(passed.sum() / total.sum())
    return out


def bootstrap(strict, loose, *, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap over prompts: {metric: [low, high]}."""
    if resamples <= 0:
        return {}
    rng = np.random.default_rng(seed)
    n = len(strict)
    samples = [accuracies(strict, loose, rng.integers(0, n, n)) for _ in range(resamples)]
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {k: [float(np.percentile([s[k] for s in samples], lo)), float(np.percentile([s[k] for s in samples], hi))]
            for k in METRICS}


def score(rows: list[dict], answers: list[dict], *, bootstrap_resamples: int = 1000, seed: int = 0
          ) -> tuple[list[dict], dict]:
    """lm-eval's checks on each answer -> (one record per prompt, the four accuracies with their intervals)."""
    from .ifeval_checks import check

    strict, loose, records = [], [], []
    for row, ans in zip(rows, answers, strict=True):
        s, lo = check(row, ans["response"])
        strict.append(s)
        loose.append(lo)
        records.append({"key": row["key"], "prompt": row["prompt"], **ans,
                        "instruction_id_list": row["instruction_id_list"],
                        "follow_instruction_list_strict": s, "follow_instruction_list_loose": lo,
                        "follow_all_instructions_strict": all(s), "follow_all_instructions_loose": all(lo)})
    scores = {**accuracies(strict, loose),
              "ci95": bootstrap(strict, loose, resamples=bootstrap_resamples, seed=seed),
              "num_prompts": len(rows), "num_instructions": sum(len(s) for s in strict),
              "bootstrap": {"resamples": bootstrap_resamples, "seed": seed, "unit": "prompt"}}
    return records, scores


def ifeval(*, model=None, output, data=None, limit: int | None = None, max_tokens: int = 512, responses=None,
           bootstrap_resamples: int = 1000, seed: int = 0, dtype=None, device=None) -> dict:
    """Answer (or read the answers to) IFEval's prompts, score them, write OUT/ifeval_responses.jsonl and
    OUT/ifeval_scores.json; returns the scores."""
    if (model is None) == (responses is None):
        raise UserError("give a model to answer the prompts, or --responses FILE to score existing answers")
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a directory")
    rows = load_data(data, limit)
    gen_stats = None
    if responses is not None:
        answers = [{"response": r} for r in read_responses(responses, rows)]
    else:
        from .. import load_model
        from ..engine import Engine

        m, tok = load_model(model, dtype=dtype, device=device)
        engine = Engine(m, tok)
        t0 = time.perf_counter()
        answers = answer(engine, rows, max_tokens)
        gen_stats = generation_stats(answers, time.perf_counter() - t0, max_tokens)
        engine.release()
    records, scores = score(rows, answers, bootstrap_resamples=bootstrap_resamples, seed=seed)
    scores["source"] = {"model": str(model)} if model is not None else {"responses": str(responses)}
    scores["data"] = str(data or default_data())
    if gen_stats is not None:
        scores["generation"] = gen_stats
    write_jsonl(out / "ifeval_responses.jsonl", records)
    write_json(out / "ifeval_scores.json", scores)
    return scores


def table(scores: dict) -> str:
    lines = ["| metric | accuracy | 95% CI |", "|---|---|---|"]
    for k in METRICS:
        ci = scores.get("ci95", {}).get(k)
        lines.append(f"| {k} | {scores[k]:.4f} | " + (f"[{ci[0]:.4f}, {ci[1]:.4f}] |" if ci else "- |"))
    lines.append(f"\n{scores['num_prompts']} prompts, {scores['num_instructions']} instructions")
    return "\n".join(lines)
