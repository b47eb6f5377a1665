"""Keep docs/plugins.md and the tests honest: every hook is documented with its exact signature and tested, every
component kind and public type has a documented contract, and the lifecycle hooks fire in a recorded order."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

import kdlab
from kdlab import hookspecs
from kdlab.config import load_config
from kdlab.engine import RunOptions, Session, run
from kdlab.plugins import CONTRIBUTION_HOOKS, ENV_DISABLE, ENV_PLUGINS, ENV_TRACE, Plugins
from kdlab.registry import KINDS
from kdlab_test_helpers import tiny_digits_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "docs" / "plugins.md").read_text()
HOOKS = Plugins().hook_names()


def signature(hook: str) -> str:
    """``def name(arg: type, ...) -> type`` from kdlab.hookspecs, as the docs must show it."""
    sig = inspect.signature(getattr(hookspecs, hook))
    args = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"def {hook}({args}) -> {sig.return_annotation}:"


def section(title: str) -> str:
    """The text under the heading ``title`` up to the next heading of the same or a higher level."""
    m = re.search(rf"^(#+) {re.escape(title)}\s*$", DOCS, re.M)
    assert m, f"docs/plugins.md has no heading {title!r}"
    level = len(m.group(1))
    end = re.compile(rf"^#{{1,{level}}} ", re.M).search(DOCS, m.end())
    return DOCS[m.end(): end.start() if end else len(DOCS)]


def test_there_are_hooks_and_each_kind_has_a_contribution_hook():
    assert set(CONTRIBUTION_HOOKS) == set(KINDS)
    assert set(CONTRIBUTION_HOOKS.values()) <= set(HOOKS)
    assert {"kdlab_run_start", "kdlab_epoch_end", "kdlab_run_end", "kdlab_trial_end"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_with_its_exact_signature(hook):
    text = section(f"`{hook}`")
    assert signature(hook) in text, f"docs/plugins.md: {hook} must show `{signature(hook)}`"
    firstresult = getattr(hookspecs, hook).kdlab_spec["firstresult"]
    assert f"**firstresult**: {'yes' if firstresult else 'no'}" in text
    for word in ("**Called**", "**Arguments**", "**Returns**", "**Example**"):
        assert word in text, f"docs/plugins.md: {hook} lacks {word}"
    for arg in inspect.signature(getattr(hookspecs, hook)).parameters:
        assert f"`{arg}`" in text, f"docs/plugins.md: {hook} does not describe its argument {arg!r}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hookspec_docstring_uses_the_fixed_words(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    for word in ("**Called**", "**Arguments**", "**Returns**", "**firstresult**"):
        assert word in doc, f"kdlab.hookspecs.{hook} docstring lacks {word}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    sources = [p.read_text() for p in (ROOT / "tests").glob("test_*.py") if p.name != Path(__file__).name]
    sources.append(inspect.getsource(test_lifecycle_hooks_fire_in_order))
    sources.append(inspect.getsource(test_trial_end_implementation_may_take_any_subset_of_arguments))
    assert any(hook in s for s in sources), f"no test mentions {hook}"


@pytest.mark.parametrize("kind", KINDS)
def test_every_component_kind_has_a_documented_contract(kind):
    text = section(f"The `{kind}` contract")
    assert CONTRIBUTION_HOOKS[kind] in text
    assert "factory(" in text


PUBLIC_TYPES = ["Split", "Data", "Loss", "LossInputs", "LossOutput", "LossSetup", "RunInfo"]


@pytest.mark.parametrize("name", PUBLIC_TYPES)
def test_public_type_is_documented_with_every_field(name):
    text = section(f"`kdlab.{name}`")
    cls = getattr(kdlab, name)
    fields = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else \
        ["uses_teacher", "live_teacher", "student_layers", "teacher_layers", "setup", "forward"]
    for field in fields:
        assert f"`{field}`" in text, f"docs/plugins.md: kdlab.{name} does not describe {field!r}"


def test_plugin_facing_names_and_environment_variables_are_documented():
    for name in ("kdlab.hookimpl", "kdlab.UNLABELED", "kdlab.PluginError", "register(", "kdlab plugins",
                 "kdlab plugins show", "--json", "kdlab.testing", "pytest11", "[project.entry-points.kdlab]"):
        assert name in DOCS, f"docs/plugins.md does not mention {name}"
    for var in (ENV_PLUGINS, ENV_DISABLE, ENV_TRACE):
        assert f"`{var}`" in DOCS


# ----------------------------------------------------------------------------------------------------------------
# The order of hook calls (STYLE.md point 8)
# ----------------------------------------------------------------------------------------------------------------


class Recorder:
    """Records every hook call; implementations take subsets of the arguments, as plugins may."""

    def __init__(self):
        self.calls: list[tuple] = []

    @kdlab.hookimpl
    def kdlab_register_data(self, register):
        self.calls.append(("kdlab_register_data",))

    @kdlab.hookimpl
    def kdlab_register_teachers(self, register):
        self.calls.append(("kdlab_register_teachers",))

    @kdlab.hookimpl
    def kdlab_register_students(self):
        self.calls.append(("kdlab_register_students",))

    @kdlab.hookimpl
    def kdlab_register_losses(self, register):
        self.calls.append(("kdlab_register_losses",))

    @kdlab.hookimpl
    def kdlab_run_start(self, run):
        self.calls.append(("kdlab_run_start", run.role))

    @kdlab.hookimpl
    def kdlab_epoch_end(self, run, epoch, metrics):
        assert {"train_loss", "val_accuracy", "val_loss"} <= set(metrics), metrics
        self.calls.append(("kdlab_epoch_end", run.role, epoch))

    @kdlab.hookimpl
    def kdlab_run_end(self, status, run, metrics):
        self.calls.append(("kdlab_run_end", run.role, status, "test_accuracy" in metrics or
                           "teacher_test_accuracy" in metrics))

    @kdlab.hookimpl
    def kdlab_trial_end(self, study, trial_number, state):
        self.calls.append(("kdlab_trial_end", study, trial_number, state))


def test_lifecycle_hooks_fire_in_order(plugins, write_config):
    recorder = Recorder()
    plugins.register(recorder, "recorder")
    cfg = tiny_digits_config(**{"tracking.enabled": False, "training.epochs": 2, "teacher.training.epochs": 2,
                                "training.threads": 1})
    loaded = load_config(write_config(cfg))
    session = Session()
    run(loaded, RunOptions(), session)
    assert recorder.calls == [
        ("kdlab_register_data",), ("kdlab_register_teachers",), ("kdlab_register_students",),
        ("kdlab_register_losses",),
        ("kdlab_run_start", "teacher"),
        ("kdlab_epoch_end", "teacher", 1), ("kdlab_epoch_end", "teacher", 2),
        ("kdlab_run_end", "teacher", "FINISHED", True),
        ("kdlab_run_start", "student"),
        ("kdlab_epoch_end", "student", 1), ("kdlab_epoch_end", "student", 2),
        ("kdlab_run_end", "student", "FINISHED", True),
    ]

    # A run that fails still ends with kdlab_run_end (the session's teacher is reused: no teacher hooks).
    recorder.calls.clear()

    def stop(epoch, metrics):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        run(loaded, RunOptions(role="trial", trial_number=7, epoch_callbacks=[stop]), session)
    assert recorder.calls == [
        ("kdlab_run_start", "trial"), ("kdlab_epoch_end", "trial", 1), ("kdlab_run_end", "trial", "FAILED", False),
    ]


def test_trial_end_implementation_may_take_any_subset_of_arguments(plugins):
    # `kdlab study` calls kdlab_trial_end (kdlab/study/worker.py) after each trial's kdlab_run_end. A whole study is
    # too slow for this file (a fresh MLflow store costs seconds), so the call is made here as the worker makes it.
    recorder = Recorder()
    plugins.register(recorder, "recorder")
    plugins.hook.kdlab_trial_end(study="s", trial_number=3, state="PRUNED", params={"loss.params.alpha": 0.5},
                                 metrics={})
    assert recorder.calls == [("kdlab_trial_end", "s", 3, "PRUNED")]
