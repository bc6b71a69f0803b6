"""A run's settings. Each section is defined once, beside the code it configures (engine/config.py,
trainer/config.py, recipe/config.py, eval/config.py); RunConfig puts them together. A *raw* config is the
nested dict a YAML file gives: any per-iteration value may be a list (iteration t uses its t-th item, the last
one past its end). It is built from, in order: the defaults, a config file (and the files it names as `base`),
the command's options, and key=value overrides; then every iteration's RunConfig is validated before anything
runs."""
from __future__ import annotations

import difflib
import functools
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field

from .engine.config import EngineConfig
from .errors import UserError
from .eval.config import EvalConfig
from .recipe.config import ActorConfig, JudgeConfig, MetaJudgeConfig, PairsConfig
from .settings import Settings, build
from .trainer.config import DPOConfig

DEFAULTS_DIR = Path(__file__).resolve().with_name("defaults")
EMBEDDED = DEFAULTS_DIR / "tiny-random.yaml"  # what `metareward run` runs without --config or --model
EXAMPLE_PROMPTS = DEFAULTS_DIR / "prompts.jsonl"
TINY = "tiny-random"
PAIR_KINDS = ("actor", "judge")
# The paper's schedule: actor + judge pairs in iterations 1-2, actor pairs only afterwards.
PAPER_TRAIN_ON = [["actor", "judge"], ["actor", "judge"], ["actor"]]


class RunConfig(Settings):
    model: str = Field(TINY, description="local HF model directory, a .gguf file, or tiny-random")
    prompts: str = Field(str(EXAMPLE_PROMPTS), description="JSONL prompts")
    output_dir: str = "runs/metareward"
    iterations: int = Field(4, ge=1, le=1000)
    prompts_per_iteration: int = Field(5000, ge=1)
    seed: int = Field(0, ge=0, lt=2**63)
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    device: str | None = None
    chat_template: str | None = None
    train_on: list[Literal["actor", "judge"]] = Field(["actor", "judge"], min_length=0)
    actor: ActorConfig = ActorConfig()
    judge: JudgeConfig = JudgeConfig()
    meta_judge: MetaJudgeConfig = MetaJudgeConfig()
    pairs: PairsConfig = PairsConfig()
    dpo: DPOConfig = DPOConfig()
    engine: EngineConfig = EngineConfig()
    eval: EvalConfig = EvalConfig()


# leaves whose single value is itself a list; keys whose value may change per iteration
_LIST_LEAVES = {"train_on", "dpo.adam_betas"}
# input files: relative paths in a config file are read relative to that file (output_dir: to the current
# directory, like --output-dir); `tiny-random` and `initial` are names, not paths
_PATH_KEYS = {"model", "prompts", "chat_template", "judge.template", "meta_judge.template", "eval.winrate.prompts",
              "eval.winrate.judge", "eval.winrate.template", "eval.ifeval.data", "eval.judge_agreement.data"}
_NAMES = {TINY, "initial"}


def _per_iteration_keys() -> set[str]:
    keys = {"train_on"}
    for name, f in RunConfig.model_fields.items():
        if isinstance(f.default, Settings) and f.default.per_iteration:
            keys |= {f"{name}.{k}" for k in type(f.default).model_fields}
    return keys


PER_ITERATION = _per_iteration_keys()


def leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _set(d: dict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[leaf] = value


def defaults() -> dict:
    d = RunConfig().model_dump(mode="json")
    d["train_on"] = PAPER_TRAIN_ON
    return d


KNOWN = dict(leaves(defaults()))


def is_per_iteration_list(key: str, v) -> bool:
    if key in _LIST_LEAVES:
        return isinstance(v, list) and bool(v) and all(isinstance(x, list) for x in v)
    return isinstance(v, list)


def merge(raw: dict, updates: dict, where: str) -> dict:
    """raw updated by the leaves of `updates`, refusing unknown keys (with the closest known one) and
    per-iteration lists where the value is fixed for the run."""
    out = {k: _copy(v) for k, v in raw.items()}
    for key, value in leaves(updates):
        if key not in KNOWN:
            parent = next((p for p in KNOWN if p.startswith(key + ".")), None)
            if parent is not None:
                raise UserError(f"{where}: config key {key!r} is a section: give its keys, e.g. {parent!r}")
            hint = difflib.get_close_matches(key, KNOWN, n=1)
            raise UserError(f"{where}: unknown config key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        if is_per_iteration_list(key, value) and key not in PER_ITERATION:
            raise UserError(f"{where}: config key {key} is fixed for the whole run; a per-iteration list "
                            f"({value!r}) is only accepted for {', '.join(sorted({k.split('.')[0] for k in PER_ITERATION}))}")
        _set(out, key, value)
    return out


def _copy(v):
    return {k: _copy(x) for k, x in v.items()} if isinstance(v, dict) else v


def resolve(raw: dict, t: int) -> dict:
    """Iteration t's values (t counts from 0)."""
    out: dict = {}
    for key, v in leaves(raw):
        if is_per_iteration_list(key, v):
            if not v:
                raise UserError(f"config key {key}: an empty per-iteration list")
            v = v[min(t, len(v) - 1)]
        _set(out, key, v)
    return out


def validate(raw: dict) -> list[RunConfig]:
    """Every iteration's RunConfig, so that a bad value in any iteration is reported before anything runs.
    Iterations past the longest per-iteration list repeat its last values (and the same object)."""
    first = build(RunConfig, resolve(raw, 0))
    distinct = max([len(v) for k, v in leaves(raw) if is_per_iteration_list(k, v)] + [1])
    configs = [first]
    for t in range(1, min(distinct, first.iterations)):
        try:
            configs.append(build(RunConfig, resolve(raw, t)))
        except UserError as e:
            raise UserError(f"iteration {t + 1}: {e}") from None
    return configs + [configs[-1]] * (first.iterations - len(configs))


# -- YAML in and out --------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _loader():
    """PyYAML's safe loader, but reading 1e-6 as a float (YAML 1.1 wants a dot: 1.0e-6)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
        r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))
    return Loader


def parse_yaml(text: str, where: str):
    import yaml
    try:
        return yaml.load(text, Loader=_loader())
    except yaml.YAMLError as e:
        raise UserError(f"{where}: not valid YAML ({' '.join(str(e).split())[:200]})") from None


def _resolve_paths(d: dict, base: Path) -> dict:
    out = _copy(d)
    for key, v in leaves(d):
        if key in _PATH_KEYS:
            _set(out, key, [_path(x, base) for x in v] if isinstance(v, list) else _path(v, base))
    return out


def _path(v, base: Path):
    if not isinstance(v, str) or v in _NAMES:
        return v
    p = Path(v).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def load_file(path: str | os.PathLike, _seen: tuple = ()) -> dict:
    """A config file's values (relative input paths made absolute against the file's folder), on top of the
    files it names in `base:` (a path or a list, relative to it; later ones win)."""
    path = Path(path)
    where = str(path)
    if path.resolve() in _seen:
        raise UserError(f"{where}: `base` files include each other")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config {path}: {getattr(e, 'strerror', None) or e}") from None
    data = parse_yaml(text, where)
    if data is None:
        raise UserError(f"{where}: the config file is empty (an empty file would silently run every default: "
                        "give at least `model` and `prompts`)")
    if not isinstance(data, dict):
        raise UserError(f"{where}: a config file must be a mapping of keys to values")
    bases = data.pop("base", [])
    out: dict = {}
    for b in bases if isinstance(bases, list) else [bases]:
        if not isinstance(b, str):
            raise UserError(f"{where}: `base` must be a file path or a list of them, got {b!r}")
        out = merge(out, load_file(path.parent / b, _seen + (path.resolve(),)), str(path.parent / b))
    return merge(out, _resolve_paths(data, path.resolve().parent), where)


def dump_yaml(raw: dict) -> str:
    import yaml
    return yaml.safe_dump(raw, sort_keys=False, default_flow_style=None, allow_unicode=True)


def parse_overrides(items: list[str]) -> dict:
    """key=value arguments (value in YAML: 0.5, true, [1e-6, 5e-7], null) -> a nested dict; relative paths
    are relative to the current directory."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
            raise UserError(f"expected key=value with a dotted key, got {item!r}")
        _set(out, key, parse_yaml(value, item))
    return out


# -- `metareward run`'s arguments to a raw config --------------------------------------------------------

def run_config(config_file: str | None, options: dict, overrides: list[str]) -> dict:
    """defaults <- the config file (or the embedded default when neither --config nor --model is given)
    <- the options <- the key=value overrides."""
    options = _resolve_paths({k: v for k, v in options.items() if v is not None}, Path.cwd())
    if config_file:
        raw = merge(defaults(), load_file(config_file), config_file)
    elif "model" not in options:
        raw = merge(defaults(), load_file(EMBEDDED), str(EMBEDDED))
    else:
        raw = defaults()
    raw = merge(raw, options, "options")
    return merge(raw, _resolve_paths(parse_overrides(overrides), Path.cwd()), "command line")


def resumed_config(saved_path: Path, config_file: str | None, options: dict, overrides: list[str]) -> dict:
    """The run's saved config. Settings given again must equal the saved ones; only `iterations` may change
    (a run can be extended); the run directory is the one given, wherever it has been moved."""
    saved = merge(defaults(), load_file(saved_path), str(saved_path))
    explicit = merge(load_file(config_file), {}, config_file) if config_file else {}
    options = _resolve_paths({k: v for k, v in options.items() if v is not None}, Path.cwd())
    explicit = merge(merge(explicit, options, "options"),
                     _resolve_paths(parse_overrides(overrides), Path.cwd()), "command line")
    known = dict(leaves(saved))
    changed = sorted(k for k, v in leaves(explicit) if k not in ("iterations", "output_dir") and known.get(k) != v)
    if changed:
        raise UserError(f"--resume continues with the run's saved config; only --iterations may change "
                        f"(these differ: {', '.join(changed)})")
    return merge(saved, {"iterations": explicit["iterations"]} if "iterations" in explicit else {}, "options")
