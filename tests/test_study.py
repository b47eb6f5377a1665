"""Studies: search-space parsing and errors, the conditional space, the MLflow layout, faults, resume, workers."""

from __future__ import annotations

import optuna
import pytest
from pydantic import BaseModel, ConfigDict

import kdlab
from conftest import tiny_digits_config
from kdlab.errors import ConfigError
from kdlab.study.config import load_study_config, sample, trial_overrides
from kdlab.study.devices import plan_slots
from kdlab.study.runner import StudyOptions, run_study
from kdlab.study.storage import make_storage
from kdlab_test_helpers import load_config


def study_config(**study) -> dict:
    cfg = tiny_digits_config()
    cfg["study"] = {
        "n_trials": 3,
        "search": {
            "loss.params.temperature": {"type": "float", "low": 1.0, "high": 8.0},
            "optimizer.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
        },
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "workers": 1,
        "devices": "cpu",
        "log_best_model": False,
    }
    cfg["study"].update(study)
    return cfg


def mlflow_runs(home, experiment):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id])


def load_study(home, name):
    return optuna.load_study(study_name=name, storage=make_storage(f"journal:{home / 'optuna.journal'}"))


# --- search space ---------------------------------------------------------------------------------------------


def test_search_space_errors_name_the_key(write_config):
    cfg = study_config(search={
        "loss.params.temperature": {"type": "float", "low": 5.0, "high": 1.0},
        "optimizer.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True},
        "training.epochs": {"type": "int", "low": 0, "high": 3},
        "student.params.nonsense": {"type": "int", "low": 1, "high": 3},
        "optimizer.beta": {"type": "categorical", "choices": [1, 2]},
    })
    with pytest.raises(ConfigError) as info:
        load_study_config(load_config(write_config(cfg)))
    text = str(info.value)
    assert "study.search.loss.params.temperature" in text and "low (5.0) must be below high (1.0)" in text
    assert "log scale needs low > 0" in text
    assert "study.search.training.epochs" in text and "greater than 0" in text
    assert "study.search.student.params.nonsense" in text and "unknown param" in text
    assert "study.search.optimizer.beta" in text and "unknown key" in text


def test_objective_may_not_be_a_test_metric(write_config):
    with pytest.raises(ConfigError, match="test metrics are recorded but never drive the search"):
        load_study_config(load_config(write_config(study_config(objective={"metric": "test_accuracy"}))))


def test_unknown_dimension_type_and_sampler(write_config):
    cfg = study_config(search={"optimizer.lr": {"type": "loguniform", "low": 1, "high": 2}}, sampler={"name": "bogus"})
    with pytest.raises(ConfigError) as info:
        load_study_config(load_config(write_config(cfg)))
    assert "study.search.optimizer.lr" in str(info.value) and "study.sampler.name" in str(info.value)


def test_conditional_space_samples_only_the_chosen_losses_params(write_config):
    cfg = study_config(search={
        "loss.name": {"type": "categorical", "choices": ["kd", "ce"]},
        "loss.params.temperature": {"type": "float", "low": 1.0, "high": 8.0},
        "loss.params.alpha": {"type": "float", "low": 0.1, "high": 0.9},
        "training.batch_size": {"type": "int", "low": 32, "high": 64, "when": {"loss.name": "kd"}},
    })
    lstudy = load_study_config(load_config(write_config(cfg)))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        chosen = sample(lstudy, trial)
        seen.add(chosen["loss.name"])
        if chosen["loss.name"] == "ce":
            assert set(chosen) == {"loss.name"}
            over = trial_overrides(lstudy, chosen)
            assert over["loss.params"] == {}  # ce starts from its own (empty) params, not kd's
            load_config(lstudy.loaded.source, overrides=over)  # and is a valid config
        else:
            assert set(chosen) == {"loss.name", "loss.params.temperature", "loss.params.alpha", "training.batch_size"}
        study.tell(trial, 0.5)
    assert seen == {"kd", "ce"}


