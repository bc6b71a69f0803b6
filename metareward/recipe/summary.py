"""summary.json of one iteration, and the one-screen text printed at its end."""
from __future__ import annotations

from collections import Counter

from .stages import Context, fault_point


def summary(ctx: Context) -> dict:
    stages = ctx.info["stages"]  # this iteration's stage statistics from state.json
    responses, judgments = ctx.rows("responses.jsonl"), ctx.rows("judgments.jsonl")
    scores = [j["score"] for j in judgments if j["score"] is not None]
    st = {k.split("/")[-1]: v for k, v in stages.items()}
    out = {
        "iteration": ctx.t,
        "prompts": st["actor"]["prompts"],
        "responses": len(responses),
        "mean_response_tokens": sum(r["num_tokens"] for r in responses) / max(len(responses), 1),
        "finish_reasons": dict(Counter(r["finish_reason"] for r in responses)),
        "judgments": len(judgments),
        "invalid_judgment_rate": (len(judgments) - len(scores)) / max(len(judgments), 1),
        "mean_score": sum(scores) / len(scores) if scores else None,
        "score_histogram": {str(b): sum(1 for s in scores if round(s) == b) for b in range(6)},
        "unscored_responses": st["actor_pairs"]["unscored_responses"],
        "battles": st["meta_judge"]["battles"],
        "invalid_verdict_rate": st["meta_judge"]["invalid_verdicts"] / max(st["meta_judge"]["battles"], 1),
        "position_weights": {k: st["judge_pairs"][k] for k in ("w1", "w2", "wins_first", "wins_second")},
        "first_shown_win_share": (st["judge_pairs"]["wins_first"]
                                  / max(st["judge_pairs"]["wins_first"] + st["judge_pairs"]["wins_second"], 1)),
        "elo_spread_mean": st["judge_pairs"]["elo_spread_mean"],
        "pairs": {"actor": st["actor_pairs"]["actor_pairs"], "judge": st["judge_pairs"]["judge_pairs"]},
        "drops": {"actor": st["actor_pairs"]["actor_drops"], "judge": st["judge_pairs"]["judge_drops"]},
        "train": st["train"],
        "eval": st.get("eval", {}).get("eval"),
        "eval_baseline": st.get("eval", {}).get("eval_baseline"),
        "stages": {name: {k: v[k] for k in ("seconds", "tokens_per_s", "prefix_cache_hit_rate") if k in v}
                   for name, v in st.items()},
    }
    fault_point(f"iter_{ctx.t}/summary")
    if ctx.dist.is_main:
        from ..io import write_json
        write_json(ctx.dir / "summary.json", out)
    return {}


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def render(s: dict) -> str:
    hist = " ".join(f"{k}:{v}" for k, v in s["score_histogram"].items())
    tr = s["train"]
    fin = tr.get("final") or {}
    lines = [
        f"── iteration {s['iteration']} " + "─" * 50,
        f"prompts {s['prompts']}  responses {s['responses']} (mean {s['mean_response_tokens']:.1f} tokens, "
        f"{s['finish_reasons']})",
        f"judgments {s['judgments']}  invalid {s['invalid_judgment_rate']:.1%}  mean score "
        + (f"{s['mean_score']:.2f}" if s["mean_score"] is not None else "n/a") + f"  histogram {hist}",
        f"meta-judge battles {s['battles']}  invalid {s['invalid_verdict_rate']:.1%}  first-shown wins "
        f"{s['first_shown_win_share']:.1%}  w1/w2 {s['position_weights']['w1']:.2f}/{s['position_weights']['w2']:.2f}",
        f"pairs: actor {s['pairs']['actor']} (dropped {s['drops']['actor'] or 0})  judge {s['pairs']['judge']} "
        f"(dropped {s['drops']['judge'] or 0})",
        f"train on {tr.get('kinds')}: {tr.get('steps', 0)} steps, loss "
        + (f"{fin['loss']:.4f}, reward accuracy {fin['rewards/accuracies']:.2f}" if fin.get("loss") is not None
           else "n/a"),
        *([f"eval vs the {'previous' if s['eval_baseline'] == 'previous' else 'initial'} model: win rate {s['eval']['win_rate']:.3f} "
           f"(LC {_fmt(s['eval']['lc_win_rate'])}) over {s['eval']['n']} prompts"] if s.get("eval") else []),
        "stages: " + ", ".join(f"{k} {v['seconds']:.1f}s" + (f" {v['tokens_per_s']:.0f} tok/s" if "tokens_per_s" in v
                                                             else "") for k, v in s["stages"].items()),
    ]
    return "\n".join(lines)
