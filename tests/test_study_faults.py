"""Study faults (docs/faults.md): a trial that fails before its run starts still has an MLflow run with the reason;
the grid sampler with several workers runs each point exactly once."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from test_study import load_study, mlflow_runs, study_config

import kdlab
from kdlab.study.runner import StudyOptions, run_study


class _Empty(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _explode(params):
    raise RuntimeError("this loss cannot be built")


def test_a_trial_that_fails_before_its_run_starts_is_recorded_in_mlflow(plugins, write_config, kdlab_home):
    plugins.register(type("P", (), {"kdlab_register_losses": staticmethod(kdlab.hookimpl(
        lambda register: register("explode", _explode, _Empty, "fails to build")))})(), "test-explode")
    cfg = study_config(n_trials=2, baseline=False, search={
        "loss.name": {"type": "categorical", "choices": ["explode"]},
        "optimizer.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}})
    del cfg["teacher"]
    cfg["loss"] = {"name": "ce"}
    summary = run_study(str(write_config(cfg, "early.yaml")), StudyOptions(quiet=True))
    assert summary["states"] == {"FAIL": 2}
    study = load_study(kdlab_home, "early")
    _, runs = mlflow_runs(kdlab_home, "early")
    trials = {r.info.run_name: r for r in runs if r.data.tags.get("kdlab.role") == "trial"}
    assert sorted(trials) == ["trial-0", "trial-1"]
    for t in study.trials:
        run = trials[f"trial-{t.number}"]
        assert run.info.run_id == t.user_attrs["mlflow_run_id"]
        assert run.info.status == "FAILED" and run.data.tags["kdlab.trial_state"] == "FAIL"
        assert "this loss cannot be built" in run.data.tags["kdlab.fail_reason"] == t.user_attrs["fail_reason"]
        assert run.data.params["loss.name"] == "explode" and "optimizer.lr" in run.data.params


def test_the_grid_sampler_with_two_workers_runs_each_point_once(write_config, kdlab_home):
    cfg = study_config(n_trials=20, workers=2, baseline=False, sampler={"name": "grid", "seed": 0}, search={
        "optimizer.lr": {"type": "float", "low": 0.01, "high": 0.04, "step": 0.01}})
    del cfg["teacher"]
    cfg["loss"] = {"name": "ce"}
    cfg["training"]["epochs"] = 1
    summary = run_study(str(write_config(cfg, "grid.yaml")), StudyOptions(quiet=True))
    assert summary["states"] == {"COMPLETE": 4}  # the budget is the grid's size
    study = load_study(kdlab_home, "grid")
    assert sorted(round(t.params["optimizer.lr"], 6) for t in study.trials) == [0.01, 0.02, 0.03, 0.04]