@pytest.mark.parametrize("declared", [True, False])
def test_searching_the_loss_also_searches_its_declared_space(write_config, declared):
    """A loss chosen by the search gets the space its plugin declares for the params the file does not search
    (dkd's beta, ls's epsilon); the file's own dimensions keep their ranges."""
    cfg = study_config(declared_space=declared, search={
        "loss.name": {"type": "categorical", "choices": ["dkd", "ls"]},
        "loss.params.temperature": {"type": "float", "low": 2.0, "high": 3.0},
    })
    lstudy = load_study_config(load_config(write_config(cfg)))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {}
    for _ in range(10):
        trial = study.ask()
        chosen = sample(lstudy, trial)
        seen[chosen["loss.name"]] = set(chosen)
        if chosen["loss.name"] == "dkd":
            assert 2.0 <= chosen["loss.params.temperature"] <= 3.0  # the file's range, not dkd's declared 1-8
            if declared:
                assert 1.0 <= chosen["loss.params.beta"] <= 10.0 and 0.5 <= chosen["loss.params.alpha"] <= 2.0
        load_config(lstudy.loaded.source, overrides=trial_overrides(lstudy, chosen))
        study.tell(trial, 0.5)
    if declared:
        assert seen == {"dkd": {"loss.name", "loss.params.temperature", "loss.params.alpha", "loss.params.beta"},
                        "ls": {"loss.name", "loss.params.epsilon"}}
    else:
        assert seen == {"dkd": {"loss.name", "loss.params.temperature"}, "ls": {"loss.name"}}


def test_a_plugins_invalid_declared_space_is_named_at_validation(plugins, write_config):
    from pydantic import BaseModel

    from kdlab.errors import PluginError

    class P(BaseModel):
        w: float = 1.0

    class BadSpace:
        @kdlab.hookimpl
        def kdlab_register_losses(self, register):
            register("badspace", lambda p: None, P, search_space={"w": {"type": "float", "low": 2, "high": 1}})

    plugins.register(BadSpace(), "test-badspace")
    cfg = study_config(search={"loss.name": {"type": "categorical", "choices": ["kd", "badspace"]}})
    with pytest.raises(PluginError, match=r"loss 'badspace' from plugin 'test-badspace' declares a search space "
                                          r"entry 'w'"):
        load_study_config(load_config(write_config(cfg)))


def test_loss_param_that_no_searched_loss_has_is_an_error(write_config):
    cfg = study_config(search={"loss.name": {"type": "categorical", "choices": ["kd", "ce"]},
                               "loss.params.gamma": {"type": "float", "low": 1.0, "high": 2.0}})
    with pytest.raises(ConfigError, match="none of the searched losses"):
        load_study_config(load_config(write_config(cfg)))


def test_categorical_list_choices_round_trip(write_config):
    cfg = study_config(search={"student.params.hidden": {"type": "categorical", "choices": [[8], [16, 8]]}})
    lstudy = load_study_config(load_config(write_config(cfg)))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = set()
    for _ in range(8):
        t = study.ask()
        values.add(tuple(sample(lstudy, t)["student.params.hidden"]))
        study.tell(t, 0.0)
    assert values == {(8,), (16, 8)}


# --- devices --------------------------------------------------------------------------------------------------


def test_plan_slots_gpu_and_cpu():
    slots = plan_slots(["cuda:0", "cuda:1"], 4, cpu_count=16)
    assert [s.device for s in slots] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    slots = plan_slots("auto", "auto", cpu_count=8, cuda_devices=["cuda:0", "cuda:1"])
    assert [s.device for s in slots] == ["cuda:0", "cuda:1"]
    cpu = plan_slots("auto", "auto", cpu_count=2, cuda_devices=[])
    assert [(s.device, s.threads) for s in cpu] == [("cpu", 1), ("cpu", 1)]
    assert [(s.device, s.threads) for s in plan_slots("cpu", 1, cpu_count=8)] == [("cpu", 8)]
    assert [s.threads for s in plan_slots("cpu", 3, cpu_count=8)] == [2, 2, 2]


