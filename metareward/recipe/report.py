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
    return "" if x is None else f"{x:.{digits}f}"


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
    b.plot(ts, [s["invalid_judgment_rate"] * 5 for _, s in iters], "s--", label="invalid-judgment rate (x5)")
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
    a.plot(ts, [s["invalid_verdict_rate"] for _, s in iters], "s--", label="invalid verdicts")
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
    # held-out win rate per iteration, when the run evaluates
    evals = [(t, s["eval"]) for t, s in iters if s.get("eval")]
    if not evals:
        return None
    fig, a = plt.subplots(figsize=(6, 3.6))
    for key, label in (("win_rate", "win rate"), ("lc_win_rate", "length-controlled win rate")):
        pts = [(t, e[key], e.get(f"{key}_ci95")) for t, e in evals if e.get(key) is not None]
        if pts:
            err = [[v - (c or [v, v])[0] for _, v, c in pts], [(c or [v, v])[1] - v for _, v, c in pts]]
            a.errorbar([t for t, _, _ in pts], [v for _, v, _ in pts], yerr=err, fmt="o-", capsize=3,
                       label=label)
    a.axhline(0.5, color="gray", lw=0.8)
    base = iters[-1][1].get("eval_baseline") or "previous"
    a.set(title=f"held-out win rate vs the {base} model (95% CI)", xlabel="iteration", ylim=(0, 1))
    a.legend(fontsize=8)
    return fig


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

    rows = "".join(
        f"<tr><td>{t}</td><td>{s['prompts']}</td><td>{s['mean_response_tokens']:.1f}</td>"
        f"<td>{_num(s['mean_score'])}</td>"
        f"<td>{s['invalid_judgment_rate']:.1%}</td><td>{s['first_shown_win_share']:.1%}</td>"
        f"<td>{s['pairs']['actor']}</td><td>{s['pairs']['judge']}</td>"
        f"<td>{_num((s['train'].get('final') or {}).get('loss'), 4)}</td></tr>" for t, s in iters)
    imgs = "".join(f'<h2>{html.escape(n)}</h2><img src="{src}" alt="{html.escape(n)}">' for n, src in figs.items())
    page = (f"<!doctype html><meta charset=utf-8><title>metareward run {html.escape(str(run))}</title>"
            "<style>body{font-family:sans-serif;max-width:1150px;margin:auto}td,th{padding:2px 10px}"
            "table{border-collapse:collapse}tr:nth-child(even){background:#f3f3f3}</style>"
            f"<h1>metareward run: {html.escape(str(run))}</h1>"
            "<table><tr><th>iteration</th><th>prompts</th><th>mean tokens</th><th>mean score</th>"
            "<th>invalid judgments</th><th>first-shown wins</th><th>actor pairs</th><th>judge pairs</th>"
            f"<th>final DPO loss</th></tr>{rows}</table>{imgs}")
    with atomic_write(run / "report.html") as f:
        f.write(page)
    return run / "report.html"
