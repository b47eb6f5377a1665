"""The plugin's tests: kdlab's conformance kit on every component, and one short distillation."""

import kdlab_example.plugin
import pytest
import yaml

from kdlab.cli import main
from kdlab.testing import check_component, check_data, components_of

COMPONENTS = components_of(kdlab_example.plugin, "example")


def test_one_component_of_each_kind():
    assert sorted(c.kind for c in COMPONENTS) == ["data", "loss", "student", "teacher"]


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: f"{c.kind}-{c.name}")
def test_component_honours_its_contract(component):
    if component.kind in ("teacher", "student"):
        # models are checked on a batch of the plugin's own data
        blobs = next(c for c in COMPONENTS if c.kind == "data")
        check_component(component, data=check_data(blobs))
    else:
        check_component(component)


@pytest.fixture
def example_plugin(kdlab_plugins):
    """The plugin in kdlab's plugin manager: installed (pip install -e .) or registered for this test only."""
    if "example" not in kdlab_plugins.info:
        kdlab_plugins.register(kdlab_example.plugin, "example")
    return kdlab_plugins


def test_distillation_with_the_plugins_components(example_plugin, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KDLAB_HOME", str(tmp_path / "home"))  # teacher cache and MLflow store stay in tmp
    config = {
        "data": {"name": "example-blobs", "params": {"transfer_size": 200}},
        "teacher": {"name": "example-wide", "params": {"hidden": 32},
                    "training": {"epochs": 10, "batch_size": 32, "optimizer": {"lr": 0.01}}},
        "student": {"name": "example-linear"},
        "loss": {"name": "example-logit-mse", "params": {"alpha": 0.5}},
        "optimizer": {"lr": 0.05},
        "training": {"epochs": 10, "batch_size": 32, "device": "cpu", "threads": 1},
        "tracking": {"enabled": False},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path), "-q"]) == 0
    metrics = dict(kv.split("=") for kv in capsys.readouterr().out.split())
    assert float(metrics["test_accuracy"]) > 0.5  # four classes: chance is 0.25
