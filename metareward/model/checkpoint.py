"""Hugging Face checkpoint directories in and out: config.json, (sharded) safetensors, generation_config.json,
tokenizer files. Only safetensors are ever read: pickle files can run code when loaded."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import UserError
from ..io import publish_mode
from .config import ModelConfig
from .decoder import CausalLM

INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r} (choose from {', '.join(sorted(DTYPES))})")
    return DTYPES[dtype]


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def weight_files(path: Path) -> list[Path]:
    if (path / INDEX).is_file():
        index = read_json(path / INDEX)
        wm = index.get("weight_map") if isinstance(index, dict) else None
        files = sorted(set(wm.values())) if isinstance(wm, dict) else []
        if any(not isinstance(f, str) or not f.endswith(".safetensors") for f in files):
            raise UserError(f"{path / INDEX} names non-safetensors weight files ({', '.join(map(str, files[:3]))}); "
                            "only .safetensors are read (a pickle can run code when loaded)")
        missing = [f for f in files if not (path / f).is_file()]
        if not files or missing:
            raise UserError(f"{path / INDEX} lists missing shards: {', '.join(missing) or '(none listed)'}")
        return [path / f for f in files]
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    found = sorted(path.glob("*.safetensors"))
    if found:
        return found
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UserError(f"{path} has only pickle weights ({', '.join(pickles[:3])}): they are refused because "
                        "loading a pickle can run arbitrary code; convert them once with "
                        "transformers (AutoModelForCausalLM.from_pretrained(d).save_pretrained(d, "
                        "safe_serialization=True)) in an environment you trust")
    raise UserError(f"no .safetensors weights in {path}")


def check_safetensors(f: Path) -> None:
    """The file's header is read and checked against its size before any tensor is: a truncated download, a
    pickle renamed .safetensors, or an empty file is an error naming the file, not a Rust panic."""
    try:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 2 <= n <= min(size - 8, 100 << 20):
                raise UserError(f"{f} is not a safetensors file ({size} bytes; its header length field reads {n})")
            header = json.loads(fh.read(n))
    except OSError as e:
        raise UserError(f"cannot read {f}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{f} is not a safetensors file (its header is not JSON)") from None
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)
            and isinstance(t.get("data_offsets"), list) and len(t["data_offsets"]) == 2]
    if not isinstance(header, dict) or len(ends) != len([k for k in header if k != "__metadata__"]):
        raise UserError(f"{f} is not a safetensors file (malformed header)")
    if 8 + n + max(ends, default=0) > size:
        raise UserError(f"{f} is truncated: its header describes {8 + n + max(ends)} bytes, the file has {size}")


def inspect(path: Path) -> ModelConfig:
    """Everything about a model directory that can be checked without loading its weights: config.json,
    the weight files and their headers. The run does this before it touches its output directory."""
    cfg = load_config(path)
    for f in weight_files(path):
        check_safetensors(f)
    return cfg


def load_config(path: Path) -> ModelConfig:
    if not (path / "config.json").is_file():
        raise UserError(f"no config.json in model directory {path}")
    gen = read_json(path / "generation_config.json") if (path / "generation_config.json").is_file() else {}
    cfg = ModelConfig.from_hf(read_json(path / "config.json"), gen)
    object.__setattr__(cfg, "hf", {**cfg.hf, "_generation_config": gen})
    return cfg


def load_weights(path: Path, cfg: ModelConfig, dtype: torch.dtype, device: torch.device) -> CausalLM:
    # Build on the meta device (no memory), then assign the loaded tensors: one allocation per weight.
    with torch.device("meta"):
        model = CausalLM(cfg)
    expected = {k for k in model.state_dict() if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
    state = {}
    dev = str(device) if device.type != "cuda" or device.index is not None else "cuda:0"
    files = weight_files(path)
    for f in files:
        check_safetensors(f)
    for f in files:
        try:
            with safe_open(str(f), framework="pt", device=dev) as sf:
                for name in sf.keys():
                    if name in expected:
                        state[name] = sf.get_tensor(name).to(dtype)
                    elif not (name == "lm_head.weight" or name.endswith("rotary_emb.inv_freq")):
                        raise UserError(f"unexpected tensor {name!r} in {f.name}: not a {cfg.model_type} "
                                        "checkpoint this model understands")
        except (SafetensorError, OSError) as e:
            raise UserError(f"cannot read {f}: {' '.join(str(e).split())}") from None
    missing = sorted(expected - state.keys())
    if missing:
        raise UserError(f"checkpoint {path} is missing {len(missing)} tensors, e.g. {missing[0]}")
    for name, t in state.items():
        want = model.get_parameter(name).shape
        if t.shape != want:
            raise UserError(f"tensor {name} has shape {tuple(t.shape)} in the checkpoint, config says {tuple(want)}")
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    return model


def state_for_save(model: CausalLM, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in model.state_dict().items():
        if model.config.tie_word_embeddings and name == "lm_head.weight":
            continue
        if hasattr(t, "full_tensor"):  # an FSDP2-sharded DTensor: every rank must take part
            t = t.full_tensor()
        out[name] = t.detach().to("cpu", dtype or t.dtype).contiguous()
    return out


def _shards(state: dict[str, torch.Tensor], max_shard_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards, cur, size = [], {}, 0
    for name, t in state.items():
        n = t.numel() * t.element_size()
        if cur and size + n > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[name] = t
        size += n
    return shards + [cur] if cur else shards


def write_checkpoint(state: dict[str, torch.Tensor], cfg: ModelConfig, tokenizer, path: str | os.PathLike,
                     max_shard_bytes: int = 5 * 2**30, overwrite: bool = True,
                     extra_files: dict[str, str] | None = None) -> Path:
    """Write a complete HF model directory under a temporary name, then rename it into place."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output exists and is not a directory: {path}")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise UserError(f"output directory {path} is not empty")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as e:
        raise UserError(f"cannot write the checkpoint {path}: {e.strerror or e}") from None
    try:
        shards = _shards(state, max_shard_bytes)
        meta = {"format": "pt"}
        if len(shards) == 1:
            save_file(shards[0], str(tmp / "model.safetensors"), metadata=meta)
        else:
            weight_map = {}
            for i, shard in enumerate(shards):
                fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / fname), metadata=meta)
                weight_map.update(dict.fromkeys(shard, fname))
            total = sum(t.numel() * t.element_size() for t in state.values())
            (tmp / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                indent=2))
        hf = {k: v for k, v in cfg.hf.items() if k != "_generation_config"}
        dtype = str(next(iter(state.values())).dtype).removeprefix("torch.")
        hf.update(torch_dtype=dtype, dtype=dtype)
        (tmp / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True))
        gen = cfg.hf.get("_generation_config") or {}
        if not gen and cfg.eos_token_ids:
            gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": list(cfg.eos_token_ids)}
        if gen:
            (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        for f in tmp.iterdir():
            publish_mode(f)
        publish_mode(tmp, directory=True)
        if path.exists():
            shutil.rmtree(path)
        os.rename(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) or isinstance(e, SafetensorError):  # a full or read-only disk
            raise UserError(f"cannot write the checkpoint {path}: {getattr(e, 'strerror', None) or e}") from None
        raise
    return path
