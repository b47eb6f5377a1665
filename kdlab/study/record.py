"""A study's record in MLflow, written through the :class:`~kdlab.tracking.Tracker`: the experiment's and the parent
run's descriptions, the parent run (found again when a study resumes) with the base config less what is searched,
runs an interrupted process left RUNNING, and at the end the best trial(s), each trial's objective as a stepped
metric, the plots, the teacher's link back to the study and the best student model (logged, and registered when
asked)."""

from __future__ import annotations

import json
import logging
from typing import Any

import yaml

from kdlab.config import flatten
from kdlab.metrics import COSTS
from kdlab.provenance import component_text, source_tags, used_by_line
from kdlab.study import attrs
from kdlab.study.best_model import best_student, decode
from kdlab.study.config import LoadedStudy
from kdlab.study.plots import study_plots
from kdlab.study.report import summarize
from kdlab.study.trials import fail_reason
from kdlab.tracking import NOTE, TrackedRun, Tracker

log = logging.getLogger("kdlab")

#: the best trial's final metrics the parent run shows as ``best_<name>`` (step 0)
BEST = ("val_accuracy", "test_accuracy", "agreement", "compression_ratio", "student_params",
        *(k for k in COSTS if k.startswith("student_") or k == "flops_compression_ratio"))

__all__ = ["open_parent_run", "close_finished_runs", "finalize", "decode", "parent_params", "BEST"]


def parent_params(lstudy: LoadedStudy) -> dict[str, Any]:
    """The parent run's params: the base config without the searched keys (their base values are no result) and
    without unset keys, the search space (``search.<key>``) and the study settings."""
    s = lstudy.study
    searched = tuple(s.search)
    skip = ("study", "compare", "tracking")
    flat = flatten({k: v for k, v in lstudy.loaded.config.resolved_dict().items() if k not in skip})
    params = {k: v for k, v in flat.items()
              if v is not None and not any(k == key or k.startswith(key + ".") for key in searched)}
    space = {k: d.model_dump(exclude_none=True) for k, d in s.search.items()}
    params.update({f"search.{k}": json.dumps(v) for k, v in space.items()})
    params.update({"study.sampler": s.sampler.name, "study.pruner": s.pruner.name,
                   "study.objective": json.dumps([o.model_dump() for o in s.objectives])})
    return params


def open_parent_run(study, lstudy: LoadedStudy, tracker: Tracker) -> TrackedRun:
    """The study's parent run: the one recorded on the study (reopened) when it is in this experiment, else a new
    one with the base config, the search space and the study settings.

    The caller holds the study's storage lock, so that processes that start together on several machines find one
    parent run: the first creates it and records it on the study, the others find it there."""
    run_id = study.user_attrs.get(attrs.PARENT)
    tracker.describe_experiment(experiment_description(lstudy))
    if run_id:
        found = tracker.run_info(run_id)
        if found is not None and found.info.experiment_id == tracker.experiment_id:
            parent = tracker.run(run_id)
            if found.info.status != "RUNNING":
                parent.reopen()
            return parent
    parent = tracker.start(f"study-{lstudy.name}", tags={
        "kdlab.role": "study", "kdlab.study": lstudy.name, **source_tags(lstudy.loaded),
        NOTE: f"Study `{lstudy.name}`: {_what(lstudy)}."})
    s = lstudy.study
    space = {k: d.model_dump(exclude_none=True) for k, d in s.search.items()}
    parent.log_params(parent_params(lstudy))
    parent.log_text(yaml.safe_dump({"search": space}, sort_keys=False), "search_space.yaml")
    parent.log_text(yaml.safe_dump(lstudy.loaded.source.data, sort_keys=False), "study.yaml")
    study.set_user_attr(attrs.PARENT, parent.run_id)
    study.set_user_attr(attrs.SEARCH, space)
    return parent


