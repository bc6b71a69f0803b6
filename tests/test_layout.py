"""The package's layering, checked on the import graph: judging sits below both the recipe and the evaluation,
which never import each other (directly or through another module), and reading a config never loads the
trainer."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "metareward"


def modules(package: str) -> list[str]:
    return sorted(f"metareward.{package}." + p.relative_to(PKG / package).with_suffix("").as_posix().replace("/", ".")
                  for p in (PKG / package).rglob("*.py") if p.name != "__init__.py")


def direct_imports(module: str) -> set[str]:
    path = PKG.parent / (module.replace(".", "/") + ".py")
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = module.split(".")[: len(module.split(".")) - node.level] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            out |= {name} | {f"{name}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def loaded_by(module: str) -> list[str]:
    code = f"import sys, json, {module}; print(json.dumps(sorted(m for m in sys.modules if m.startswith('metareward'))))"
    return json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     check=True).stdout)


@pytest.mark.parametrize("package, forbidden", [("recipe", "eval"), ("eval", "recipe"), ("judging", "recipe"),
                                                ("judging", "eval")])
def test_no_import_between_recipe_and_eval(package, forbidden):
    for m in modules(package):
        bad = [i for i in direct_imports(m) if i.startswith(f"metareward.{forbidden}")]
        assert not bad, f"{m} imports {bad}"
        bad = [x for x in loaded_by(m) if x.startswith(f"metareward.{forbidden}.")]
        assert not bad, f"importing {m} loads {bad}"


def test_config_does_not_load_the_trainer():
    trainer = [m for m in loaded_by("metareward.config") if m.startswith("metareward.trainer")]
    assert trainer == ["metareward.trainer", "metareward.trainer.config"], trainer
