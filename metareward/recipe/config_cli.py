"""From `metareward run`'s arguments to a raw config: defaults <- config file <- options <- key=value."""
from __future__ import annotations

from pathlib import Path

from ..config import _leaves, defaults, load_yaml, merge, parse_overrides, validate
from ..errors import UserError

EMBEDDED = Path(__file__).resolve().parents[2] / "examples" / "tiny-random.yaml"


def build_config(config_file: str | None, options: dict, overrides: list[str], resume: bool) -> dict:
    options = {k: v for k, v in options.items() if v is not None}
    if resume:
        return _resumed(config_file, options, overrides)
    if config_file:
        raw = merge(defaults(), load_yaml(config_file), config_file)
    elif "model" not in options:
        raw = _embedded()
    else:
        raw = defaults()
    raw = merge(raw, options, "options")
    raw = merge(raw, parse_overrides(overrides), "command line")
    validate(raw)
    return raw


def _resumed(config_file: str | None, options: dict, overrides: list[str]) -> dict:
    """The run's saved config. Settings given again must equal the saved ones; only iterations may grow."""
    explicit = merge(load_yaml(config_file), {}, config_file) if config_file else {}
    explicit = merge(merge(explicit, options, "options"), parse_overrides(overrides), "command line")
    out = explicit.get("output_dir")
    if out is None:
        out = _embedded()["output_dir"]
    saved_path = Path(out) / "config.yaml"
    if not saved_path.is_file():
        raise UserError(f"nothing to resume in {out}: no config.yaml")
    saved = merge(defaults(), load_yaml(saved_path), str(saved_path))
    known = dict(_leaves(saved))
    changed = sorted(k for k, v in _leaves(explicit) if k not in ("iterations", "output_dir") and known.get(k) != v)
    if changed:
        raise UserError(f"--resume continues with the run's saved config; only --iterations may change "
                        f"(these differ: {', '.join(changed)})")
    raw = merge(saved, {k: explicit[k] for k in ("iterations",) if k in explicit}, "options")
    validate(raw)
    return raw


def _embedded() -> dict:
    if not EMBEDDED.is_file():
        raise UserError(f"the embedded default config {EMBEDDED} is missing: pass --config or --model")
    return merge(defaults(), load_yaml(EMBEDDED), str(EMBEDDED))
