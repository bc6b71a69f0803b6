"""`metareward report RUN_DIR`: report.html with PNG plots of every iteration, so that a person sees at a
glance whether the judge is drifting (everything scored 5), responses are growing, or training stalls."""
from __future__ import annotations

import html
import json
from pathlib import Path

from ..errors import UserError
from ..io import atomic_write, read_jsonl


def _iterations(run: Path) -> list[tuple[int, dict]]:
    out = []
    for d in sorted(run.glob("iter_*"), key=lambda p: int(p.name.split("_")[1])):
        if (d / "summary.json").is_file():
            out.append((int(d.name.split("_")[1]), json.loads((d / "summary.json").read_text())))
    return out


def _rows(path: Path) -> list[dict]:
    return [r for _, r in read_jsonl(path)] if path.is_file() and path.stat().st_size else []


def _num(x, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _winrate(w: dict | None) -> str:
    # the judge and how often its verdict survived swapping the order: a position-bound judge gives ~0.50
    if not w:
        return "n/a"
    ci = w.get("win_rate_ci95")
    out = f"{_num(w['win_rate'])}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "") + f" vs {w['baseline']}"
    if w.get("judge"):
        out += f", judge {w['judge']}" + (f" ({w['verdict_mode']})" if w.get("verdict_mode") else "")
    if w.get("position_consistency") is not None:
        out += f", same verdict both orders {w['position_consistency']:.0%}"
    return out


def _agreement(j: dict | None) -> str:
    # agreement with the human labels: pointwise (two rubric scores) / pairwise (verdict, both orders; ties
    # are the pairs whose verdict flipped with the order)
    if not j:
        return "n/a"
    pw = j.get("pairwise") or {}
    ties = f" (ties {pw['judge_tie_rate']:.0%})" if pw.get("judge_tie_rate") is not None else ""
    return f"{_num((j.get('pointwise') or {}).get('accuracy'))} / {_num(pw.get('accuracy'))}{ties}"


def _ifeval(i: dict | None) -> str:
    return "n/a" if not i else f"{_num(i['prompt_level_strict_acc'])} / {_num(i['inst_level_strict_acc'])}"


def _scores(plt, run: Path, iters: list) -> object:
    # judgment scores: a histogram per iteration (drift: mass moving to 5), the mean, invalid judgments
    ts = [t for t, _ in iters]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    w = 0.8 / len(iters)
    for k, (t, s) in enumerate(iters):
        h = s["score_histogram"]
        a.bar([int(x) + k * w - 0.4 + w / 2 for x in h], list(h.values()), width=w, label=f"iter {t}")
    a.set(title="judgment scores (rounded)", xlabel="score", ylabel="judgments")
    a.legend(fontsize=8)
    b.plot(ts, [s["mean_score"] for _, s in iters], "o-", label="mean judgment score")
    b.plot(ts, [(s["valid_judgment_rate"] or 0) * 5 for _, s in iters], "s--", label="valid-judgment rate (x5)")
    b.set(title="judge", xlabel="iteration", ylim=(0, 5.2))
    b.legend(fontsize=8)
    return fig


def _lengths_pairs(plt, run: Path, iters: list) -> object:
    # response length (growing answers) and the pairs each iteration yields
    ts = [t for t, _ in iters]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    a.plot(ts, [s["mean_response_tokens"] for _, s in iters], "o-")
    a.set(title="mean response length", xlabel="iteration", ylabel="tokens")
    a.set_ylim(bottom=0)
    for kind in ("actor", "judge"):
        b.plot(ts, [s["pairs"][kind] for _, s in iters], "o-", label=f"{kind} pairs")
        b.plot(ts, [sum((s["drops"][kind] or {}).values()) for _, s in iters], "x:", label=f"{kind} dropped")
    b.set(title="preference pairs", xlabel="iteration")
    b.legend(fontsize=8)
    return fig


def _meta_judge(plt, run: Path, iters: list) -> object:
    # the meta-judge's position bias and how far apart the Elo ratings spread
    ts = [t for t, _ in iters]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    a.plot(ts, [s["first_shown_win_share"] for _, s in iters], "o-", label="wins by the judgment shown first")
    a.plot(ts, [s["valid_verdict_rate"] for _, s in iters], "s--", label="valid verdicts")
    a.axhline(0.5, color="gray", lw=0.8)
    a.set(title="meta-judge position bias", xlabel="iteration", ylim=(0, 1))
    a.legend(fontsize=8)
    b.plot(ts, [s["elo_spread_mean"] or 0 for _, s in iters], "o-")
    b.set(title="Elo spread (max - min, mean over responses)", xlabel="iteration")
    return fig


def _dpo(plt, run: Path, iters: list) -> object:
    # DPO loss and reward accuracy over all optimizer steps of the run
    ts = [t for t, _ in iters]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    step = 0
    for t in ts:
        m = _rows(run / f"iter_{t}" / "train_metrics.jsonl")
        x = list(range(step, step + len(m)))
        a.plot(x, [r["loss"] for r in m], ".-", label=f"iter {t}")
        b.plot(x, [r["rewards/accuracies"] for r in m], ".-", label=f"iter {t}")
        step += len(m)
    a.set(title="DPO loss", xlabel="optimizer step (all iterations)")
    b.set(title="reward accuracy", xlabel="optimizer step (all iterations)", ylim=(-0.05, 1.05))
    a.legend(fontsize=8)
    return fig


def _stages(plt, run: Path, iters: list) -> object:
    # where the time goes
    ts = [t for t, _ in iters]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    names = list(iters[0][1]["stages"])
    bottom = [0.0] * len(iters)
    for n in names:
        v = [s["stages"].get(n, {}).get("seconds", 0.0) for _, s in iters]
        a.bar(ts, v, bottom=bottom, label=n)
        bottom = [x + y for x, y in zip(bottom, v)]
        if any("tokens_per_s" in s["stages"].get(n, {}) for _, s in iters):
            b.plot(ts, [s["stages"].get(n, {}).get("tokens_per_s", 0) for _, s in iters], "o-", label=n)
    a.set(title="wall time per stage", xlabel="iteration", ylabel="seconds")
    a.legend(fontsize=7)
    b.set(title="tokens/s (generation: output tokens; train: all tokens)", xlabel="iteration")
    b.legend(fontsize=7)
    return fig


def _eval(plt, run: Path, iters: list) -> object:
    # how the model moved: win rate against the baseline, IFEval, and its agreement as a judge with humans;
    # M_0's measurements (eval_initial of iteration 1) are the points at iteration 0
    points = [(0, iters[0][1].get("eval_initial") or {})] + [(t, s.get("eval") or {}) for t, s in iters]
    series = {
        "win rate": [(t, e["winrate"]["win_rate"], e["winrate"]["win_rate_ci95"]) for t, e in points
                     if e.get("winrate")],
        "IFEval prompt-strict": [(t, e["ifeval"]["prompt_level_strict_acc"],
                                  e["ifeval"]["ci95"].get("prompt_level_strict_acc")) for t, e in points if e.get("ifeval")],
        "IFEval inst-strict": [(t, e["ifeval"]["inst_level_strict_acc"],
                                e["ifeval"]["ci95"].get("inst_level_strict_acc")) for t, e in points if e.get("ifeval")],
        "judge agreement (pairwise)": [(t, e["judge_agreement"]["pairwise"]["accuracy"], None) for t, e in points
                                       if e.get("judge_agreement")],
    }
    series = {k: [p for p in v if p[1] is not None] for k, v in series.items()}
    if not any(series.values()):
        return None
    fig, a = plt.subplots(figsize=(7, 3.8))
    for label, pts in series.items():
        if pts:
            err = [[v - (c or [v, v])[0] for _, v, c in pts], [(c or [v, v])[1] - v for _, v, c in pts]]
            a.errorbar([t for t, _, _ in pts], [v for _, v, _ in pts], yerr=err, fmt="o-", capsize=3, label=label)
    a.axhline(0.5, color="gray", lw=0.8)
    a.set(title="evaluation of M_t (95% CI; iteration 0: M_0)", xlabel="iteration", ylim=(0, 1))
    a.legend(fontsize=8)
    return fig


COLUMNS = {  # per iteration: is the judge's signal usable, what was trained, how did the model move
    "iteration": lambda t, s: t,
    "trained": lambda t, s: "yes" if s.get("trained", True) else "NO",
    "prompts": lambda t, s: s["prompts"],
    "mean tokens": lambda t, s: _num(s["mean_response_tokens"], 1),
    "valid judgments": lambda t, s: _pct(s["valid_judgment_rate"]),
    "mean score ± sd": lambda t, s: f"{_num(s['mean_score'])} ± {_num(s['score_std'])}",
    "score ICC (p)": lambda t, s: f"{_num(s.get('score_icc'))} ({_num(s.get('score_icc_p'), 3)})",
    "valid verdicts": lambda t, s: _pct(s["valid_verdict_rate"]),
    "first-shown wins": lambda t, s: _pct(s["first_shown_win_share"]),
    "same winner both orders": lambda t, s: _pct(s.get("order_consistency")),
    "actor / judge pairs": lambda t, s: f"{s['pairs']['actor']} / {s['pairs']['judge']}",
    "chosen / rejected tokens": lambda t, s: f"{_num(s['chosen_tokens_mean'], 0)} / "
                                             f"{_num(s['rejected_tokens_mean'], 0)}",
    "DPO loss, acc": lambda t, s: f"{_num((s['train'].get('final') or {}).get('loss'), 4)}, "
                                  f"{_num((s['train'].get('final') or {}).get('rewards/accuracies'))}",
    "win rate vs baseline": lambda t, s: _winrate((s.get("eval") or {}).get("winrate")),
    "IFEval prompt / inst strict": lambda t, s: _ifeval((s.get("eval") or {}).get("ifeval")),
    "judge agreement, pointwise / pairwise": lambda t, s: _agreement((s.get("eval") or {}).get("judge_agreement")),
}


FIGURES = {"scores": _scores, "lengths_pairs": _lengths_pairs, "meta_judge": _meta_judge, "dpo": _dpo,
           "stages": _stages, "eval": _eval}


def report(run_dir: str | Path) -> Path:
    run = Path(run_dir)
    if not (run / "state.json").is_file():
        raise UserError(f"{run} is not a metareward run directory (no state.json)")
    iters = _iterations(run)
    if not iters:
        raise UserError(f"{run} has no finished iteration yet (no iter_*/summary.json)")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("metareward report draws with matplotlib: pip install 'metareward[report]'") from None
    out = run / "report"
    out.mkdir(exist_ok=True)
    ts = [t for t, _ in iters]
    figs = {}
    for name, draw in FIGURES.items():
        fig = draw(plt, run, iters)
        if fig is None:
            continue
        for ax in fig.axes:
            if ax.get_xlabel() == "iteration":
                ax.set_xticks(ts)
        fig.tight_layout()
        with atomic_write(out / f"{name}.png", "wb") as f:
            fig.savefig(f, format="png", dpi=100)
        plt.close(fig)
        figs[name] = f"report/{name}.png"

    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in _table(iters))
    initial = f"<p>{html.escape(_initial(iters))}</p>" if _initial(iters) else ""
    imgs = "".join(f'<h2>{html.escape(n)}</h2><img src="{src}" alt="{html.escape(n)}">' for n, src in figs.items())
    page = (f"<!doctype html><meta charset=utf-8><title>metareward run {html.escape(str(run))}</title>"
            "<style>body{font-family:sans-serif;max-width:1250px;margin:auto}td,th{padding:2px 8px}"
            "table{border-collapse:collapse;font-size:90%}tr:nth-child(even){background:#f3f3f3}</style>"
            f"<h1>metareward run: {html.escape(str(run))}</h1><table><tr>{head}</tr>{body}</table>{initial}{imgs}")
    with atomic_write(run / "report.html") as f:
        f.write(page)
    with atomic_write(run / "report.md") as f:
        f.write(markdown(iters))
    return run / "report.html"


def _table(iters: list) -> list[list[str]]:
    return [[str(f(t, s)) for f in COLUMNS.values()] for t, s in iters]


def _initial(iters: list) -> str:
    e0 = iters[0][1].get("eval_initial") or {}
    if not e0 or e0.get("skipped"):
        return ""
    return (f"M_0: IFEval prompt / inst strict {_ifeval(e0.get('ifeval'))}, judge agreement pointwise / pairwise "
            f"{_agreement(e0.get('judge_agreement'))}")


def markdown(iters: list) -> str:
    """The report's table, M_0's measurements and the wall time of every stage, as Markdown (report.md)."""
    def rows(header, body):
        return "\n".join("| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header), *body])
    names = list(dict.fromkeys(n for _, s in iters for n in s["stages"]))
    times = [[str(t)] + [_num(s["stages"].get(n, {}).get("seconds"), 1) for n in names]
             + [_num(sum(v.get("seconds", 0.0) for v in s["stages"].values()), 1)] for t, s in iters]
    parts = [rows(list(COLUMNS), _table(iters)), _initial(iters),
             "Wall time per stage (seconds):", rows(["iteration", *names, "total"], times)]
    return "\n\n".join(p for p in parts if p) + "\n"
