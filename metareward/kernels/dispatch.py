"""Which implementation runs: METAREWARD_KERNELS=auto|triton|torch.
auto: Triton for CUDA tensors, the torch reference for CPU tensors. triton: always Triton (on CPU this
needs TRITON_INTERPRET=1 set before triton is imported; it is how the tests run the Triton code)."""
from __future__ import annotations

import os

import torch

try:
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401
    HAS_TRITON = True
except ImportError:  # macOS / Windows laptops: torch references only
    triton = tl = None
    HAS_TRITON = False

MODES = ("auto", "triton", "torch")


def mode() -> str:
    m = os.environ.get("METAREWARD_KERNELS", "auto").lower()
    if m not in MODES:
        raise ValueError(f"METAREWARD_KERNELS={m!r}: choose one of {', '.join(MODES)}")
    return m


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(t: torch.Tensor) -> bool:
    m = mode()
    if m == "torch":
        return False
    if m == "triton":
        if not HAS_TRITON:
            raise RuntimeError("METAREWARD_KERNELS=triton but triton is not installed")
        if not t.is_cuda and not interpreting():
            raise RuntimeError("METAREWARD_KERNELS=triton on CPU tensors needs TRITON_INTERPRET=1")
        return True
    return HAS_TRITON and t.is_cuda
