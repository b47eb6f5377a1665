"""The errors a plugin author meets: each names the culprit (plugin, distribution, version, component, config key)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pluggy
import pytest
from pydantic import BaseModel, ConfigDict, Field

import kdlab
from kdlab.errors import ConfigError, PluginError
from kdlab.plugins import Plugins
from kdlab.testing import write_distribution
from kdlab_test_helpers import load_config, tiny_digits_config


def _plugin(**hooks):
    """A plugin object whose methods are the given hook implementations."""
    return type("Plugin", (), {name: staticmethod(kdlab.hookimpl(fn)) for name, fn in hooks.items()})()


def test_misspelt_hook_argument_names_the_plugin_and_the_argument():
    def kdlab_register_losses(regster):  # noqa: ARG001
        pass

    with pytest.raises(PluginError) as err:
        Plugins().register(_plugin(kdlab_register_losses=kdlab_register_losses), "kdlab-typo",
                           distribution="kdlab-typo", version="0.3.0")
    assert str(err.value) == ("plugin 'kdlab-typo' (kdlab-typo 0.3.0): kdlab_register_losses takes an argument "
                              "'regster' that the hook does not have (did you mean 'register'?); its arguments are: "
                              "register")
    assert isinstance(err.value.__cause__, pluggy.PluginValidationError)


def test_unknown_hook_name_suggests_the_closest_hook_and_leaves_the_plugin_unregistered():
    plugins = Plugins()
    with pytest.raises(PluginError) as err:
        plugins.register(_plugin(kdlab_register_loss=lambda register: None), "kdlab-typo")
    msg = str(err.value)
    assert "plugin 'kdlab-typo' implements unknown hook 'kdlab_register_loss'" in msg
    assert "did you mean 'kdlab_register_losses'?" in msg
    assert "kdlab-typo" not in plugins.info and not plugins.pm.has_plugin("kdlab-typo")
    # the bogus hook does not become "known" for the next plugin's message
    assert "kdlab_register_loss" not in plugins.hook_names()


class Loss(kdlab.Loss):
    uses_teacher = False

    def __init__(self, params=None):
        super().__init__()


def test_same_component_name_from_two_plugins_names_both_and_blocks_the_name():
    plugins = Plugins()

    def first(register):
        register("shared", Loss)
        register("only-first", Loss)

    def second(register):
        register("shared", Loss)
        register("only-second", Loss)

    plugins.register(_plugin(kdlab_register_losses=first), "kdlab-one", distribution="kdlab-one", version="1.0")
    plugins.register(_plugin(kdlab_register_losses=second), "kdlab-two", distribution="kdlab-two", version="2.0")
    (failure,) = plugins.failures
    assert failure.reason.startswith("loss 'shared' is registered twice: by plugin ")
    assert "plugin 'kdlab-one' (kdlab-one 1.0)" in failure.reason
    assert "plugin 'kdlab-two' (kdlab-two 2.0)" in failure.reason
    assert failure.reason.endswith("Disable one of them with KDLAB_DISABLE_PLUGINS.")
    with pytest.raises(PluginError) as err:  # neither plugin wins silently
        plugins.registry.get("loss", "shared")
    assert str(err.value) == failure.reason
    assert plugins.registry.names("loss") == ["only-first", "only-second"]


def test_contribution_hook_that_raises_loses_only_its_own_components():
    plugins = Plugins()

    def broken(register):
        register("half-done", Loss)
        raise RuntimeError("cannot find my weights")

    plugins.register(_plugin(kdlab_register_losses=lambda register: register("fine", Loss)), "kdlab-fine")
    plugins.register(_plugin(kdlab_register_losses=broken), "kdlab-half", distribution="kdlab-half", version="0.1")
    assert plugins.registry.names("loss") == ["fine"]
    (failure,) = plugins.failures
    assert failure.reason == ("plugin 'kdlab-half' (kdlab-half 0.1) raised in kdlab_register_losses: "
                              "RuntimeError: cannot find my weights")


def _boom(params, *, input_shape, num_classes):
    raise ValueError(f"no kernel fits input {input_shape}")


def test_factory_that_raises_names_plugin_version_and_component():
    plugins = Plugins()
    plugins.register(_plugin(kdlab_register_students=lambda register: register("boom", _boom)), "kdlab-boom",
                     distribution="kdlab-boom", version="1.2.3")
    comp = plugins.registry.get("student", "boom")
    with pytest.raises(PluginError) as err:
        comp.build(comp.validate_params({}), input_shape=(1, 8, 8), num_classes=10)
    assert str(err.value) == ("student 'boom' from plugin 'kdlab-boom' (kdlab-boom 1.2.3) failed to build: "
                              "ValueError: no kernel fits input (1, 8, 8)")
    assert isinstance(err.value.__cause__, ValueError)


def test_factory_that_raises_in_a_run_is_reported_by_the_cli(plugins, write_config, capsys):
    from kdlab.cli import main

    plugins.register(_plugin(kdlab_register_students=lambda register: register("boom", _boom)), "kdlab-boom")
    path = write_config(tiny_digits_config(**{"student.name": "boom", "student.params": {},
                                                 "loss.name": "ce", "loss.params": {}}))
    assert main(["run", str(path), "--no-track", "-q"]) == PluginError.exit_code
    err = capsys.readouterr().err
    assert "kdlab: error: student 'boom' from plugin 'kdlab-boom' failed to build: ValueError" in err
    assert "Traceback" not in err


class PickyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(4.0, gt=0, description="softmax temperature")


def test_params_model_rejecting_the_config_names_file_key_value_and_expectation(plugins, write_config):
    plugins.register(_plugin(kdlab_register_losses=lambda register: register("picky", Loss, PickyParams)),
                     "kdlab-picky")
    path = write_config(tiny_digits_config(**{"loss.name": "picky", "loss.params": {"temperature": -1,
                                                                                     "temprature": 2}}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: 2 problems")
    assert "loss.params.temperature: expected greater than 0 (got -1)" in msg
    assert "loss.params.temprature: unknown param of loss 'picky'; did you mean 'temperature'?" in msg


BROKEN = {"kdlab_broken_plugin/__init__.py": "raise ImportError('kdlab-broken needs libfoo, which is missing')\n"}


def test_entry_point_that_fails_to_import_is_skipped_named_and_listed(tmp_path, monkeypatch, capsys,
                                                                       all_installed_plugins):
    write_distribution(tmp_path, "kdlab-broken", "0.0.1", {"broken": "kdlab_broken_plugin"}, BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = Plugins()
    plugins.load_entry_points()
    (failure,) = plugins.failures
    assert (failure.name, failure.distribution, failure.version) == ("broken", "kdlab-broken", "0.0.1")
    assert failure.reason == ("import of 'kdlab_broken_plugin' failed: ImportError: kdlab-broken needs libfoo, "
                              "which is missing")
    assert "kdlab: warning: plugin 'broken' was not loaded: import of 'kdlab_broken_plugin' failed" in \
        capsys.readouterr().err
    assert {"kdlab-data", "kdlab-models", "kdlab-losses"} <= set(plugins.info)  # kdlab still starts
    assert plugins.registry.names("loss")


def test_kdlab_plugins_shows_the_broken_plugin(tmp_path, all_installed_plugins):
    write_distribution(tmp_path, "kdlab-broken", "0.0.1", {"broken": "kdlab_broken_plugin"}, BROKEN)
    env = {**os.environ, "PYTHONPATH": str(tmp_path),
           "KDLAB_DISABLE_PLUGINS": "kdlab-data,kdlab-losses,kdlab-vision,kdlab-text"}
    proc = subprocess.run([sys.executable, "-m", "kdlab", "plugins", "--json"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    assert [p["name"] for p in listing["plugins"]] == ["kdlab-models"]
    (failure,) = listing["failures"]
    assert failure["name"] == "broken" and failure["distribution"] == "kdlab-broken"
    assert "libfoo" in failure["reason"]
    assert "plugin 'broken' was not loaded" in proc.stderr


def test_hook_function_without_the_marker_is_named():
    class Forgetful:
        def kdlab_register_losses(self, register):  # no @kdlab.hookimpl: pluggy alone would ignore it
            register("never", Loss)

    with pytest.raises(PluginError) as err:
        Plugins().register(Forgetful(), "kdlab-forgetful", distribution="kdlab-forgetful", version="0.2")
    assert str(err.value) == ("plugin 'kdlab-forgetful' (kdlab-forgetful 0.2) defines kdlab_register_losses "
                              "without the @kdlab.hookimpl marker")
