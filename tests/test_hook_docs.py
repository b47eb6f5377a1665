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
from kdlab.errors import Pruned
from kdlab.modes import RunOptions, Session, run
from kdlab.plugins import CONTRIBUTION_HOOKS, ENV_DISABLE, ENV_PLUGINS, ENV_TRACE, Plugins
from kdlab.registry import KINDS
from kdlab_test_helpers import load_config, tiny_digits_config

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
def test_hook_has_a_test_that_calls_or_implements_it(hook):
    """A hook is tested when some test calls it (``.hook.<name>(``) or registers an implementation of it (a
    ``@kdlab.hookimpl`` function of that name); a mere mention of the name does not count."""
    called = re.compile(rf"\.hook\.{hook}\(")
    implemented = re.compile(rf"@kdlab\.hookimpl[^\n]*\n\s*def {hook}\(")
    sources = [p.read_text() for p in (ROOT / "tests").glob("test_*.py")]
    assert any(called.search(s) or implemented.search(s) for s in sources), f"no test calls or implements {hook}"


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
        # a continual run names its epoch metrics per task (task0_train_loss, ...)
        prefix = f"task{(epoch - 1) // 2}_" if run.role == "continual" else ""
        assert {f"{prefix}train_loss", f"{prefix}val_accuracy", f"{prefix}val_loss"} <= set(metrics), metrics
        self.calls.append(("kdlab_epoch_end", run.role, epoch))

    @kdlab.hookimpl
    def kdlab_run_end(self, status, run, metrics):
        self.calls.append(("kdlab_run_end", run.role, status, "test_accuracy" in metrics or
                           "teacher_test_accuracy" in metrics))

    @kdlab.hookimpl
    def kdlab_trial_end(self, study, trial_number, state):
        self.calls.append(("kdlab_trial_end", study, trial_number, state))


def _tiny(write_config, **overrides):
    cfg = tiny_digits_config(**{"tracking.enabled": False, "training.epochs": 2, "teacher.training.epochs": 2,
                                "training.threads": 1, **overrides})
    return load_config(write_config(cfg))


def test_lifecycle_hooks_fire_in_order(plugins, write_config):
    recorder = Recorder()
    plugins.register(recorder, "recorder")
    loaded = _tiny(write_config)
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

    # A run whose observer raises still ends with kdlab_run_end, FAILED (the session's teacher is reused: no
    # teacher hooks); one stopped on purpose (a pruner raising kdlab.errors.Pruned) ends KILLED.
    class Stop:
        def __init__(self, exc):
            self.exc = exc

        @kdlab.hookimpl(trylast=True)
        def kdlab_epoch_end(self, run):
            raise self.exc

    for exc, status in ((RuntimeError("stop"), "FAILED"), (Pruned("enough"), "KILLED")):
        recorder.calls.clear()
        with pytest.raises(type(exc)):
            run(loaded, RunOptions(role="trial", trial_number=7, observers=[Stop(exc)]), session)
        assert recorder.calls == [
            ("kdlab_run_start", "trial"), ("kdlab_epoch_end", "trial", 1), ("kdlab_run_end", "trial", status, False),
        ]


def test_lifecycle_of_an_assistant_chain(plugins, write_config):
    recorder = Recorder()
    plugins.register(recorder, "recorder")
    loaded = _tiny(write_config, assistant={"name": "mlp", "params": {"hidden": [8]}, "epochs": 1})
    run(loaded)
    lifecycle = [c for c in recorder.calls if c[0] in ("kdlab_run_start", "kdlab_epoch_end", "kdlab_run_end")]
    assert lifecycle == [
        ("kdlab_run_start", "teacher"), ("kdlab_epoch_end", "teacher", 1), ("kdlab_epoch_end", "teacher", 2),
        ("kdlab_run_end", "teacher", "FINISHED", True),
        ("kdlab_run_start", "assistant"), ("kdlab_epoch_end", "assistant", 1),
        ("kdlab_run_end", "assistant", "FINISHED", True),
        ("kdlab_run_start", "student"), ("kdlab_epoch_end", "student", 1), ("kdlab_epoch_end", "student", 2),
        ("kdlab_run_end", "student", "FINISHED", True),
    ]


def test_lifecycle_of_a_continual_run_counts_epochs_across_tasks(plugins, write_config):
    recorder = Recorder()
    plugins.register(recorder, "recorder")
    cfg = tiny_digits_config(**{"tracking.enabled": False, "training.epochs": 2, "training.threads": 1,
                                "continual": {}})
    del cfg["teacher"]
    cfg["loss"] = {"name": "ce"}
    run(load_config(write_config(cfg)))
    lifecycle = [c for c in recorder.calls if c[0] in ("kdlab_run_start", "kdlab_epoch_end", "kdlab_run_end")]
    assert lifecycle == [
        ("kdlab_run_start", "continual"),
        *[("kdlab_epoch_end", "continual", e) for e in (1, 2, 3, 4)],
        ("kdlab_run_end", "continual", "FINISHED", False),
    ]


def test_kdlab_trial_end_fires_once_per_trial_of_a_real_study_with_its_state(plugins, write_config):
    """A study (in-process worker) with a recorder plugin: kdlab_trial_end fires once per trial, after that
    trial's kdlab_run_end, with COMPLETE, PRUNED (an observer stops the run on purpose) or FAIL (it raises)."""
    from kdlab.study.runner import StudyOptions, run_study

    class Steer(Recorder):
        @kdlab.hookimpl(trylast=True)
        def kdlab_epoch_end(self, run, epoch, metrics):
            super().kdlab_epoch_end(run, epoch, metrics)
            if run.trial_number == 1:
                raise Pruned("steered")
            if run.trial_number == 2:
                raise RuntimeError("broken on purpose")

    recorder = Steer()
    plugins.register(recorder, "recorder")
    cfg = tiny_digits_config(**{"training.epochs": 2, "teacher.training.epochs": 2, "training.threads": 1})
    cfg["study"] = {"n_trials": 3, "workers": 1, "baseline": False, "log_best_model": False,
                    "search": {"loss.params.alpha": {"type": "float", "low": 0.1, "high": 0.9}},
                    "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"}}
    summary = run_study(str(write_config(cfg, "study.yaml")), StudyOptions(quiet=True))
    assert summary["states"] == {"COMPLETE": 1, "PRUNED": 1, "FAIL": 1}
    ends = [c for c in recorder.calls if c[0] == "kdlab_trial_end"]
    assert ends == [("kdlab_trial_end", "study", 0, "COMPLETE"), ("kdlab_trial_end", "study", 1, "PRUNED"),
                    ("kdlab_trial_end", "study", 2, "FAIL")]
    trial_runs = [c for c in recorder.calls if c[0] in ("kdlab_run_end", "kdlab_trial_end") and
                  (c[0] == "kdlab_trial_end" or c[1] == "trial")]
    assert [c[0] for c in trial_runs] == ["kdlab_run_end", "kdlab_trial_end"] * 3
    assert [c[2] for c in trial_runs if c[0] == "kdlab_run_end"] == ["FINISHED", "KILLED", "FAILED"]
