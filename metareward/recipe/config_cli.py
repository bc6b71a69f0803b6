"""From `metareward run`'s arguments to a raw config: defaults <- config file <- options <- key=value."""
from __future__ import annotations

from pathlib import Path

from ..config import defaults, load_yaml, merge, parse_overrides, validate
from ..errors import UserError

EMBEDDED = Path(__file__).resolve().parents[2] / "examples" / "tiny-random.yaml"


def build_config(config_file: str | None, options: dict, overrides: list[str], resume: bool) -> dict:
    options = {k: v for k, v in options.items() if v is not None}
    if resume:
        out = options.pop("output_dir", None)
        if out is None:
            out = (merge(defaults(), load_yaml(config_file), config_file) if config_file
                   else _embedded())["output_dir"]
        saved = Path(out) / "config.yaml"
        if not saved.is_file():
            raise UserError(f"nothing to resume in {out}: no config.yaml")
        changes = set(options) | {o.partition("=")[0] for o in overrides}
        if changes - {"iterations"}:
            raise UserError(f"--resume continues with the run's saved config; only --iterations may change "
                            f"(got {', '.join(sorted(changes))})")
        raw = merge(defaults(), load_yaml(saved), str(saved))
        raw = merge(raw, options, "options")
        validate(raw)
        return raw
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


def _embedded() -> dict:
    if not EMBEDDED.is_file():
        raise UserError(f"the embedded default config {EMBEDDED} is missing: pass --config or --model")
    return merge(defaults(), load_yaml(EMBEDDED), str(EMBEDDED))
