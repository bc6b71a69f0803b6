"""One file per op: Triton kernel(s), launcher, autograd function, and a pure-torch reference with the same
signature. METAREWARD_KERNELS=auto|triton|torch picks the implementation (dispatch.py)."""
from .linear_logprobs import linear_logprobs, linear_logprobs_torch
from .paged_attention import paged_attention_decode, paged_attention_decode_torch, store_kv, store_kv_torch
from .sample import processed_probs, sample, sample_torch

__all__ = ["linear_logprobs", "linear_logprobs_torch", "paged_attention_decode", "paged_attention_decode_torch",
           "store_kv", "store_kv_torch", "sample", "sample_torch", "processed_probs"]