def _what(lstudy: LoadedStudy) -> str:
    cfg = lstudy.loaded.config
    s = lstudy.study
    teacher = f" teacher `{cfg.teacher.name}`" if cfg.teacher is not None else ""
    objective = ", ".join(f"{o.direction} {o.metric}" for o in s.objectives)
    searched = ", ".join(s.search) or "nothing"
    return (f"distils{teacher} into student {component_text(cfg.student, 40)} with loss `{cfg.loss.name}` on "
            f"`{cfg.data.name}`, searching {searched}; objective: {objective}")


def experiment_description(lstudy: LoadedStudy) -> str:
    return (f"kdlab study `{lstudy.name}` ({lstudy.loaded.name}): {_what(lstudy)}. The run `study-{lstudy.name}` "
            "holds the search space, the best trial, each trial's objective and the plots; the `trial-<n>` runs and "
            "the `ce` baseline are nested under it; the teacher is a run of its own.")


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
    """Record the best trial(s), the trials' objectives, plots and the best student model on the parent run; link
    the teacher's run back to the study; end the parent run with ``status``. Each part that fails is a tag on the
    parent run (``kdlab.<part>_error``), never the study's end."""
    summary = summarize(study)
    states = summary["states"]
    metrics = {f"trials_{k.lower()}": float(v) for k, v in states.items()}
    tags = {"kdlab.trial_states": json.dumps(states)}
    best = summary["best"][0] if summary["best"] else None
    if best:
        metrics.update({f"best_{k}": float(v) for k, v in best["metrics"].items() if k in BEST})
        metrics.update({f"best_{o.metric}": float(best["metrics"][o.metric]) for o in lstudy.study.objectives
                        if o.metric in best["metrics"]})
        metrics["best_trial_number"] = float(best["number"])
        tags.update({f"best.{k}": str(v) for k, v in best["params"].items()})
        if best["run_id"]:
            tags["kdlab.best_run_id"] = best["run_id"]
        parent.log_text(json.dumps(summary["best"], indent=2, default=str), "best_trials.json")
    tags[NOTE] = study_note(lstudy, summary, tracker)
    parent.set_tags(tags)
    parent.log_metrics(metrics)  # the study's summary: step 0 (kdlab.metrics.STEPS)
    for part, fn in (("trials", lambda: log_trial_objectives(study, lstudy, parent)),
                     ("dataset", lambda: _copy_dataset(tracker, parent, best)),
                     ("plots", lambda: log_plots(study, lstudy, parent)),
                     ("teacher_link", lambda: link_teacher(study, lstudy, tracker, parent))):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - the study's results stand without this part
            log.warning("study %s: %s not recorded: %s: %s", lstudy.name, part, type(exc).__name__, exc)
            parent.set_tags({f"kdlab.{part}_error": f"{type(exc).__name__}: {exc}"[:5000]})
    if best and lstudy.study.log_best_model and status == "FINISHED":
        try:
            best_student(study, lstudy, tracker, best, parent.run_id)
        except Exception as exc:  # noqa: BLE001 - the study's results stand without the model copy
            parent.set_tags({"kdlab.best_model_error": f"{type(exc).__name__}: {exc}"[:5000]})
    parent.end(status)


def study_note(lstudy: LoadedStudy, summary: dict[str, Any], tracker: Tracker) -> str:
    """The parent run's description: what the study does, its trials, its best trial against the references."""
    counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(summary["states"].items()))
    text = f"Study `{lstudy.name}`: {_what(lstudy)}. Trials: {counts or 'none yet'}."
    if summary["best"]:
        b = summary["best"][0]
        m = b["metrics"]
        link = f"[trial {b['number']}]({tracker.run_url(b['run_id'])})" if b["run_id"] else f"trial {b['number']}"
        parts = [f"{k} {m[k]:.4g}" for k in ("val_accuracy", "test_accuracy") if k in m]
        refs = []
        base, teacher = summary.get("baseline") or {}, summary.get("teacher") or {}
        if "test_accuracy" in base:
            refs.append(f"ce baseline {base['test_accuracy']:.4g}")
        if "teacher_test_accuracy" in teacher:
            refs.append(f"teacher {teacher['teacher_test_accuracy']:.4g}")
        text += f" Best: {link}, {', '.join(parts)}"
        text += f" (test accuracy of the {', '.join(refs)})." if refs else "."
    return text


