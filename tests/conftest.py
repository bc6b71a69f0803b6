import os
from pathlib import Path

import pytest
import torch

# Kernel tests run the Triton code on CPU tensors through the interpreter; the variable must be set before
# any @triton.jit function is defined, i.e. before metareward.kernels modules are imported anywhere.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA
