"""Plugin registration, the errors for each kind of plugin mistake (all naming the plugin), and the environment
variables that choose, disable and trace plugins."""

from __future__ import annotations

import sys
import types
from importlib import metadata

import pytest
from pydantic import BaseModel, ConfigDict, Field

import kdlab
from kdlab.errors import PluginError
from kdlab.plugins import Plugins, get_plugins, reset_plugins
from kdlab.registry import KINDS, NoParams, Registry, UnknownComponent

FIRST_PARTY = {"kdlab-data", "kdlab-models", "kdlab-losses"}


class EchoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scale: float = Field(1.0, gt=0)


class Echo(kdlab.Loss):
    """A loss that returns the mean student logit (test component)."""

    uses_teacher = False

    def __init__(self, params: EchoParams):
        super().__init__()
        self.scale = params.scale

    def forward(self, inputs):
        v = inputs.student_logits.mean() * self.scale
        return kdlab.LossOutput(v, {"echo": v})


def _plugin(**hooks) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{name: kdlab.hookimpl(fn) for name, fn in hooks.items()})


# -- registration -----------------------------------------------------------------------------------------------


def test_first_party_plugins_are_loaded_through_entry_points(plugins):
    assert FIRST_PARTY <= set(plugins.info)
    info = plugins.info["kdlab-losses"]
    assert info.distribution == "kdlab" and info.version == kdlab.__version__
    assert info.hooks == ["kdlab_register_losses"]
    reg = plugins.registry
    assert {"digits", "mnist1d"} <= set(reg.names("data"))
    assert {"mlp", "cnn1d", "cnn2d"} <= set(reg.names("teacher")) & set(reg.names("student"))
    assert {"kd", "ce"} <= set(reg.names("loss"))
    kd = reg.get("loss", "kd")
    assert kd.plugin == "kdlab-losses" and kd.origin == f"plugin 'kdlab-losses' (kdlab {kdlab.__version__})"
    assert kd.description.startswith("Hinton")


def test_a_test_plugin_contributes_a_component(plugins):
    def kdlab_register_losses(register):
        register("echo", Echo, EchoParams)

    plugins.register(_plugin(kdlab_register_losses=kdlab_register_losses), "test-echo")
    comp = plugins.registry.get("loss", "echo")
    assert comp.plugin == "test-echo" and comp.params is EchoParams
    assert comp.description == "A loss that returns the mean student logit (test component)."
    loss = comp.build(comp.validate_params({"scale": 2.0}))
    assert isinstance(loss, Echo) and loss.scale == 2.0
    assert "kd" in plugins.registry.names("loss")  # the others are still there


def test_test_plugin_is_unregistered_by_the_fixture():
    assert "test-echo" not in get_plugins().info
    assert "echo" not in get_plugins().registry.names("loss")


def test_a_registered_component_is_usable_from_a_config(plugins, write_config):
    from conftest import tiny_digits_config
    from kdlab_test_helpers import load_config

    plugins.register(_plugin(kdlab_register_losses=lambda register: register("echo", Echo, EchoParams)), "test-echo")
    cfg = tiny_digits_config(**{"loss": {"name": "echo", "params": {"scale": 3}}})
    loaded = load_config(write_config(cfg))
    assert loaded.components["loss"].plugin == "test-echo" and loaded.params["loss"].scale == 3.0


def test_hook_with_a_subset_of_arguments(plugins):
    seen = []

    def kdlab_run_end(status):  # the spec has (run, metrics, status): any subset is allowed
        seen.append(status)

    plugins.register(_plugin(kdlab_run_end=kdlab_run_end), "test-subset")
    plugins.hook.kdlab_run_end(run=None, metrics={}, status="FINISHED")
    assert seen == ["FINISHED"]


def test_factory_context_is_passed_by_accepted_keywords():
    reg = Registry()
    register = reg.registrar("teacher", "p")
    calls = {}

    def factory(params, *, num_classes):  # does not accept input_shape
        calls["num_classes"] = num_classes
        return "model"

    comp = register("net", factory)
    assert comp.params is NoParams
    assert comp.build(NoParams(), input_shape=(3,), num_classes=7) == "model" and calls == {"num_classes": 7}


# -- plugin mistakes --------------------------------------------------------------------------------------------


def test_duplicate_component_names_name_both_plugins(plugins, capsys):
    plugins.register(_plugin(kdlab_register_losses=lambda register: register("kd", Echo, EchoParams)), "test-dup")
    reg = plugins.registry  # a clash does not stop kdlab: it is reported, and the name is unusable
    assert "kdlab: warning: loss 'kd' is registered twice" in capsys.readouterr().err
    with pytest.raises(PluginError) as info:
        reg.get("loss", "kd")
    msg = str(info.value)
    assert "loss 'kd' is registered twice" in msg
    assert "plugin 'kdlab-losses'" in msg and "plugin 'test-dup'" in msg
    assert "KDLAB_DISABLE_PLUGINS" in msg
    assert "ce" in reg.names("loss")  # the other components of both plugins stay usable
    assert any(f.name in ("test-dup", "kdlab-losses") and "registered twice" in f.reason for f in plugins.failures)


def test_a_config_naming_a_duplicate_gets_a_config_error(plugins, write_config, capsys):
    from conftest import tiny_digits_config
    from kdlab.errors import ConfigError
    from kdlab_test_helpers import load_config

    plugins.register(_plugin(kdlab_register_losses=lambda register: register("kd", Echo, EchoParams)), "test-dup")
    path = write_config(tiny_digits_config(), "clash.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    msg = str(info.value)
    assert "clash.yaml" in msg and "loss.name" in msg and "'kd'" in msg
    assert "registered twice" in msg and "plugin 'test-dup'" in msg and "KDLAB_DISABLE_PLUGINS" in msg
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.startswith("loss:")) + 1
    assert f"line {line}" in msg
    from kdlab.cli import main

    assert main(["validate", str(path)]) == ConfigError.exit_code  # a problem of this file, found before any run
    assert "loss.name" in capsys.readouterr().err


def test_duplicate_within_one_plugin():
    reg = Registry()
    register = reg.registrar("data", "test-twice", "kdlab-twice", "1.2")
    register("same", lambda params, seed: None)
    register("same", lambda params, seed: None)
    with pytest.raises(PluginError,
                       match=r"data 'same' is registered twice: by plugin 'test-twice' \(kdlab-twice 1.2\)"):
        reg.get("data", "same")
    assert reg.failures[0].name == "test-twice"


def test_unknown_hook_names_the_plugin_and_suggests(plugins):
    def kdlab_register_loss(register):  # typo: the hook is kdlab_register_losses
        pass

    with pytest.raises(PluginError) as info:
        plugins.register(_plugin(kdlab_register_loss=kdlab_register_loss), "test-typo")
    msg = str(info.value)
    assert "plugin 'test-typo'" in msg and "unknown hook 'kdlab_register_loss'" in msg
    assert "did you mean 'kdlab_register_losses'?" in msg
    assert "test-typo" not in plugins.info and not plugins.pm.has_plugin("test-typo")
    assert "kdlab_register_loss" not in plugins.hook_names() and "kdlab_register_losses" in plugins.hook_names()


def test_hookimpl_with_wrong_argument_names_names_the_plugin(plugins):
    def kdlab_epoch_end(run, epoch, metricz):
        pass

    with pytest.raises(PluginError) as info:
        plugins.register(_plugin(kdlab_epoch_end=kdlab_epoch_end), "test-args", distribution="kdlab-args",
                         version="0.3")
    msg = str(info.value)
    assert "plugin 'test-args' (kdlab-args 0.3)" in msg and "metricz" in msg
    assert "test-args" not in plugins.info


def test_same_plugin_name_twice(plugins):
    plugins.register(_plugin(kdlab_run_end=lambda status: None), "test-name")
    with pytest.raises(PluginError, match="plugin 'test-name': a plugin named 'test-name' is already registered"):
        plugins.register(_plugin(kdlab_run_end=lambda status: None), "test-name")


@pytest.mark.parametrize("args,expected", [
    (("Bad Name", lambda p: None), "names are lower-case"),
    (("ok", "not callable"), "not callable"),
    (("ok", lambda p: None, dict), "expected a pydantic BaseModel subclass"),
])
def test_invalid_registrations_are_failures_naming_the_plugin(plugins, args, expected, capsys):
    plugins.register(_plugin(kdlab_register_students=lambda register: register(*args)), "test-invalid")
    reg = plugins.registry
    (failure,) = [f for f in plugins.failures if f.name == "test-invalid"]
    assert "plugin 'test-invalid'" in failure.reason and expected in failure.reason
    assert "ok" not in reg.names("student") and "mlp" in reg.names("student")
    assert expected in capsys.readouterr().err


def test_a_register_hook_that_raises_loses_only_its_own_components(plugins, capsys):
    def kdlab_register_data(register):
        register("half-made", lambda params, seed: None)
        raise RuntimeError("boom")

    plugins.register(_plugin(kdlab_register_data=kdlab_register_data), "test-raises", distribution="kdlab-raises",
                     version="9.9")
    reg = plugins.registry
    assert "half-made" not in reg.names("data") and "digits" in reg.names("data")
    (failure,) = [f for f in plugins.failures if f.name == "test-raises"]
    expected = "plugin 'test-raises' (kdlab-raises 9.9) raised in kdlab_register_data: RuntimeError: boom"
    assert failure.reason == expected and failure.version == "9.9"
    assert expected in capsys.readouterr().err


def test_a_factory_that_raises_is_named(plugins):
    def broken(params, *, seed):
        raise ValueError("no data here")

    plugins.register(_plugin(kdlab_register_data=lambda register: register("broken", broken)), "test-factory")
    comp = plugins.registry.get("data", "broken")
    with pytest.raises(PluginError,
                       match=r"data 'broken' from plugin 'test-factory' failed to build: ValueError: no data"):
        comp.build(NoParams(), seed=0)


def test_unknown_component_lookup():
    reg = Registry()
    reg.registrar("loss", "p")("kd", lambda p: None)
    with pytest.raises(UnknownComponent) as info:
        reg.get("loss", "kdd")
    assert info.value.available == ["kd"] and "did you mean 'kd'?" in str(info.value)
    assert set(KINDS) == {"data", "teacher", "student", "loss"}


# -- environment variables --------------------------------------------------------------------------------------


def test_kdlab_plugins_selects_installed_plugins(monkeypatch):
    monkeypatch.setenv("KDLAB_PLUGINS", "kdlab-losses, kdlab-data")
    p = Plugins()
    p.load_entry_points()
    assert set(p.info) == {"kdlab-losses", "kdlab-data"}
    assert p.registry.names("student") == [] and "kd" in p.registry.names("loss")


def test_empty_kdlab_plugins_loads_none(monkeypatch):
    monkeypatch.setenv("KDLAB_PLUGINS", "")
    p = Plugins()
    p.load_entry_points()
    assert p.info == {} and p.registry.names("loss") == []


def test_kdlab_disable_plugins(monkeypatch):
    monkeypatch.delenv("KDLAB_PLUGINS", raising=False)
    monkeypatch.setenv("KDLAB_DISABLE_PLUGINS", "kdlab-models,kdlab-vision,kdlab-text")
    p = Plugins()
    p.load_entry_points()
    assert not {"kdlab-models", "kdlab-vision", "kdlab-text"} & set(p.info)
    assert {"kdlab-data", "kdlab-losses"} <= set(p.info)
    with pytest.raises(UnknownComponent) as info:
        p.registry.get("student", "mlp")
    assert "none are installed" in str(info.value)


def test_disabling_a_duplicate_resolves_it(monkeypatch, all_installed_plugins):
    """The advice the duplicate error gives works: disable one of the two plugins."""
    fake = types.ModuleType("kdlab_test_dup_plugin")
    fake.kdlab_register_losses = kdlab.hookimpl(lambda register: register("kd", Echo, EchoParams))
    monkeypatch.setitem(sys.modules, "kdlab_test_dup_plugin", fake)
    eps = list(metadata.entry_points(group="kdlab")) + [
        metadata.EntryPoint("test-dup", "kdlab_test_dup_plugin", "kdlab")]
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [e for e in eps if e.group == group])
    p = Plugins()
    p.load_entry_points()
    with pytest.raises(PluginError, match="registered twice"):
        p.registry.get("loss", "kd")
    monkeypatch.setenv("KDLAB_DISABLE_PLUGINS", "kdlab-losses")
    p = Plugins()
    p.load_entry_points()
    assert p.registry.get("loss", "kd").plugin == "test-dup"


def test_a_plugin_that_fails_to_import_is_skipped_and_reported(monkeypatch, capsys, all_installed_plugins):
    eps = list(metadata.entry_points(group="kdlab")) + [
        metadata.EntryPoint("test-missing", "kdlab_no_such_module_xyz", "kdlab")]
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [e for e in eps if e.group == group])
    p = Plugins()
    p.load_entry_points()
    assert FIRST_PARTY <= set(p.info) and "test-missing" not in p.info
    (failure,) = p.load_failures
    assert failure.name == "test-missing" and "ModuleNotFoundError" in failure.reason
    assert "plugin 'test-missing' was not loaded" in capsys.readouterr().err


def test_an_installed_plugin_with_a_bad_hookimpl_is_skipped(monkeypatch, capsys, all_installed_plugins):
    fake = types.ModuleType("kdlab_test_bad_plugin")
    fake.kdlab_run_start = kdlab.hookimpl(lambda runn: None)
    monkeypatch.setitem(sys.modules, "kdlab_test_bad_plugin", fake)
    eps = [metadata.EntryPoint("test-bad", "kdlab_test_bad_plugin", "kdlab")]
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [e for e in eps if e.group == group])
    p = Plugins()
    p.load_entry_points()
    assert p.info == {} and p.failures[0].name == "test-bad" and "runn" in p.failures[0].reason
    assert "plugin 'test-bad' was not loaded" in capsys.readouterr().err


def test_kdlab_trace_plugins_prints_hook_calls(monkeypatch, capsys):
    monkeypatch.setenv("KDLAB_TRACE_PLUGINS", "1")
    reset_plugins()
    try:
        p = get_plugins()
        p.register(_plugin(kdlab_run_end=lambda status: None), "test-traced")
        p.registry  # noqa: B018
        p.hook.kdlab_run_end(run=None, metrics={}, status="FINISHED")
        err = capsys.readouterr().err
        assert "kdlab trace: kdlab_register_losses(register) -> kdlab-losses" in err
        assert "kdlab trace: kdlab_run_end(metrics, run, status) -> ['test-traced']" in err
        assert "kdlab trace: kdlab_run_end returned" in err
        p.trace(False)
        p.hook.kdlab_run_end(run=None, metrics={}, status="FINISHED")
        assert "kdlab_run_end" not in capsys.readouterr().err
    finally:
        reset_plugins()


def test_no_trace_without_the_variable(monkeypatch, capsys):
    monkeypatch.delenv("KDLAB_TRACE_PLUGINS", raising=False)
    p = Plugins()
    p.load_entry_points()
    p.registry  # noqa: B018
    p.hook.kdlab_run_end(run=None, metrics={}, status="FINISHED")
    assert "kdlab trace" not in capsys.readouterr().err
