"""Command line: parse options, call the library, print. Errors caused by user input are one line
`error: ...` with exit code 2 (a traceback only with --debug)."""
from __future__ import annotations

import json
import os
import sys

import click

from ._version import __version__
from .errors import UserError

model_option = click.option("--model", default="tiny-random", show_default=True,
                            help="Local Hugging Face model directory, or tiny-random (built in).")
dtype_option = click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
                            help="Weights dtype [default: bfloat16 on CUDA, float32 on CPU].")
device_option = click.option("--device", default=None, help="cpu, cuda, cuda:1 ... [default: cuda if available].")
template_option = click.option("--chat-template", type=click.Path(dir_okay=False), default=None,
                               help="A Jinja chat template file, for tokenizers that have none.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="metareward")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def cli(debug):
    """Meta-Rewarding: a model acts, judges and meta-judges itself, and is trained by DPO in place."""


@cli.command()
@model_option
@click.option("--prompts", required=True, type=click.Path(), help="JSONL with a `prompt` field per line.")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="JSONL, one line per sample.")
@click.option("--n", default=1, type=click.IntRange(min=1), help="Samples per prompt.")
@click.option("--temperature", default=1.0, type=click.FloatRange(min=0))
@click.option("--top-p", default=1.0, type=click.FloatRange(min=0, max=1, min_open=True))
@click.option("--top-k", default=0, type=click.IntRange(min=-1), help="0: off.")
@click.option("--min-p", default=0.0, type=click.FloatRange(min=0, max=1))
@click.option("--max-tokens", default=256, type=click.IntRange(min=1))
@click.option("--seed", default=0, help="Per-request seeds derive from it: same seed, same samples.")
@click.option("--stop", multiple=True, help="Stop string (repeatable); cut from the text.")
@click.option("--raw", is_flag=True, help="Tokenize the prompt text as is, without the chat template.")
@click.option("--skip-long", is_flag=True, help="Skip prompts longer than the context instead of failing.")
@click.option("--max-model-len", default=None, type=click.IntRange(min=2), help="Context length [default: the model's].")
@template_option
@dtype_option
@device_option
def generate(model, prompts, output, n, temperature, top_p, top_k, min_p, max_tokens, seed, stop, raw, skip_long,
             max_model_len, chat_template, dtype, device):
    """Generate samples for every prompt of a file."""
    from . import load_model
    from .engine import Engine, SamplingParams
    from .generate import generate_file

    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                            max_tokens=max_tokens, stop=list(stop), seed=seed)
    m, tok = load_model(model, dtype=dtype, device=device, chat_template=chat_template, max_model_len=max_model_len)
    engine = Engine(m, tok, max_model_len=max_model_len)
    summary = generate_file(engine, prompts, output, params, raw=raw, skip_long=skip_long)
    click.echo(json.dumps(summary), err=True)


def settings_options(cls):
    """One click option per field of a settings section: the defaults, choices and help come from the
    section's definition (trainer/config.py for DPO), not from a second copy here."""
    import typing

    def deco(f):
        for name, field in reversed(list(cls.model_fields.items())):
            flag, hint = "--" + name.replace("_", "-"), field.annotation
            kw = dict(default=field.default, help=field.description, show_default=True)
            if typing.get_origin(hint) is typing.Literal:
                kw["type"] = click.Choice(typing.get_args(hint))
            elif hint is bool:
                flag = f"{flag}/--no-{flag[2:]}"
            elif typing.get_origin(hint) is tuple:
                kw.update(nargs=2, type=float)
            else:
                kw["type"] = hint
            f = click.option(flag, name, **kw)(f)
        return f
    return deco


def _train_dpo_settings():
    from .trainer.config import DPOConfig
    return DPOConfig


@cli.command("train-dpo")
@model_option
@click.option("--pairs", required=True, type=click.Path(), help="JSONL {prompt, chosen, rejected} (TRL format).")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Directory for the checkpoint.")
@settings_options(_train_dpo_settings())
@click.option("--force", is_flag=True, help="Replace a non-empty output directory.")
@template_option
@dtype_option
@device_option
def train_dpo_cmd(model, pairs, output, force, chat_template, dtype, device, **settings):
    """DPO on preference pairs, in place on the model's own weights (torchrun: FSDP2)."""
    from .settings import build
    from .trainer.config import DPOConfig
    from .trainer.job import train_dpo

    cfg = build(DPOConfig, settings, option=True)
    summary = train_dpo(model, pairs, output, cfg, force=force, dtype=dtype, device=device,
                        chat_template=chat_template)
    if os.environ.get("RANK", "0") == "0":
        click.echo(json.dumps(summary), err=True)


