"""A study's record in MLflow, written through the :class:`~kdlab.tracking.Tracker`: the parent run (found again
when a study resumes), the teacher's and the baseline's metrics on it, runs an interrupted process left RUNNING,
and at the end the best trial(s), plots and the best student model."""

from __future__ import annotations

import json
from typing import Any

import yaml

from kdlab.config import flatten, load_config
from kdlab.study import attrs
from kdlab.study.config import LoadedStudy, trial_overrides
from kdlab.study.plots import study_figures
from kdlab.study.report import summarize
from kdlab.study.trials import fail_reason
from kdlab.tracking import TrackedRun, Tracker


def open_parent_run(study, lstudy: LoadedStudy, tracker: Tracker) -> TrackedRun:
    """The study's parent run: the one recorded on the study (reopened) when it is in this experiment, else a new
    one with the base config, the search space and the study settings.

    The caller holds the study's storage lock, so that processes that start together on several machines find one
    parent run: the first creates it and records it on the study, the others find it there."""
    run_id = study.user_attrs.get(attrs.PARENT)
    if run_id:
        found = tracker.run_info(run_id)
        if found is not None and found.info.experiment_id == tracker.experiment_id:
            parent = tracker.run(run_id)
            if found.info.status != "RUNNING":
                parent.reopen()
            return parent
    parent = tracker.start(f"study-{lstudy.name}", tags={"kdlab.role": "study", "kdlab.study": lstudy.name})
    s = lstudy.study
    space = {k: d.model_dump(exclude_none=True) for k, d in s.search.items()}
    params = flatten({k: v for k, v in lstudy.loaded.config.resolved_dict().items() if k not in ("study", "tracking")})
    params.update({f"search.{k}": json.dumps(v) for k, v in space.items()})
    params.update({"study.sampler": s.sampler.name, "study.pruner": s.pruner.name,
                   "study.objective": json.dumps([o.model_dump() for o in s.objectives])})
    parent.log_params(params)
    parent.log_text(yaml.safe_dump({"search": space}, sort_keys=False), "search_space.yaml")
    parent.log_text(yaml.safe_dump(lstudy.loaded.source.data, sort_keys=False), "study.yaml")
    study.set_user_attr(attrs.PARENT, parent.run_id)
    study.set_user_attr(attrs.SEARCH, space)
    return parent


#: the MLflow status of a trial run, by the state of its trial
_RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def close_finished_runs(study, tracker: Tracker, parent_run_id: str) -> None:
    """Trial runs left ``RUNNING`` under the parent whose trial has ended (a process died before it closed its run)
    end with the status of their trial. Runs of trials that still run are left alone: they may belong to a live
    process on this machine or another one."""
    trials = {str(t.number): t for t in study.get_trials(deepcopy=False)}
    for run in tracker.search_runs(f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'"):
        trial = trials.get(run.data.tags.get("kdlab.trial_number") or run.data.params.get("trial_number", ""))
        if trial is None or trial.state.name not in _RUN_STATUS:
            continue
        handle = tracker.run(run.info.run_id)
        tags = {"kdlab.trial_state": trial.state.name}
        if trial.state.name != "COMPLETE":
            tags["kdlab.fail_reason"] = fail_reason(trial)[:5000]
        handle.set_tags(tags)
        handle.end(_RUN_STATUS[trial.state.name])


def finalize(study, lstudy: LoadedStudy, tracker: Tracker, parent: TrackedRun, status: str) -> None:
    """Record the best trial(s), plots and the best student model on the parent run; end it with ``status``."""
    summary = summarize(study)
    states = summary["states"]
    metrics = {f"trials_{k.lower()}": float(v) for k, v in states.items()}
    tags = {"kdlab.trial_states": json.dumps(states)}
    if summary["best"]:
        b = summary["best"][0]
        metrics.update({f"best_{k}": float(v) for k, v in b["metrics"].items()})
        metrics["best_trial_number"] = float(b["number"])
        tags.update({f"best.{k}": str(v) for k, v in b["params"].items()})
        if b["run_id"]:
            tags["kdlab.best_run_id"] = b["run_id"]
            tags["mlflow.note.content"] = f"Best trial: [trial-{b['number']}]({tracker.run_url(b['run_id'])})"
        parent.log_text(json.dumps(summary["best"], indent=2, default=str), "best_trials.json")
    parent.set_tags(tags)
    parent.log_metrics(metrics)
    figures, skipped = study_figures(study, [o.metric for o in lstudy.study.objectives])
    import matplotlib.pyplot as plt

    for name, fig in figures:
        parent.log_figure(fig, f"plots/{name}.png")
        plt.close(fig)
    parent.set_tags({f"kdlab.plot_skipped.{name}": why[:500] for name, why in skipped.items()})
    if summary["best"] and lstudy.study.log_best_model and status == "FINISHED":
        try:
            log_best_model(study, lstudy, tracker, summary["best"][0])
        except Exception as exc:  # noqa: BLE001 - the study's results stand without the model copy
            parent.set_tags({"kdlab.best_model_error": f"{type(exc).__name__}: {exc}"[:5000]})
    parent.end(status)


def log_best_model(study, lstudy: LoadedStudy, tracker: Tracker, best: dict[str, Any]) -> None:
    """Log the best trial's student (from its state_dict artifact) with ``mlflow.pytorch.log_model``."""
    from kdlab.models import build_model
    from kdlab.session import Session
    from kdlab.weights import load_state_dict_file, load_weights

    run_id = best["run_id"]
    if not run_id:
        return
    if any(o.path.startswith("student") and o.is_dir for o in tracker.list_artifacts(run_id)) and \
            any(f.path.endswith("MLmodel") for f in tracker.list_artifacts(run_id, "student")):
        return
    trial = study.trials[best["number"]]
    chosen = {k: decode(lstudy, k, v) for k, v in trial.params.items()}
    loaded = load_config(lstudy.loaded.source, registry=lstudy.loaded.registry,
                         overrides={**lstudy.overrides, **trial_overrides(lstudy, chosen)})
    data = Session().get_data(loaded)
    model = build_model(loaded.components["student"], loaded.params["student"], data)
    local = tracker.download(run_id, "student/state_dict.pt")
    load_weights(model, load_state_dict_file(local, "best trial"), key="best trial", value=run_id)
    run = tracker.run(run_id)
    run.log_model(model, "student", data.train.x[:8])
    run.set_tags({"kdlab.best": "true"})


def decode(lstudy: LoadedStudy, key: str, value: Any) -> Any:
    """Categorical choices that are lists travel through Optuna as YAML text."""
    dim = lstudy.study.search.get(key)
    if dim is not None and dim.type == "categorical":
        enc = dim.grid()
        if value in enc:
            return dim.choices[enc.index(value)]
    return value