def test_tiny_study_mlflow_layout(write_config, kdlab_home):
    path = write_config(study_config(n_trials=3, log_best_model=True), "tiny.yaml")
    summary = run_study(str(path), StudyOptions(quiet=True))
    assert summary["states"] == {"COMPLETE": 3}
    client, runs = mlflow_runs(kdlab_home, "tiny")
    by_name = {r.info.run_name: r for r in runs}
    parent = by_name["study-tiny"]
    assert parent.info.status == "FINISHED" and parent.data.tags["kdlab.role"] == "study"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["baseline-ce", "trial-0", "trial-1", "trial-2"]
    study = load_study(kdlab_home, "tiny")
    for t in study.trials:
        run = by_name[f"trial-{t.number}"]
        assert run.data.tags["kdlab.trial_state"] == "COMPLETE" and run.info.status == "FINISHED"
        assert run.data.params["trial_number"] == str(t.number)
        assert float(run.data.params["loss.params.temperature"]) == pytest.approx(t.params["loss.params.temperature"])
        assert float(run.data.params["optimizer.lr"]) == pytest.approx(t.params["optimizer.lr"])
        assert run.data.metrics["best_val_accuracy"] == t.value  # exact: the kept weights are the best epoch's
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) >= 3  # one per epoch
    # the parent records the baseline, the best trial and the plots
    pm = parent.data.metrics
    assert pm["best_val_accuracy"] == pytest.approx(study.best_value)
    assert "baseline_test_accuracy" in pm and "teacher_test_accuracy" in pm
    assert parent.data.tags["best.optimizer.lr"] == str(study.best_params["optimizer.lr"])
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/param_importances.png", "plots/parallel_coordinate.png"} <= plots
    assert by_name["baseline-ce"].data.params["loss.name"] == "ce"
    # the teacher was trained once, in the study's experiment; every trial links to it
    teachers = [r for r in runs if r.data.tags.get("kdlab.role") == "teacher"]
    assert len(teachers) == 1
    assert {by_name[f"trial-{i}"].data.tags["kdlab.teacher_run_id"] for i in range(3)} == {teachers[0].info.run_id}
    best = by_name[f"trial-{study.best_trial.number}"]
    assert any(a.path == "student" for a in client.list_artifacts(best.info.run_id))


class _Boom(kdlab.Loss):
    uses_teacher = False

    def __init__(self, params=None):
        super().__init__()

    def forward(self, inputs):
        raise RuntimeError("boom: this loss always fails")


class _NaN(kdlab.Loss):
    uses_teacher = False

    def __init__(self, params=None):
        super().__init__()

    def forward(self, inputs):
        # finite on the first batch (a NaN there is a broken loss, checked apart: docs/faults.md), NaN after
        self.calls = getattr(self, "calls", 0) + 1
        total = inputs.student_logits.sum() * (float("nan") if self.calls > 1 else 0.0)
        return kdlab.LossOutput(total, {"nan": total})


