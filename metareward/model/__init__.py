from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import UserError
from .checkpoint import default_dtype, load_config, load_weights, parse_dtype, state_for_save, write_checkpoint
from .config import ModelConfig
from .decoder import CausalLM
from .tiny import NAME as TINY
from .tiny import tiny_random
from .tokenizer import load_tokenizer

__all__ = ["CausalLM", "ModelConfig", "inspect_model", "load_model", "save_model", "resolve_device"]


def resolve_device(device=None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r}") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device} requested but CUDA is not available")
    return d


def inspect_model(path, chat_template=None):
    """(ModelConfig, tokenizer) of a model, its weight files checked but not loaded: what a run verifies
    before it creates its output directory."""
    if str(path) == TINY:
        from .tokenizer import tiny_tokenizer
        from .tiny import tiny_config
        tok = tiny_tokenizer()
        cfg = tiny_config(len(tok), tok.bos_token_id, tok.eos_token_id)
    elif str(path).endswith(".gguf"):
        model, tok = load_model(path, device="cpu")  # imported once, then read from the import cache
        cfg = model.config
    else:
        from .checkpoint import inspect
        p = Path(os.fspath(path)).expanduser()
        if not p.is_dir():
            raise UserError(f"model directory not found: {path}")
        cfg, tok = inspect(p), load_tokenizer(p)
    if chat_template is not None:
        from .tokenizer import set_chat_template
        set_chat_template(tok, chat_template)
    return cfg, tok


def load_model(path, dtype=None, device=None, chat_template=None, max_model_len: int | None = None):
    """Load a local HF model directory, a .gguf file or `tiny-random` -> (model, tokenizer). Never reaches the
    network."""
    device = resolve_device(device)
    dtype = parse_dtype(dtype) or default_dtype(device)
    if str(path).endswith(".gguf"):  # imported once into a cache keyed by the file's hash (model/gguf.py)
        from .gguf import cached_import
        path = cached_import(path, dtype=dtype)
    if str(path) == TINY:
        model, tok = tiny_random(dtype, device)
    else:
        p = Path(os.fspath(path)).expanduser()
        if not p.is_dir():
            raise UserError(f"model directory not found: {path}")
        cfg = load_config(p)
        cfg.check_context(max_model_len or cfg.max_position_embeddings)
        tok = load_tokenizer(p)
        model = load_weights(p, cfg, dtype, device)
    if chat_template is not None:
        from .tokenizer import set_chat_template
        set_chat_template(tok, chat_template)
    return model, tok


def save_model(model: CausalLM, tokenizer, path, dtype=None, max_shard_size: int = 5 * 2**30,
               extra_files: dict[str, str] | None = None):
    """Save as an HF directory (sharded above max_shard_size bytes) that transformers and vLLM load.
    The directory appears complete or not at all (written under a temporary name, then renamed)."""
    state = state_for_save(model, parse_dtype(dtype))
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
        return None  # rank 0 writes; the other ranks only took part in gathering the shards
    return write_checkpoint(state, model.config, tokenizer, path, max_shard_size, extra_files=extra_files)
