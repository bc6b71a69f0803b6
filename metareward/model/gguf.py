"""GGUF files in. transformers' own GGUF loader (load_gguf_checkpoint, which reads the file with the `gguf`
package and dequantizes every tensor in numpy) gives the config, the tokenizer and float32 tensors under
Hugging Face names; they go straight into our CausalLM and out through save_model, so an imported model is a
plain directory that load_model, the trainer, transformers and vLLM read. Optional: pip install 'metareward[gguf]'.

transformers' AutoModelForCausalLM.from_pretrained(gguf_file=...) is not used: it needs `accelerate`, its
model refuses save_pretrained ("quantized with gguf, not serializable"), and for Llama it calls the same
load_gguf_checkpoint underneath, so the tensors here are exactly the ones its model holds.

A `.gguf` path given to load_model is imported once into a cache directory keyed by the file's sha256 and
the dtype (cached_import): an import parses the file twice (metadata, then tensors; 15-30 s each for the
98 MB SmolLM2 file on a busy 2-core machine, most of it GGUFReader walking 49k vocabulary strings in Python)
where reading the imported safetensors takes about a second, and a run loads its model more than once."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch

from ..errors import UserError
from .checkpoint import parse_dtype
from .config import ModelConfig
from .decoder import CausalLM

MAGIC = b"GGUF"
INSTALL = "pip install 'metareward[gguf]'"
SOURCE_FILE = "gguf_source.json"  # written beside the weights: which file, which hash, which dtype


def import_gguf(*, gguf_file, output, dtype="bfloat16", force: bool = False) -> Path:
    """Dequantize a GGUF file into an HF model directory (safetensors, tokenizer with its chat template,
    generation config). The directory appears complete or not at all."""
    src = check_file(gguf_file)
    out = Path(os.fspath(output)).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise UserError(f"output {out} exists and is not an empty directory (--force replaces it)")
    want = parse_dtype(dtype)
    model, tok = read_gguf(src, dtype=want)
    return _save(model, tok, out, src, sha256(src), want)


def cached_import(path, *, dtype: torch.dtype) -> Path:
    """The imported directory of a GGUF file, made on first use under cache_root()/gguf/<sha256>-<dtype>."""
    src = check_file(path)
    digest = sha256(src)
    out = cache_root() / "gguf" / f"{digest[:20]}-{str(dtype).removeprefix('torch.')}"
    if (out / "config.json").is_file():  # directories are renamed into place complete
        return out
    model, tok = read_gguf(src, dtype=dtype)
    tmp = out.parent / f".{out.name}.{os.getpid()}"
    _save(model, tok, tmp, src, digest, dtype)
    try:
        os.rename(tmp, out)
    except OSError:  # another process imported the same file first; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def cache_root() -> Path:
    env = os.environ.get("METAREWARD_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "metareward"


def check_file(path) -> Path:
    p = Path(os.fspath(path)).expanduser()
    if not p.is_file():
        raise UserError(f"GGUF file not found: {path}")
    with open(p, "rb") as f:
        head = f.read(4)
    if head != MAGIC:
        raise UserError(f"{path} is not a GGUF file (it starts with {head!r}, not {MAGIC!r})")
    return p


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_gguf(path: Path, *, dtype: torch.dtype = torch.float32, device="cpu") -> tuple[CausalLM, object]:
    """(CausalLM, tokenizer) from a GGUF file, dequantized by transformers."""
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"reading GGUF files needs the `gguf` package: {INSTALL}")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    meta = _parse(path, lambda: load_gguf_checkpoint(str(path), return_tensors=False))
    try:
        hf_config = AutoConfig.for_model(**meta["config"])
    except (KeyError, ValueError) as e:
        raise UserError(f"unsupported GGUF architecture in {path}: {e}") from None
    with torch.device("meta"):  # only its parameter names: transformers maps GGUF tensor names onto them
        skeleton = AutoModelForCausalLM.from_config(hf_config)
    hf = {**hf_config.to_dict(), "architectures": [type(skeleton).__name__]}
    hf.pop("_name_or_path", None)
    cfg = ModelConfig.from_hf(hf)  # a UserError for an architecture the decoder does not implement
    tensors = _parse(path, lambda: load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=skeleton,
                                                        torch_dtype=torch.float32)["tensors"])
    tok = _parse(path, lambda: AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name,
                                                             local_files_only=True))
    return _model(cfg, tensors, dtype, torch.device(device)), tok


def _parse(path: Path, read):
    try:
        return read()
    except UserError:
        raise
    except Exception as e:  # gguf/numpy/transformers raise many types for a truncated or foreign file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "is not supported" in msg:
            raise UserError(f"unsupported GGUF architecture in {path}: {msg}") from None
        raise UserError(f"cannot read GGUF file {path} (truncated or damaged?): {type(e).__name__}: {msg}") from None


def _model(cfg: ModelConfig, tensors: dict[str, torch.Tensor], dtype: torch.dtype, device) -> CausalLM:
    with torch.device("meta"):
        model = CausalLM(cfg)
    expected = {k for k in model.state_dict() if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
    state = {k: t for k, t in tensors.items() if k in expected}
    missing = sorted(expected - state.keys())
    if missing:
        raise UserError(f"the GGUF file lacks {len(missing)} tensors of a {cfg.model_type} model, e.g. {missing[0]}")
    for name, t in state.items():
        want = model.get_parameter(name).shape
        if t.shape != want:
            raise UserError(f"GGUF tensor {name} has shape {tuple(t.shape)}, the config says {tuple(want)}")
    model.load_state_dict({k: t.to(device, dtype) for k, t in state.items()}, strict=False, assign=True)
    model.tie_weights()
    return model


def _save(model, tok, out: Path, src: Path, digest: str, dtype: torch.dtype) -> Path:
    from . import save_model

    source = {"gguf": src.name, "sha256": digest, "dtype": str(dtype).removeprefix("torch.")}
    return save_model(model, tok, out, dtype=dtype, extra_files={SOURCE_FILE: json.dumps(source, indent=2) + "\n"})