@cli.command(context_settings={"ignore_unknown_options": False})
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML config [default: the embedded tiny-random job when --model is not given either].")
@click.option("--model", default=None, help="Local HF model directory, a .gguf file, or tiny-random.")
@click.option("--prompts", default=None, help="JSONL prompts file [default: the example prompts].")
@click.option("--output-dir", default=None)
@click.option("--iterations", type=int, default=None)
@click.option("--prompts-per-iteration", type=int, default=None)
@click.option("--resume", is_flag=True, help="Continue the run in --output-dir from its last completed stage.")
@click.option("--force", is_flag=True, help="Replace what --output-dir holds.")
@click.argument("overrides", nargs=-1)
def run(config_file, model, prompts, output_dir, iterations, prompts_per_iteration, resume, force, overrides):
    """Meta-Rewarding: act, judge, meta-judge and train, for several iterations.

    OVERRIDES are key=value settings, e.g. actor.n=4 dpo.lr=5e-7 judge.score_mode=expected, or per
    iteration: train_on=[[actor,judge],[actor]]."""
    from .run import run as run_job

    options = dict(model=model, prompts=prompts, output_dir=output_dir, iterations=iterations,
                   prompts_per_iteration=prompts_per_iteration)
    path = run_job(config_file=config_file, options=options, overrides=list(overrides), resume=resume, force=force)
    if os.environ.get("RANK", "0") == "0":
        click.echo(f"done: {path}", err=True)


@cli.group("eval")
def eval_group():
    """Evaluate: win rates, judge agreement, answer files for AlpacaEval / Arena-Hard / MT-Bench."""


@eval_group.command("winrate")
@click.option("--model", required=True, help="Model directory (or tiny-random).")
@click.option("--baseline", required=True, help="A second model directory, or a file of reference answers.")
@click.option("--judge", required=True, help="The judge's model directory.")
@click.option("--prompts", required=True, help="AlpacaEval / Arena-Hard / MT-Bench questions or a prompts JSONL.")
@click.option("--output", required=True, type=click.Path(file_okay=False))
@click.option("--max-tokens", default=512, type=click.IntRange(min=1))
@click.option("--temperature", default=0.0, type=click.FloatRange(min=0), help="Answer sampling (0: greedy).")
@click.option("--verdict-mode", type=click.Choice(["parse", "expected"]), default="parse",
              help="parse: the judge's 'Winner: A|B|tie' line; expected: P(A) vs P(B) from the logits.")
@click.option("--judge-max-tokens", default=512, type=click.IntRange(min=1))
@click.option("--template", type=click.Path(dir_okay=False), default=None, help="A pairwise judge prompt file.")
@click.option("--bootstrap", default=1000, type=click.IntRange(min=0),
              help="Bootstrap resamples for the 95% intervals (0: none).")
@click.option("--seed", default=0)
@dtype_option
@device_option
def eval_winrate(model, baseline, judge, prompts, output, max_tokens, temperature, verdict_mode, judge_max_tokens,
                 template, bootstrap, seed, dtype, device):
    """Head-to-head win rate (both orders), position consistency and length-controlled win rate."""
    from .eval.commands import markdown, winrate

    rep = winrate(model=model, baseline=baseline, judge=judge, prompts=prompts, output=output, max_tokens=max_tokens,
                  temperature=temperature, verdict_mode=verdict_mode, judge_max_tokens=judge_max_tokens,
                  template=template, dtype=dtype, device=device, n_boot=bootstrap, seed=seed)
    click.echo(markdown(rep, f"{model} vs {baseline}"))


@eval_group.command("judge")
@click.option("--model", required=True, help="The judge's model directory (or tiny-random).")
@click.option("--data", required=True, help="Human-labelled pairs.")
@click.option("--format", "fmt", type=click.Choice(["llmbar", "pandalm", "pairs"]), required=True)
@click.option("--output", type=click.Path(file_okay=False), default=None)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use the first N rows.")
@click.option("--mode", type=click.Choice(["parse", "expected"]), default="parse")
@click.option("--max-tokens", default=512, type=click.IntRange(min=1))
@click.option("--seed", default=0, help="Order of the answers of `pairs` rows (a seeded coin).")
@dtype_option
@device_option
def eval_judge(model, data, fmt, output, limit, mode, max_tokens, seed, dtype, device):
    """Agreement of a model's judgments with human labels (pointwise and pairwise prompts)."""
    from .eval.commands import judge_agreement

    click.echo(json.dumps(judge_agreement(model=model, data=data, fmt=fmt, output=output, limit=limit, mode=mode,
                                          max_tokens=max_tokens, seed=seed, dtype=dtype, device=device), indent=2))


