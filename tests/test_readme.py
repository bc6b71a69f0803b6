import re
from pathlib import Path

from metareward.cli import main

ROOT = Path(__file__).resolve().parents[1]


def quickstart() -> list[str]:
    block = re.search(r"## Quickstart.*?```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_quickstart_has_two_commands_and_ci_runs_the_test_one():
    main_cmd, test_cmd = quickstart()
    assert main_cmd.endswith("metareward run") and test_cmd.endswith("ruff check . && pytest")
    assert test_cmd in (ROOT / ".ci" / "run").read_text().splitlines()


def test_help_lists_the_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("run", "generate", "train-dpo", "report"):
        assert re.search(rf"^\s+{cmd}\s", out, re.M), cmd
    assert main(["--version"]) == 0