def log_trial_objectives(study, lstudy: LoadedStudy, parent: TrackedRun) -> None:
    """Each complete trial's objective(s) as ``trials/<metric>`` at step = trial number, and for one objective the
    best so far as ``trials/best_<metric>`` (the ``/`` makes them a section of their own in the UI, above the
    summary). Stamped with the trial's completion time, so that a resumed study's record keeps one point per trial."""
    from optuna.trial import TrialState

    objectives = lstudy.study.objectives
    best = None
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        ts = int(t.datetime_complete.timestamp() * 1000) if t.datetime_complete else None
        values = {f"trials/{o.metric}": v for o, v in zip(objectives, t.values)}
        if len(objectives) == 1:
            v = t.values[0]
            if best is None or (v > best if objectives[0].direction == "maximize" else v < best):
                best = v
            values[f"trials/best_{objectives[0].metric}"] = best
        parent.log_epoch(t.number, values, timestamp_ms=ts)
    parent.flush()


def _copy_dataset(tracker: Tracker, parent: TrackedRun, best: dict[str, Any] | None) -> None:
    """The study's data, as the best trial's dataset input, on the parent run too (its Dataset column)."""
    run = tracker.run_info(best["run_id"]) if best and best["run_id"] else None
    inputs = getattr(getattr(run, "inputs", None), "dataset_inputs", None) or []
    if inputs:
        d = inputs[0].dataset
        parent.log_dataset(d.name, d.digest, d.source, source_type=d.source_type,
                           schema=json.loads(d.schema) if d.schema else None,
                           profile=json.loads(d.profile) if d.profile else None)


def log_plots(study, lstudy: LoadedStudy, parent: TrackedRun) -> None:
    """The study's pictures: ``plots/<name>.png`` and all of them in ``plots/study.html`` (interactive); a picture
    without data is a tag ``kdlab.plot_skipped.<name>`` with the reason."""
    import tempfile
    from pathlib import Path

    import matplotlib.pyplot as plt

    from kdlab.study import draw_html, draw_png

    view, names = study_plots(study, [(o.metric, o.direction) for o in lstudy.study.objectives], lstudy.study.search)
    drawn = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            try:
                fig = draw_png.figure(view, name)
            except Exception as exc:  # noqa: BLE001 - one picture's trouble costs only that picture
                view.skipped[name] = f"{type(exc).__name__}: {exc}"
                continue
            path = Path(tmp) / f"{name}.png"
            fig.savefig(path)
            plt.close(fig)
            drawn.append(name)
        if drawn and draw_html.available():
            path = Path(tmp) / "study.html"
            path.write_text(draw_html.page(view, drawn))
        for path in sorted(Path(tmp).iterdir()):
            parent.log_artifact(path, "plots")
    if view.skipped:
        parent.set_tags({f"kdlab.plot_skipped.{name}": why[:500] for name, why in view.skipped.items()})


def link_teacher(study, lstudy: LoadedStudy, tracker: Tracker, parent: TrackedRun) -> None:
    """The teacher's run names the studies that used it (tag ``kdlab.used_by_studies``, a JSON list of
    ``[study, experiment id, parent run id]``, and a line of its description with links)."""
    teacher = study.user_attrs.get(attrs.TEACHER) or {}
    run_id = teacher.get("run_id")
    found = tracker.run_info(run_id) if run_id else None
    if found is None:
        return
    used = json.loads(found.data.tags.get("kdlab.used_by_studies", "[]"))
    entry = [lstudy.name, tracker.experiment_id, parent.run_id]
    if entry in used:
        return
    used.append(entry)
    note = found.data.tags.get(NOTE, "").split("\n\nUsed by studies:")[0]
    line = used_by_line([(name, tracker.run_url(rid, eid)) for name, eid, rid in used])
    tracker.run(run_id).set_tags({"kdlab.used_by_studies": json.dumps(used), NOTE: f"{note}\n\n{line}".strip()})
