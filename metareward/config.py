"""Settings as dataclasses, validated in __post_init__; YAML in and out."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from .errors import UserError
from .trainer.losses import LOSSES
from .trainer.schedule import DECAYS


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


@dataclass
class DPOConfig:
    loss: str = "sigmoid"  # sigmoid | ipo
    beta: float = 0.1
    label_smoothing: float = 0.0
    alpha: float = 0.0  # weight of the chosen response's NLL (RPO)
    lr: float = 1e-6
    epochs: int = 1
    batch_size: int = 16  # pairs per optimizer step, over all processes
    micro_batch_tokens: int = 8192  # tokens per forward/backward pass on one process
    max_length: int = 2048  # prompt + response tokens; longer pairs are truncated
    warmup_ratio: float = 0.1
    schedule: str = "cosine"  # cosine | linear | constant
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0: no clipping
    adam_betas: tuple[float, float] = (0.9, 0.999)
    seed: int = 0
    gradient_checkpointing: bool = False
    master_weights: bool = True  # float32 master weights when the model is in bf16/fp16; False: pure bf16

    def __post_init__(self):
        self.adam_betas = tuple(self.adam_betas)
        _check(self.loss in LOSSES, f"unknown loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        _check(self.schedule in DECAYS, f"unknown schedule {self.schedule!r}: choose one of {', '.join(DECAYS)}")
        _check(self.beta > 0, f"beta must be > 0, got {self.beta}")
        _check(0 <= self.label_smoothing <= 0.5, f"label_smoothing must be in [0, 0.5], got {self.label_smoothing}")
        _check(self.alpha >= 0, f"alpha must be >= 0, got {self.alpha}")
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        for name in ("epochs", "batch_size", "micro_batch_tokens", "max_length"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1,
                   f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        _check(0 <= self.warmup_ratio <= 1, f"warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        _check(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _check(self.weight_decay >= 0 and self.max_grad_norm >= 0, "weight_decay and max_grad_norm must be >= 0")
        _check(len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas), "adam_betas: two values in [0, 1)")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass
class ActorConfig:
    n: int = 7  # K responses per prompt
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 1024

    def __post_init__(self):
        _sampling(self, "actor")


@dataclass
class JudgeConfig:
    n: int = 5  # N judgments per response
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 1024
    score_mode: str = "parse"  # parse: the last "Score: x" | expected: E[score] from the logits after "Score: "
    template: str | None = None  # a file replacing recipe/templates/judge.txt

    def __post_init__(self):
        _sampling(self, "judge")
        _check(self.score_mode in ("parse", "expected"), f"judge.score_mode must be parse or expected, "
                                                          f"got {self.score_mode!r}")


@dataclass
class MetaJudgeConfig:
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 1024
    winner_mode: str = "parse"  # parse: the last "Winner: Judgment A|B" | expected: P(A) vs P(B)
    template: str | None = None  # a file replacing recipe/templates/meta_judge.txt

    def __post_init__(self):
        _sampling(self, "meta_judge")
        _check(self.winner_mode in ("parse", "expected"), f"meta_judge.winner_mode must be parse or expected, "
                                                            f"got {self.winner_mode!r}")


@dataclass
class PairsConfig:
    rho: float = 0.0  # length control: 0 off; top tier >= (1-rho)·S_max + rho·S_min, chosen = its shortest
    drop_same_score: bool = True  # drop a judge pair whose two judgments give the same score
    max_judgment_chars: int | None = None  # drop a judge pair whose chosen judgment is longer
    elo_l2: float = 1e-3  # L2 on the Elo ratings: finite ratings when a judgment wins every battle

    def __post_init__(self):
        _check(0 <= self.rho <= 1, f"pairs.rho must be in [0, 1], got {self.rho}")
        _check(self.max_judgment_chars is None or self.max_judgment_chars >= 1,
               "pairs.max_judgment_chars must be >= 1 or null")
        _check(self.elo_l2 > 0, f"pairs.elo_l2 must be > 0, got {self.elo_l2}")


@dataclass
class EngineConfig:
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None  # default: 8192 on CUDA, 2048 on CPU
    kv_cache_memory: float | None = None  # CUDA: fraction of free memory (0.85); CPU: bytes (1 GiB)
    max_model_len: int | None = None  # default: the model's max_position_embeddings
    cuda_graphs: bool | None = None  # default: on CUDA

    def __post_init__(self):
        _check(self.block_size >= 1 and self.max_num_seqs >= 1, "engine.block_size and max_num_seqs must be >= 1")


def _sampling(c, role: str) -> None:
    _check(getattr(c, "n", 1) >= 1, f"{role}.n must be >= 1")
    _check(c.temperature >= 0, f"{role}.temperature must be >= 0, got {c.temperature}")
    _check(0 < c.top_p <= 1, f"{role}.top_p must be in (0, 1], got {c.top_p}")
    _check(c.max_tokens >= 1, f"{role}.max_tokens must be >= 1")


@dataclass
class EvalConfig:
    """Optional per-iteration evaluation: win rate of the trained model against the model it started from
    (or the initial one) on held-out prompts, both orders, judged by a judge model."""
    prompts: str | None = None  # held-out prompts (any format `metareward eval` reads); None: no evaluation
    num_prompts: int = 256  # the first N of them
    baseline: str = "previous"  # previous: M_t vs M_(t-1); initial: M_t vs M_0
    judge: str = "initial"  # initial: M_0 (loaded again from `model` while it judges), or a model directory
    max_tokens: int = 512  # answer length (greedy)
    judge_max_tokens: int = 512
    verdict_mode: str = "parse"  # parse: "Winner: A|B|tie"; expected: P(A) vs P(B) from the logits

    def __post_init__(self):
        _check(self.baseline in ("previous", "initial"), f"eval.baseline must be previous or initial, "
                                                          f"got {self.baseline!r}")
        _check(self.verdict_mode in ("parse", "expected"), "eval.verdict_mode must be parse or expected")
        _check(self.num_prompts >= 1 and self.max_tokens >= 1 and self.judge_max_tokens >= 1,
               "eval.num_prompts, max_tokens and judge_max_tokens must be >= 1")


TRAIN_KINDS = ("actor", "judge")


@dataclass
class RunConfig:
    """One iteration's settings (config files may give any value as a per-iteration list: see resolve)."""
    model: str = "tiny-random"
    prompts: str = "examples/prompts.jsonl"
    output_dir: str = "runs/metareward"
    iterations: int = 4
    prompts_per_iteration: int = 5000
    seed: int = 0
    dtype: str | None = None
    device: str | None = None
    chat_template: str | None = None
    train_on: list = field(default_factory=lambda: ["actor", "judge"])  # pair kinds DPO trains on
    actor: ActorConfig = field(default_factory=ActorConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    meta_judge: MetaJudgeConfig = field(default_factory=MetaJudgeConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        _check(self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}")
        _check(self.prompts_per_iteration >= 1, "prompts_per_iteration must be >= 1")
        for kind in self.train_on:
            _check(kind in TRAIN_KINDS, f"train_on: unknown pair kind {kind!r} (choose from actor, judge)")
        _check(self.dtype in (None, "float32", "bfloat16", "float16"), f"unknown dtype {self.dtype!r}")


# -- raw configs: nested dicts whose leaves may be per-iteration lists --------------------------------------

# The paper's schedule: actor + judge pairs in iterations 1-2, actor pairs only afterwards.
PAPER_TRAIN_ON = [["actor", "judge"], ["actor", "judge"], ["actor"]]
_LIST_LEAVES = {"train_on", "dpo.adam_betas"}  # leaves whose single value is itself a list


def to_dict(obj) -> dict:
    out = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = to_dict(v) if hasattr(v, "__dataclass_fields__") else (list(v) if isinstance(v, tuple) else v)
    return out


def defaults() -> dict:
    d = to_dict(RunConfig())
    d["train_on"] = PAPER_TRAIN_ON
    return d


def _leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _is_per_iteration(key: str, v) -> bool:
    if key in _LIST_LEAVES:
        return isinstance(v, list) and bool(v) and all(isinstance(x, list) for x in v)
    return isinstance(v, list)


def resolve(raw: dict, t: int) -> dict:
    """Iteration t's values: a per-iteration list gives its t-th value (iterations past its end use its last
    value), any other value applies to every iteration."""
    def walk(d: dict, prefix: str) -> dict:
        out = {}
        for k, v in d.items():
            key = prefix + k
            if isinstance(v, dict):
                out[k] = walk(v, key + ".")
            elif _is_per_iteration(key, v):
                if not v:
                    raise UserError(f"config key {key}: an empty per-iteration list")
                out[k] = v[min(t, len(v) - 1)]
            else:
                out[k] = v
        return out
    return walk(raw, "")


def merge(raw: dict, updates: dict, where: str) -> dict:
    """raw updated by `updates` (nested), refusing unknown keys with a suggestion."""
    import difflib
    known = dict(_leaves(defaults()))
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for key, value in _leaves(updates) if isinstance(updates, dict) else ():
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            raise UserError(f"{where}: unknown config key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        *parents, leaf = key.split(".")
        d = out
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = value
    return out


def from_dict(d: dict) -> RunConfig:
    """A RunConfig from a resolved (scalar) dict; wrong types and out-of-range values give UserError."""
    import typing

    def build(cls, values: dict, prefix: str):
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in fields(cls):
            if f.name not in values:
                continue
            v, key, hint = values[f.name], prefix + f.name, hints[f.name]
            if hasattr(hint, "__dataclass_fields__"):
                if not isinstance(v, dict):
                    raise UserError(f"config key {key}: expected a mapping, got {v!r}")
                kwargs[f.name] = build(hint, v, key + ".")
            else:
                kwargs[f.name] = _coerce(v, hint, key)
        return cls(**kwargs)
    return build(RunConfig, d, "")


def _coerce(v, hint, key: str):
    import types
    import typing
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if v is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint) or hint
    if origin is float and isinstance(v, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
        try:
            v = float(v)
        except ValueError:
            pass
    ok = {
        bool: isinstance(v, bool),
        int: isinstance(v, int) and not isinstance(v, bool),
        float: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: isinstance(v, str),
        list: isinstance(v, list),
        tuple: isinstance(v, (list, tuple)),
    }.get(origin, True)
    if not ok:
        raise UserError(f"config key {key}: expected {getattr(origin, '__name__', origin)}, got {v!r}")
    return float(v) if origin is float else v


def validate(raw: dict) -> list[RunConfig]:
    """Every iteration's RunConfig (so a bad value in any iteration is reported before anything runs)."""
    first = from_dict(resolve(raw, 0))
    return [first] + [from_dict(resolve(raw, t)) for t in range(1, first.iterations)]


def parse_overrides(items: list[str]) -> dict:
    """key=value arguments (value in YAML: 0.5, true, [1e-6, 5e-7], null) -> a nested dict."""
    import yaml
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"expected key=value, got {item!r}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"{item}: the value is not valid YAML") from None
        d = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = parsed
    return out


def load_yaml(path) -> dict:
    import yaml
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise UserError(f"cannot read config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file must be a mapping of keys to values")
    return data


def dump_yaml(raw: dict) -> str:
    import yaml
    return yaml.safe_dump(raw, sort_keys=False, default_flow_style=None)
