"""Settings of the generation engine (`engine.*` in a run's config); fixed for a whole run."""
from __future__ import annotations

from pydantic import Field

from ..settings import Settings


class EngineConfig(Settings):
    block_size: int = Field(16, ge=1, le=4096, description="tokens per KV-cache block")
    max_num_seqs: int = Field(256, ge=1, le=65536, description="sequences decoded together")
    max_num_batched_tokens: int | None = Field(None, ge=1, description="prefill tokens per step "
                                               "[default: 8192 on CUDA, 2048 on CPU]")
    kv_cache_memory: float | None = Field(None, gt=0, description="KV cache: CUDA, a fraction of free memory "
                                          "(default 0.85); CPU, bytes (default 1 GiB)")
    max_model_len: int | None = Field(None, ge=2, description="context length [default: the model's]")
    cuda_graphs: bool | None = Field(None, description="decode with CUDA graphs [default: on CUDA]")
