"""summary.json of one iteration, and the one-screen text printed at its end: is the judge's signal usable
(valid scores, their spread, verdicts, position bias), what did the iteration train on, and how did the
model move (the evaluation stage's numbers, when the run has one)."""
from __future__ import annotations

import math
from collections import Counter

from ..io import write_json
from ..stage import Context, Stage
from . import reliability
from .rows import Judgment, MetaJudgment, Response


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _std(xs: list[float]) -> float | None:
    if not xs:
        return None
    m = math.fsum(xs) / len(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / len(xs))


def summary(ctx: Context) -> dict:
    st = ctx.stages  # this iteration's stage statistics, by stage name
    responses = ctx.rows("responses.jsonl", Response)
    judgments = ctx.rows("judgments.jsonl", Judgment)
    scores = [j.score for j in judgments if j.score is not None]
    per_response: dict[tuple, list[float]] = {}
    for j in judgments:
        if j.score is not None:
            per_response.setdefault((j.prompt_id, j.response_index), []).append(j.score)
    consistent, both_orders = reliability.order_consistency(
        ((m.prompt_id, m.response_index), m.first, m.second, m.winner)
        for m in ctx.rows("meta_judgments.jsonl", MetaJudgment))
    meta, ap, jp, tr = st["meta_judge"], st["actor_pairs"], st["judge_pairs"], st["train"]
    decided = jp["wins_first"] + jp["wins_second"]
    out = {
        "iteration": ctx.t,
        "trained": tr["trained"],
        "prompts": st["actor"]["prompts"],
        "responses": len(responses),
        "duplicate_responses": st["actor"].get("duplicates", 0),
        "mean_response_tokens": _share(sum(r.num_tokens for r in responses), len(responses)),
        "finish_reasons": dict(Counter(r.finish_reason for r in responses)),
        "judgments": len(judgments),
        "valid_judgment_rate": _share(len(scores), len(judgments)),
        "mean_score": _share(math.fsum(scores), len(scores)),
        "score_std": _std(scores),
        "score_histogram": {str(b): sum(1 for s in scores if round(s) == b) for b in range(6)},
        "score_icc": reliability.icc1(list(per_response.values())),
        "score_icc_p": reliability.icc1_p_value(list(per_response.values()), seed=ctx.t),
        "unscored_responses": ap["unscored_responses"],
        "battles": meta["battles"],
        "valid_verdict_rate": _share(meta["battles"] - meta["invalid_verdicts"], meta["battles"]),
        "first_shown_win_share": _share(jp["wins_first"], decided),
        "order_consistency": consistent,
        "order_consistency_pairs": both_orders,
        "position_weights": {k: jp[k] for k in ("w1", "w2", "wins_first", "wins_second")},
        "elo_spread_mean": jp["elo_spread_mean"],
        "pairs": {"actor": ap["actor_pairs"], "judge": jp["judge_pairs"]},
        "drops": {"actor": ap["actor_drops"], "judge": jp["judge_drops"]},
        "chosen_tokens_mean": ap.get("chosen_tokens_mean"),
        "rejected_tokens_mean": ap.get("rejected_tokens_mean"),
        "train": tr,
        "eval": st.get("eval"),
        "eval_initial": st.get("eval_initial"),
        "stages": {name: {k: v[k] for k in ("seconds", "tokens_per_s", "prefix_cache_hit_rate") if k in v}
                   for name, v in st.items()},
    }
    if ctx.dist.is_main:
        write_json(ctx.dir / "summary.json", out)
    return {"trained": tr["trained"]}


STAGE = Stage("summary", summary, None)


def _f(x, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _eval_lines(e: dict | None, who: str) -> list[str]:
    if not e:
        return []
    lines = []
    w = e.get("winrate")
    if w:
        ci = w.get("win_rate_ci95") or [None, None]
        lines.append(f"{who} win rate vs {w['baseline']} {_f(w['win_rate'])} [{_f(ci[0])}, {_f(ci[1])}] "
                     f"(LC {_f(w['lc_win_rate'])}, n {w['n']}, judge {w['judge']})")
    i = e.get("ifeval")
    if i:
        lines.append(f"{who} IFEval prompt-strict {_f(i['prompt_level_strict_acc'])} inst-strict "
                     f"{_f(i['inst_level_strict_acc'])} (n {i['num_prompts']})")
    j = e.get("judge_agreement")
    if j:
        lines.append(f"{who} judge agreement ({j['data']}): pointwise {_f(j['pointwise']['accuracy'])}, pairwise "
                     f"{_f(j['pairwise']['accuracy'])} (n {j['n']})")
    return lines


def _noise_note(s: dict) -> str:
    # say it in words when neither role's output is distinguishable from chance
    p, c = s.get("score_icc_p"), s.get("order_consistency")
    if p is None or p <= 0.05 or (c is not None and c > 0.6):
        return ""
    return "\n  the judge's scores of one response agree no more than scores of different responses: its pairs " \
           "may be noise (the model may be too weak to judge)"


def render(s: dict) -> str:
    hist = " ".join(f"{k}:{v}" for k, v in s["score_histogram"].items())
    tr, fin = s["train"], s["train"].get("final") or {}
    lines = [
        f"── iteration {s['iteration']} " + "─" * 50,
        f"prompts {s['prompts']}  responses {s['responses']} (mean {_f(s['mean_response_tokens'], '.1f')} tokens, "
        f"{s['duplicate_responses']} duplicates, {s['finish_reasons']})",
        f"judgments {s['judgments']}  valid {_f(s['valid_judgment_rate'], '.1%')}  mean score {_f(s['mean_score'], '.2f')}"
        f" ± {_f(s['score_std'], '.2f')}  histogram {hist}",
        f"meta-judge battles {s['battles']}  valid {_f(s['valid_verdict_rate'], '.1%')}  first-shown wins "
        f"{_f(s['first_shown_win_share'], '.1%')}",
        f"judge signal: score ICC(1) {_f(s['score_icc'])} (p {_f(s['score_icc_p'])} against shuffled scores; ~0: "
        f"noise)  meta-judge same winner in both orders {_f(s['order_consistency'], '.1%')} of "
        f"{s['order_consistency_pairs']} pairs (50%: a coin)" + _noise_note(s),
        f"pairs: actor {s['pairs']['actor']} (dropped {s['drops']['actor'] or 0}; chosen/rejected "
        f"{_f(s['chosen_tokens_mean'], '.0f')}/{_f(s['rejected_tokens_mean'], '.0f')} tokens)  judge "
        f"{s['pairs']['judge']} (dropped {s['drops']['judge'] or 0})",
        (f"train on {tr.get('kinds')}: {tr.get('steps', 0)} steps, loss {_f(fin.get('loss'), '.4f')}, reward "
         f"accuracy {_f(fin.get('rewards/accuracies'), '.2f')}") if s["trained"] else
        "NOT TRAINED: no pairs (see the warnings above)",
        *_eval_lines(s.get("eval_initial"), "M_0"),
        *_eval_lines(s.get("eval"), f"M_{s['iteration']}"),
        "stages: " + ", ".join(f"{k} {v['seconds']:.1f}s" + (f" {v['tokens_per_s']:.0f} tok/s" if "tokens_per_s" in v
                                                             else "") for k, v in s["stages"].items()),
    ]
    return "\n".join(lines)
