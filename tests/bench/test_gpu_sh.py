# bench/gpu.sh on a machine that cannot run it must stop at once with one line saying why, and its plan must fit
# the budget in the right order. (On a GPU machine the script itself is the test.)
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu.sh"


def run(args, tmp_path, shims=None, **env):
    # python3 on PATH is this test's interpreter (its torch); shims: {module: source} put first on PYTHONPATH
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "python3"  # a wrapper, not a link: a virtual environment is found from the real path
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    path = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    if shims:
        shim_dir = tmp_path / "shims"
        for name, source in shims.items():
            (shim_dir / name).mkdir(parents=True)
            (shim_dir / name / "__init__.py").write_text(source)
        path["PYTHONPATH"] = str(shim_dir)
    clean = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH", "OUT")}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env={**clean, **path, **env})


def one_line(r) -> str:
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_no_cuda_stops_at_once_with_one_line(tmp_path):
    r = run([str(tmp_path / "out")], tmp_path)
    assert r.returncode == 2
    line = one_line(r)
    assert line.startswith("error: no CUDA device") and line.endswith("nothing was run")
    assert (tmp_path / "out" / "log.txt").read_text().strip() == line  # written where the results would go
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["log.txt"]


def test_torch_not_importable_is_one_line(tmp_path):
    r = run([str(tmp_path / "out")], tmp_path, shims={"torch": "raise ImportError('simulated: no torch here')"})
    assert r.returncode == 2
    assert re.fullmatch(r"error: python3 \(.*\) cannot import torch \(ImportError: simulated: no torch here\); "
                        r"nothing was run", one_line(r))


@pytest.mark.skipif(torch.cuda.is_available(), reason="ALLOW_CPU is for machines without a GPU")
def test_a_missing_dependency_is_named_in_one_line(tmp_path):
    # the preflight imports what the steps import (metareward reads checkpoints with safetensors)
    shim = "raise ModuleNotFoundError(\"No module named 'safetensors'\", name='safetensors')"
    r = run([str(tmp_path / "out")], tmp_path, shims={"safetensors": shim}, ALLOW_CPU="1")
    assert r.returncode == 2
    line = one_line(r)
    assert line.startswith("error: missing Python packages: safetensors"), line


def test_dry_run_plan_fits_the_budget_in_order(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(tmp_path / "out")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    steps = re.findall(r"^\[([\w-]+)\] timeout (\d+)s: (.*)$", r.stdout, re.M)
    names = [s[0] for s in steps]
    assert sum(int(s[1]) for s in steps) <= 470 - 10  # the preflight's seconds stay inside the budget
    checks = [i for i, n in enumerate(names) if n.startswith("check-")]
    kernels = [i for i, n in enumerate(names) if n.startswith("bench-")]
    system = [names.index("engine-throughput"), names.index("dpo-step")]
    assert len(checks) == 3 and len(kernels) == 3 and max(checks) < min(kernels) and max(kernels) < min(system)
    assert all(cmd.startswith("python3 ") for _, _, cmd in steps)
    assert all(f"--out {tmp_path / 'out'}/" in cmd for name, _, cmd in steps if not name.startswith("check-"))
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
