"""The base of every settings section (engine, dpo, actor, judge, ...). Each section is defined once, beside
the code it configures, as a pydantic model: its fields carry the defaults, the domains (finite, positive,
one of a few names) and the one-line help the CLI shows; nothing else repeats them."""
from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import UserError


class Settings(BaseModel):
    # strict: a YAML `true` is not an integer 1 and "3" is not a number; finite: .inf and .nan are refused;
    # forbid: a misspelt key is an error, not a silently ignored value
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, validate_default=True,
                              frozen=True)
    # may a config file give this section's values per iteration (as lists)? The engine, the model and the
    # evaluation are set up once per run; sampling, pair building and DPO may change between iterations.
    per_iteration: ClassVar[bool] = False


def first_error(e: ValidationError, prefix: str = "", option: bool = False) -> str:
    """pydantic's first complaint as one line: `config key dpo.lr: input should be greater than 0 (got -1.0)`
    (or `option --lr: ...` for a command's options)."""
    err = e.errors()[0]
    key = (prefix + ".".join(str(x) for x in err["loc"])).rstrip(".")
    if option:
        return f"option --{key.replace('_', '-')}: " + _message(err)
    return f"config key {key}: " + _message(err)


def _message(err: dict) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    got = f" (got {err['input']!r})" if err["type"] not in ("missing", "extra_forbidden", "value_error") else ""
    return msg[0].lower() + msg[1:] + got


def build(cls: type[Settings], values: dict, prefix: str = "", option: bool = False):
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        raise UserError(first_error(e, prefix, option)) from None
