import os

import pytest
import torch

# Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when metareward.kernels.* is imported; pytest
# imports this conftest before the test modules, so setting it here lets CPU-only machines run the Triton code.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from metareward.kernels.dispatch import HAS_TRITON  # noqa: E402  (after the environment is set)


@pytest.fixture(params=["triton", "torch"])
def kernel_mode(request, monkeypatch):
    """Runs a test once through the Triton kernel and once through the torch reference."""
    if request.param == "triton" and not HAS_TRITON:
        pytest.skip("triton is not installed")
    monkeypatch.setenv("METAREWARD_KERNELS", request.param)
    return request.param
