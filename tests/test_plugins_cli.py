"""`kdlab plugins` (list, --json, show) and the environment variables that choose plugins."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

import kdlab
from kdlab.cli import main
from kdlab.plugins import Plugins, get_plugins, reset_plugins


class GadgetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = Field(8, gt=0, description="hidden width")
    mode: Literal["fast", "slow"] = Field("fast", description="how to run")
    scale: float | None = Field(None, description="optional scale")
    layers: list[int] = Field(default_factory=lambda: [4, 2], description="layer sizes")
    needed: str = Field(description="a required param")


def make_gadget(params, *, input_shape, num_classes):
    """A gadget for tests."""


class GadgetPlugin:
    @kdlab.hookimpl
    def kdlab_register_students(self, register):
        register("gadget", make_gadget, GadgetParams)

    @kdlab.hookimpl
    def kdlab_register_losses(self, register):
        raise RuntimeError("no GPU here")


def _json(capsys, argv) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_json_lists_first_party_plugins_with_distribution_location_hooks_and_components(capsys):
    listing = _json(capsys, ["plugins", "--json"])
    assert listing["kdlab_version"] == kdlab.__version__
    by_name = {p["name"]: p for p in listing["plugins"]}
    models = by_name["kdlab-models"]
    assert (models["distribution"], models["version"]) == ("kdlab", kdlab.__version__)
    assert models["location"].endswith(os.path.join("kdlab_models", "plugin.py"))
    assert models["hooks"] == ["kdlab_register_students", "kdlab_register_teachers"]
    assert {"mlp", "cnn1d", "cnn2d"} <= {c["name"] for c in models["components"]["student"]}
    assert all(c["description"] for c in models["components"]["teacher"])
    assert {"digits", "mnist1d"} <= {c["name"] for c in by_name["kdlab-data"]["components"]["data"]}
    assert {"kd", "ce"} <= {c["name"] for c in by_name["kdlab-losses"]["components"]["loss"]}


def test_listing_shows_a_runtime_plugin_and_its_failure(plugins, capsys):
    plugins.register(GadgetPlugin(), "gadget-plugin")
    listing = _json(capsys, ["plugins", "--json"])
    (gadget,) = [p for p in listing["plugins"] if p["name"] == "gadget-plugin"]
    assert gadget["distribution"] is None and gadget["location"] == __name__
    assert gadget["hooks"] == ["kdlab_register_losses", "kdlab_register_students"]
    assert gadget["components"]["student"] == [{"name": "gadget", "description": "A gadget for tests."}]
    assert listing["failures"] == [{"name": "gadget-plugin", "distribution": None, "version": None,
                                    "reason": "plugin 'gadget-plugin' raised in kdlab_register_losses: "
                                              "RuntimeError: no GPU here"}]

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "gadget-plugin  registered at run time" in out
    assert "hooks: kdlab_register_losses, kdlab_register_students" in out
    assert re.search(r"^  student +gadget +A gadget for tests\.", out, re.M)
    assert "kdlab-models  kdlab 0.1.0" in out
    assert "failures\n  gadget-plugin: plugin 'gadget-plugin' raised in kdlab_register_losses" in out


def test_show_prints_params_names_types_defaults_constraints_and_descriptions(plugins, capsys):
    plugins.register(GadgetPlugin(), "gadget-plugin")
    doc = _json(capsys, ["plugins", "show", "gadget", "--json"])
    assert (doc["kind"], doc["plugin"], doc["description"]) == ("student", "gadget-plugin", "A gadget for tests.")
    assert doc["params"] == [
        {"name": "width", "type": "int", "required": False, "default": 8, "constraints": "> 0",
         "description": "hidden width", "children": []},
        {"name": "mode", "type": "fast | slow", "required": False, "default": "fast", "constraints": "",
         "description": "how to run", "children": []},
        {"name": "scale", "type": "float | None", "required": False, "default": None, "constraints": "",
         "description": "optional scale", "children": []},
        {"name": "layers", "type": "list[int]", "required": False, "default": [4, 2], "constraints": "",
         "description": "layer sizes", "children": []},
        {"name": "needed", "type": "str", "required": True, "default": None, "constraints": "",
         "description": "a required param", "children": []},
    ]
    assert main(["plugins", "show", "gadget"]) == 0
    out = capsys.readouterr().out
    for text in ("student gadget", "A gadget for tests.", "width", "int", "> 0", "hidden width", "(required)",
                 "[4, 2]", "fast | slow"):
        assert text in out, text


def test_show_first_party_component_and_kind_filter(capsys):
    both = _json(capsys, ["plugins", "show", "mlp", "--json"])
    assert [d["kind"] for d in both] == ["teacher", "student"]
    kd = _json(capsys, ["plugins", "show", "kd", "--kind", "loss", "--json"])
    params = {p["name"]: p for p in kd["params"]}
    assert params["temperature"]["default"] == 4.0 and params["temperature"]["constraints"] == "> 0"
    assert main(["plugins", "show", "mlp", "--kind", "student"]) == 0
    out = capsys.readouterr().out
    assert "student mlp" in out and "teacher mlp" not in out


def test_show_unknown_name_suggests_the_closest(capsys):
    assert main(["plugins", "show", "kdd"]) == 1
    assert "kdlab: error: no component named 'kdd'; did you mean 'kd'?" in capsys.readouterr().err
    assert main(["plugins", "show"]) == 1
    assert main(["plugins", "show", "kd", "--kind", "data"]) == 1
    assert "no data component named 'kd'" in capsys.readouterr().err


def test_kdlab_plugins_imports_neither_mlflow_nor_optuna():
    code = ("import sys, json; from kdlab.cli import main; main(['plugins']); main(['plugins', 'show', 'kd']); "
            "print(json.dumps([m for m in ('mlflow', 'optuna') if m in sys.modules]), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
    assert "kdlab-models" in proc.stdout


@pytest.mark.parametrize("env, expected", [
    ({"KDLAB_PLUGINS": "kdlab-losses"}, ["kdlab-losses"]),
    ({"KDLAB_PLUGINS": " kdlab-data , kdlab-models "}, ["kdlab-data", "kdlab-models"]),
    ({"KDLAB_PLUGINS": ""}, []),
    ({"KDLAB_DISABLE_PLUGINS": "kdlab-losses,kdlab-data,kdlab-vision,kdlab-text"}, ["kdlab-models"]),
    ({"KDLAB_PLUGINS": "kdlab-data,kdlab-losses", "KDLAB_DISABLE_PLUGINS": "kdlab-data"}, ["kdlab-losses"]),
])
def test_environment_chooses_installed_plugins(monkeypatch, env, expected):
    monkeypatch.delenv("KDLAB_PLUGINS", raising=False)
    monkeypatch.delenv("KDLAB_DISABLE_PLUGINS", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    plugins = Plugins()
    plugins.load_entry_points()
    assert sorted(plugins.info) == expected


@pytest.fixture
def fresh_plugins():
    reset_plugins()
    yield
    reset_plugins()


def test_trace_prints_every_hook_call(monkeypatch, fresh_plugins, capsys):
    monkeypatch.setenv("KDLAB_TRACE_PLUGINS", "1")
    monkeypatch.setenv("KDLAB_PLUGINS", "kdlab-losses")
    plugins = get_plugins()
    assert plugins.registry.names("loss")
    plugins.hook.kdlab_trial_end(study="s", trial_number=0, state="COMPLETE", params={}, metrics={})
    err = capsys.readouterr().err
    assert "kdlab trace: kdlab_register_losses(register) -> kdlab-losses" in err
    assert "kdlab trace: kdlab_trial_end(metrics, params, state, study, trial_number) -> []" in err
    assert "kdlab trace: kdlab_trial_end returned []" in err
