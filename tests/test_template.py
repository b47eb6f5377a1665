"""The plugin template (templates/kdlab-plugin-template), installed the way pip installs it (its package plus a
dist-info folder with its `kdlab` entry points, on the path): kdlab discovers it, lists it, runs a distillation
with its components, and the template's own tests (which use the conformance kit) pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
import yaml

from kdlab.plugins import get_plugins, reset_plugins
from kdlab.testing import write_distribution

TEMPLATE = Path(__file__).resolve().parents[1] / "templates" / "kdlab-plugin-template"
PROJECT = tomllib.loads((TEMPLATE / "pyproject.toml").read_text())["project"]
KINDS = {"data": ["example-blobs"], "teacher": ["example-wide"], "student": ["example-linear"],
         "loss": ["example-logit-mse"]}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A site-packages folder holding the template as `pip install --no-deps --target` would leave it."""
    site = tmp_path_factory.mktemp("site-packages")
    shutil.copytree(TEMPLATE / "kdlab_example", site / "kdlab_example",
                    ignore=shutil.ignore_patterns("__pycache__"))
    write_distribution(site, PROJECT["name"], PROJECT["version"], PROJECT["entry-points"]["kdlab"])
    return site


def _env(site: Path, **extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    # kdlab loads every installed plugin there, the template's included (the tests' own default loads only kdlab's)
    env = {k: v for k, v in os.environ.items() if k != "KDLAB_PLUGINS"}
    return {**env, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1", **extra}


def test_template_has_one_component_of_each_kind_and_the_kdlab_entry_point():
    assert PROJECT["entry-points"]["kdlab"] == {"example": "kdlab_example.plugin"}
    assert any(d.startswith("kdlab") for d in PROJECT["dependencies"])
    # the tutorial in docs/plugins.md walks through this template: it must show the same entry point and tests
    docs = (TEMPLATE.parents[1] / "docs" / "plugins.md").read_text()
    assert '[project.entry-points.kdlab]\nexample = "kdlab_example.plugin"' in docs
    tests = (TEMPLATE / "tests" / "test_example.py").read_text()
    start = tests.index("@pytest.mark.parametrize")
    assert tests[start: tests.index("\n\n\n", start)] in docs


def test_kdlab_discovers_and_lists_the_installed_template(site):
    proc = subprocess.run([sys.executable, "-m", "kdlab", "plugins", "--json"], env=_env(site),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    assert listing["failures"] == []
    (example,) = [p for p in listing["plugins"] if p["name"] == "example"]
    assert (example["distribution"], example["version"]) == ("kdlab-example", "0.1.0")
    assert example["location"] == str(site / "kdlab_example" / "plugin.py")
    assert example["hooks"] == ["kdlab_register_data", "kdlab_register_losses", "kdlab_register_students",
                                "kdlab_register_teachers"]
    assert {k: [c["name"] for c in v] for k, v in example["components"].items()} == KINDS
    assert all(c["description"] for v in example["components"].values() for c in v)
    # the first-party plugins are still there
    assert {"kdlab-data", "kdlab-models", "kdlab-losses"} <= {p["name"] for p in listing["plugins"]}


@pytest.fixture
def installed(site, monkeypatch, all_installed_plugins):
    """The template on sys.path and kdlab's plugin manager reloaded from the installed entry points."""
    monkeypatch.syspath_prepend(str(site))
    reset_plugins()
    yield get_plugins()
    reset_plugins()
    for mod in [m for m in sys.modules if m == "kdlab_example" or m.startswith("kdlab_example.")]:
        del sys.modules[mod]


def test_distillation_with_the_templates_components(installed, tmp_path, capsys):
    from kdlab.cli import main

    assert installed.info["example"].distribution == "kdlab-example"
    config = {
        "data": {"name": "example-blobs", "params": {"transfer_size": 200}},
        "teacher": {"name": "example-wide", "params": {"hidden": 32},
                    "training": {"epochs": 10, "batch_size": 32, "optimizer": {"lr": 0.01}}},
        "student": {"name": "example-linear"},
        "loss": {"name": "example-logit-mse", "params": {"alpha": 0.5}},
        "optimizer": {"lr": 0.05},
        "training": {"epochs": 10, "batch_size": 32, "device": "cpu", "threads": 1},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path), "--no-track", "-q"]) == 0
    metrics = {k: float(v) for k, v in (kv.split("=") for kv in capsys.readouterr().out.split())}
    assert metrics["teacher_test_accuracy"] > 0.5 and metrics["test_accuracy"] > 0.5  # chance: 0.25
    comp = installed.registry.get("loss", "example-logit-mse")
    assert (comp.plugin, comp.distribution, comp.version) == ("example", "kdlab-example", "0.1.0")


def test_the_templates_own_tests_pass_with_the_kit(site):
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TEMPLATE / "tests")]
    if not any(ep.value == "kdlab.testing" for ep in metadata.entry_points(group="pytest11")):
        args[3:3] = ["-p", "kdlab.testing"]  # until kdlab's pytest11 entry point is installed
    proc = subprocess.run(args, env=_env(site), cwd=TEMPLATE, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6 passed" in proc.stdout
