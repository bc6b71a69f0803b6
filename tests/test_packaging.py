"""A normal (non-editable) install works from any directory: the wheel carries the judge templates and the
embedded default job, and `metareward run` with no arguments finds them and writes ./runs/tiny-random."""
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_and_runs_the_embedded_default(tmp_path):
    pytest.importorskip("setuptools")
    dist = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(dist), str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = next(dist.glob("metareward-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies (torch above all) come from this environment, read-only, through a .pth file; the
    # package itself only from the wheel (this environment's editable install is not on that path)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
                        str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    work = tmp_path / "anywhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    where = subprocess.run([str(py), "-c", "import metareward; print(metareward.__file__)"], capture_output=True,
                           text=True, cwd=work, env=env, check=True).stdout
    assert str(site) in where and str(ROOT) not in where, where
    r = subprocess.run([str(venv / "bin" / "metareward"), "run", "iterations=1", "prompts_per_iteration=2",
                        "actor.n=2", "judge.n=2", "engine.kv_cache_memory=67108864", "eval.winrate.num_prompts=2"],
                       capture_output=True, text=True, cwd=work, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = work / "runs" / "tiny-random"
    assert json.loads((out / "iter_1" / "summary.json").read_text())["trained"]
    assert (out / "iter_1" / "eval_answers.jsonl").is_file()