@eval_group.command("export")
@click.option("--model", default=None, help="Model directory (or tiny-random).")
@click.option("--run", "run_dir", default=None, help="A run directory; with --iteration, its checkpoint.")
@click.option("--iteration", type=click.IntRange(min=1), default=None)
@click.option("--prompts", required=True, help="The benchmark's own question file.")
@click.option("--format", "fmt", type=click.Choice(["alpaca_eval", "arena_hard", "mt_bench"]), required=True)
@click.option("--output", required=True, type=click.Path(dir_okay=False))
@click.option("--max-tokens", default=2048, type=click.IntRange(min=1))
@click.option("--model-id", default=None, help="The name the answers carry [default: from the path].")
@dtype_option
@device_option
def eval_export(model, run_dir, iteration, prompts, fmt, output, max_tokens, model_id, dtype, device):
    """Greedy answers in the exact format AlpacaEval / Arena-Hard / MT-Bench read."""
    from .eval.commands import export

    path = export(prompts=prompts, fmt=fmt, output=output, model=model, run=run_dir, iteration=iteration,
                  max_tokens=max_tokens, model_id=model_id, dtype=dtype, device=device)
    click.echo(f"wrote {path}", err=True)


@eval_group.command("ifeval")
@click.option("--model", default=None, help="Model directory, a .gguf file, or tiny-random (answers greedily).")
@click.option("--responses", default=None, type=click.Path(dir_okay=False),
              help="Score this JSONL of {key|prompt, response} rows instead of generating.")
@click.option("--output", required=True, type=click.Path(file_okay=False))
@click.option("--data", default=None, type=click.Path(dir_okay=False),
              help="IFEval input_data.jsonl [default: ../shared/data/ifeval_input_data.jsonl beside the clone].")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Use the first N prompts.")
@click.option("--max-tokens", default=512, type=click.IntRange(min=1))
@click.option("--bootstrap", default=1000, type=click.IntRange(min=0), help="Resamples for the 95% intervals.")
@click.option("--seed", default=0)
@dtype_option
@device_option
def eval_ifeval(model, responses, output, data, limit, max_tokens, bootstrap, seed, dtype, device):
    """IFEval: verifiable instructions, strict and loose accuracy per prompt and per instruction."""
    from .eval.ifeval import ifeval, table

    scores = ifeval(model=model, output=output, data=data, limit=limit, max_tokens=max_tokens, responses=responses,
                    bootstrap_resamples=bootstrap, seed=seed, dtype=dtype, device=device)
    click.echo(table(scores))


@cli.command("import-gguf")
@click.argument("gguf_file", type=click.Path(dir_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]), default="bfloat16")
@click.option("--force", is_flag=True, help="Replace a non-empty OUT_DIR.")
def import_gguf_cmd(gguf_file, out_dir, dtype, force):
    """Dequantize a GGUF file into a model directory (safetensors, tokenizer, chat template)."""
    from .model.gguf import import_gguf

    click.echo(f"wrote {import_gguf(gguf_file=gguf_file, output=out_dir, dtype=dtype, force=force)}", err=True)


@cli.command()
@click.argument("run_dir", type=click.Path())
def report(run_dir):
    """Draw a run: RUN_DIR/report.html with PNG plots per iteration, and its table as RUN_DIR/report.md."""
    from .recipe.report import report as draw

    page = draw(run_dir)
    click.echo(f"wrote {page} and {page.with_suffix('.md')}", err=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or os.environ.get("METAREWARD_DEBUG") == "1"
    if not debug:  # our own messages say what went wrong; transformers' advice would only add noise
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        cli.main(args=argv, prog_name="metareward", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("error: aborted", err=True)
        return 130
    except (click.ClickException, UserError) as e:
        if debug:
            raise
        msg = e.format_message() if isinstance(e, click.ClickException) else str(e)
        click.echo(f"error: {' '.join(msg.split())}", err=True)
        return getattr(e, "exit_code", 2) if isinstance(e, UserError) else 2
    return 0


def entry() -> None:
    sys.exit(main())