class _Empty(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FaultyLosses:
    @kdlab.hookimpl
    def kdlab_register_losses(self, register):
        register("boom", _Boom, _Empty, "always raises")
        register("nanloss", _NaN, _Empty, "always NaN")


def test_failing_and_nan_trials_are_recorded_and_the_study_goes_on(write_config, kdlab_home, plugins):
    plugins.register(FaultyLosses(), "faulty-losses")
    cfg = study_config(n_trials=3, search={"loss.name": {"type": "categorical", "choices": ["boom", "nanloss", "kd"]}},
                       sampler={"name": "grid", "seed": 0}, baseline=False)
    path = write_config(cfg, "faulty.yaml")
    summary = run_study(str(path), StudyOptions(quiet=True))
    assert summary["states"] == {"FAIL": 2, "COMPLETE": 1}
    study = load_study(kdlab_home, "faulty")
    reasons = {t.params["loss.name"]: t.user_attrs.get("fail_reason", "") for t in study.trials}
    assert "boom: this loss always fails" in reasons["boom"]
    assert "NonFiniteLoss" in reasons["nanloss"] and "nan" in reasons["nanloss"]
    assert study.best_trial.params["loss.name"] == "kd"
    _, runs = mlflow_runs(kdlab_home, "faulty")
    by_loss = {r.data.params.get("loss.name"): r for r in runs if r.data.tags.get("kdlab.role") == "trial"}
    for name in ("boom", "nanloss"):
        assert by_loss[name].info.status == "FAILED"
        assert by_loss[name].data.tags["kdlab.trial_state"] == "FAIL"
        assert by_loss[name].data.tags["kdlab.fail_reason"]
    assert by_loss["kd"].data.tags["kdlab.trial_state"] == "COMPLETE"


def dead_owner() -> dict:
    """The owner record of a process of this machine that has exited."""
    import subprocess
    import sys

    from kdlab.study.trials import this_process

    child = subprocess.Popen([sys.executable, "-c", "import os; print(os.getpid())"], stdout=subprocess.PIPE,
                             text=True)
    out, _ = child.communicate(timeout=60)
    return {**this_process(), "pid": int(out), "start": "0"}


def test_resume_keeps_completed_trials_and_retries_stale_ones(write_config, kdlab_home):
    path = write_config(study_config(n_trials=2, baseline=False), "resume.yaml")
    run_study(str(path), StudyOptions(quiet=True))
    study = load_study(kdlab_home, "resume")
    before = {t.number: (t.params, t.value, t.datetime_complete) for t in study.trials}
    assert len(before) == 2
    # a trial left RUNNING by a process that was killed
    stale = study.ask()
    stale.set_user_attr("owner", dead_owner())
    stale.suggest_float("optimizer.lr", 1e-3, 3e-2, log=True)
    summary = run_study(str(path), StudyOptions(quiet=True, n_trials=3))
    study = load_study(kdlab_home, "resume")
    for number, (params, value, done) in before.items():
        t = study.trials[number]
        assert (t.params, t.value, t.datetime_complete) == (params, value, done)  # not re-run
    failed = study.trials[stale.number]
    assert failed.state.name == "FAIL" and failed.user_attrs["fail_reason"].startswith("stale: owner ")
    # the stale trial does not count; it is retried once, with its params, as a new trial
    retry = study.trials[-1]
    assert retry.user_attrs["retry_of"] == stale.number and retry.state.name == "COMPLETE"
    assert retry.params["optimizer.lr"] == failed.params["optimizer.lr"]
    assert summary["states"] == {"COMPLETE": 3, "FAIL": 1}
    # a third run finds the budget spent and runs nothing
    summary = run_study(str(path), StudyOptions(quiet=True, n_trials=3))
    assert summary["states"] == {"COMPLETE": 3, "FAIL": 1}
    _, runs = mlflow_runs(kdlab_home, "resume")
    assert len([r for r in runs if r.data.tags.get("kdlab.role") == "study"]) == 1  # the parent run is reused
    retried = next(r for r in runs if r.info.run_name == f"trial-{retry.number}")
    assert retried.data.tags["kdlab.retry_of"] == str(stale.number)


def test_a_live_trial_is_never_failed_by_a_process_that_starts(write_config, kdlab_home):
    """The bug of issue 16: a second `kdlab study` marked the first one's running trial FAIL (interrupted)."""
    from kdlab.study.trials import this_process

    path = write_config(study_config(n_trials=2, baseline=False), "live.yaml")
    run_study(str(path), StudyOptions(quiet=True, n_trials=1))
    study = load_study(kdlab_home, "live")
    live = study.ask()  # running in a live process: this one
    live.set_user_attr("owner", this_process())
    summary = run_study(str(path), StudyOptions(quiet=True, n_trials=2, timeout=3))
    study = load_study(kdlab_home, "live")
    assert study.trials[live.number].state.name == "RUNNING"  # waited for (until the deadline), never failed
    assert summary["states"] == {"COMPLETE": 1, "RUNNING": 1}
    study.tell(live, 0.5)  # its owner can still tell its result


def test_multi_objective_study_has_a_pareto_front(write_config, kdlab_home):
    cfg = study_config(n_trials=3, baseline=False, search={
        "student.params.hidden": {"type": "categorical", "choices": [[4], [32]]},
        "optimizer.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}},
        objective=[{"metric": "val_accuracy", "direction": "maximize"},
                   {"metric": "student_params", "direction": "minimize"}])
    summary = run_study(str(write_config(cfg, "pareto.yaml")), StudyOptions(quiet=True))
    assert summary["directions"] == ["maximize", "minimize"]
    assert summary["best"] and all(len(b["values"]) == 2 for b in summary["best"])
    client, runs = mlflow_runs(kdlab_home, "pareto")
    parent = next(r for r in runs if r.data.tags.get("kdlab.role") == "study")
    assert "plots/pareto_front.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}


def test_study_show_reads_the_storage(write_config, kdlab_home, capsys):
    from kdlab.cli import main

    path = write_config(study_config(n_trials=2, baseline=False), "shown.yaml")
    assert main(["study", "show", str(path)]) == 1  # nothing yet: a clear error
    assert "no study named 'shown'" in capsys.readouterr().err
    run_study(str(path), StudyOptions(quiet=True))
    assert main(["study", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "study shown: 2 complete" in out and "best trial" in out and "optimizer.lr" in out
