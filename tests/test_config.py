"""The run's settings: one definition per section (defaults, domains, CLI options all read from it), per-
iteration lists only where they are honoured, input paths relative to the file that names them, `base`
files, and a resumed run that follows its directory wherever it was moved."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metareward import config
from metareward.config import (EMBEDDED, PER_ITERATION, RunConfig, defaults, load_file, merge, resolve,
                               run_config, validate)
from metareward.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_loss_and_schedule_names_are_the_trainers():
    import typing

    from metareward.trainer.config import DPOConfig
    from metareward.trainer.losses import LOSSES
    from metareward.trainer.schedule import DECAYS
    assert set(typing.get_args(DPOConfig.model_fields["loss"].annotation)) == set(LOSSES)
    assert set(typing.get_args(DPOConfig.model_fields["schedule"].annotation)) == set(DECAYS)


def test_train_dpo_options_come_from_the_definition():
    from metareward.cli import cli
    from metareward.trainer.config import DPOConfig
    cmd = cli.commands["train-dpo"]
    opts = {p.name: p for p in cmd.params}
    for name, field in DPOConfig.model_fields.items():
        assert name in opts, name
        default = opts[name].default
        assert (tuple(default) if isinstance(default, list) else default) == field.default, name


def test_per_iteration_lists_are_honoured_per_iteration():
    raw = merge(defaults(), {"iterations": 4, "dpo": {"lr": [1e-6, 5e-7]}, "pairs": {"rho": [0.0, 0.32, 0.4]},
                             "train_on": [["actor", "judge"], ["actor"]]}, "test")
    cs = validate(raw)
    assert [c.dpo.lr for c in cs] == [1e-6, 5e-7, 5e-7, 5e-7]
    assert [c.pairs.rho for c in cs] == [0.0, 0.32, 0.4, 0.4]
    assert [c.train_on for c in cs] == [["actor", "judge"], ["actor"], ["actor"], ["actor"]]
    assert resolve({"dpo": {"adam_betas": [0.9, 0.99]}}, 3) == {"dpo": {"adam_betas": [0.9, 0.99]}}  # one value
    assert {"actor.n", "judge.n", "dpo.lr", "pairs.rho", "train_on"} <= PER_ITERATION
    assert not {"model", "engine.block_size", "eval.winrate.prompts", "iterations"} & PER_ITERATION


def test_defaults_are_written_once():
    d = defaults()
    assert d["actor"]["n"] == RunConfig.model_fields["actor"].default.n == 7
    assert d["train_on"] == config.PAPER_TRAIN_ON


def test_paths_in_a_config_file_are_relative_to_it(tmp_path, monkeypatch):
    cfgdir = tmp_path / "configs"
    cfgdir.mkdir()
    (cfgdir / "p.jsonl").write_text('{"prompt": "hi"}\n')
    (cfgdir / "base.yaml").write_text("prompts: p.jsonl\nactor: {n: 3}\njudge: {template: t/judge.txt}\n")
    (cfgdir / "run.yaml").write_text("base: base.yaml\nmodel: tiny-random\nactor: {n: 2}\noutput_dir: out\n")
    monkeypatch.chdir(tmp_path)
    raw = merge(defaults(), load_file(cfgdir / "run.yaml"), "x")
    assert raw["prompts"] == str(cfgdir / "p.jsonl") and raw["judge"]["template"] == str(cfgdir / "t" / "judge.txt")
    assert raw["actor"]["n"] == 2 and raw["model"] == "tiny-random"
    assert raw["output_dir"] == "out"  # an output: relative to where the command runs, like --output-dir
    # options and key=value overrides are relative to the current directory
    raw = run_config(str(cfgdir / "run.yaml"), {"prompts": "mine.jsonl"}, ["judge.template=j.txt"])
    assert raw["prompts"] == str(tmp_path / "mine.jsonl") and raw["judge"]["template"] == str(tmp_path / "j.txt")


def test_yaml_reads_exponents_without_a_dot_as_floats(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: tiny-random\ndpo: {lr: 5e-7}\n")
    assert validate(merge(defaults(), load_file(f), "c"))[0].dpo.lr == 5e-7


def test_the_embedded_default_is_package_data():
    assert EMBEDDED.is_file() and EMBEDDED.parent.name == "defaults"
    c = validate(run_config(None, {}, []))[0]
    assert c.model == "tiny-random" and Path(c.prompts).is_file() and Path(c.eval.winrate.prompts).is_file()
    assert c.output_dir == "runs/tiny-random"


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_example_configs_are_valid(name):
    path = ROOT / "examples" / name
    configs = validate(merge(defaults(), load_file(path), str(path)))
    assert len(configs) == configs[0].iterations


def test_paper_config_holds_the_papers_schedule():
    c = validate(merge(defaults(), load_file(ROOT / "examples" / "paper.yaml"), "paper"))
    assert [x.pairs.rho for x in c] == [0.0, 0.32, 0.32, 0.4]
    assert [x.train_on for x in c] == [["actor", "judge"], ["actor", "judge"], ["actor"], ["actor"]]
    assert [x.pairs.max_judgment_chars for x in c[:2]] == [1100, 1000]
    assert all(x.actor.n == 7 and x.judge.n == 11 and x.prompts_per_iteration == 5000 for x in c)
    for gpu in ("llama3-8b-1gpu.yaml", "llama3-8b-8gpu.yaml"):
        assert "paper.yaml" in yaml.safe_load((ROOT / "examples" / gpu).read_text())["base"]


def test_resume_follows_a_moved_run_directory(tmp_path):
    first = tmp_path / "first"
    cmd = [sys.executable, "-m", "metareward", "run", "--output-dir", str(first), "iterations=1",
           "prompts_per_iteration=2", "actor.n=2", "actor.max_tokens=4", "judge.n=2", "judge.max_tokens=4",
           "meta_judge.max_tokens=4", "engine.kv_cache_memory=67108864", "eval.winrate.prompts=null"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "output_dir" not in yaml.safe_load((first / "config.yaml").read_text())
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.copytree(first, moved)
    shutil.rmtree(first)
    r = subprocess.run([sys.executable, "-m", "metareward", "run", "--resume", "--output-dir", str(moved),
                        "--iterations", "2"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not first.exists() and (moved / "iter_2" / "summary.json").is_file()
    assert json.loads((moved / "state.json").read_text())["completed"][-1] == "iter_2/summary"


def test_settings_are_frozen():
    c = RunConfig()
    with pytest.raises(Exception):
        c.iterations = 3
    with pytest.raises(UserError, match="fixed for the whole run"):
        merge(defaults(), {"engine": {"block_size": [16, 32]}}, "x")
