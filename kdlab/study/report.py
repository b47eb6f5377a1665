"""Study progress, the summary table, and what the parent MLflow run records at the end (best trial, plots)."""

from __future__ import annotations

import json
import time
from typing import Any

from kdlab.study.worker import ATTR_FAIL, ATTR_METRICS, ATTR_RUN_ID


def _states(study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def best_trials(study) -> list[Any]:
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    if len(study.directions) > 1:
        return sorted(study.best_trials, key=lambda t: t.number)
    return [study.best_trial]


def summarize(study) -> dict[str, Any]:
    """Everything `kdlab study show` prints, read from the Optuna storage alone."""
    attrs = study.user_attrs
    best = best_trials(study)
    return {
        "study": study.study_name,
        "directions": [d.name.lower() for d in study.directions],
        "states": _states(study),
        "best": [{"number": t.number, "values": t.values, "params": t.params,
                  "metrics": t.user_attrs.get(ATTR_METRICS, {}), "run_id": t.user_attrs.get(ATTR_RUN_ID)}
                 for t in best],
        "baseline": attrs.get("baseline_metrics"),
        "teacher": attrs.get("teacher_metrics"),
        "parent_run_id": attrs.get("mlflow_parent_run_id"),
        "experiment": attrs.get("mlflow_experiment"),
        "tracking_uri": attrs.get("mlflow_tracking_uri"),
        "failures": [{"number": t.number, "reason": t.user_attrs.get(ATTR_FAIL, "")}
                     for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL"],
    }


def render_summary(summary: dict[str, Any], console) -> None:
    from rich.table import Table

    states = summary["states"]
    console.print(f"[bold]study {summary['study']}[/bold]: " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(states.items())))
    base, teacher = summary.get("baseline") or {}, summary.get("teacher") or {}
    if not summary["best"]:
        console.print("no completed trial yet")
    for b in summary["best"][:5]:
        m = b["metrics"]
        table = Table(title=f"best trial {b['number']}" + (" (Pareto front)" if len(summary["best"]) > 1 else ""),
                      show_header=True, title_justify="left")
        table.add_column("")
        table.add_column("value", justify="right")
        for k, v in b["params"].items():
            table.add_row(k, _fmt(v))
        rows = [
            ("student val_accuracy", m.get("val_accuracy")),
            ("student test_accuracy", m.get("test_accuracy")),
            ("ce baseline val_accuracy", base.get("val_accuracy")),
            ("ce baseline test_accuracy", base.get("test_accuracy")),
            ("gain over baseline (test)", (m["test_accuracy"] - base["test_accuracy"])
             if "test_accuracy" in m and "test_accuracy" in base else None),
            ("teacher test_accuracy", teacher.get("teacher_test_accuracy", m.get("teacher_test_accuracy"))),
            ("agreement with teacher", m.get("agreement")),
            ("compression_ratio", m.get("compression_ratio")),
            ("student_params", m.get("student_params")),
        ]
        table.add_section()
        for k, v in rows:
            if v is not None:
                table.add_row(k, _fmt(v))
        console.print(table)
    if summary.get("parent_run_id"):
        console.print(f"MLflow: experiment {summary['experiment']!r}, parent run {summary['parent_run_id']}\n"
                      f"  view: mlflow ui --backend-store-uri {summary['tracking_uri']}\n")
    fails = summary.get("failures") or []
    if fails:
        console.print(f"{len(fails)} failed trial(s); last: trial {fails[-1]['number']}: {fails[-1]['reason'][:200]}")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v.is_integer():
            return f"{int(v):,}"
        return f"{v:.4g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.4f}"
    return str(v)


class StudyProgress:
    """Live line: trials done of the budget, running, best so far. Silent when output is not a terminal."""

    def __init__(self, study, target: int, lstudy, enabled: bool, console):
        self.study, self.target, self.enabled, self.console = study, target, enabled, console
        self.metric = lstudy.study.objectives[0].metric
        self._progress = None
        self._last = 0.0

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]trials"), BarColumn(bar_width=20), MofNCompleteColumn(),
                                      TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=self.console)
            self._progress.start()
            self._task = self._progress.add_task("trials", total=self.target, status="")
            self.update(force=True)
        return self

    def update(self, force: bool = False) -> None:
        if self._progress is None or (not force and time.monotonic() - self._last < 1.0):
            return
        self._last = time.monotonic()
        from kdlab.study.runner import finished_count

        states = _states(self.study)
        best = best_trials(self.study)
        best_txt = ""
        if best and len(self.study.directions) == 1:
            best_txt = f"best {best[0].value:.4f} (#{best[0].number})"
        elif best:
            best_txt = f"Pareto {len(best)}"
        status = (f"run {states.get('RUNNING', 0)} prune {states.get('PRUNED', 0)} "
                  f"fail {states.get('FAIL', 0)} {best_txt}")
        self._progress.update(self._task, completed=min(self.target, finished_count(self.study)), status=status)

    def __exit__(self, *exc):
        if self._progress is not None:
            self.update(force=True)
            self._progress.stop()
        return False


def finalize(study, lstudy, tracker, parent_run_id: str, status: str) -> None:
    """Record the best trial(s), plots and the best student model on the parent run; end it with ``status``."""
    from mlflow.entities import Metric, RunTag

    from kdlab.tracking import _retry

    client = tracker.client
    summary = summarize(study)
    ts = int(time.time() * 1000)
    states = summary["states"]
    metrics = [Metric(f"trials_{k.lower()}", float(v), ts, 0) for k, v in states.items()]
    tags = [RunTag("kdlab.trial_states", json.dumps(states))]
    if summary["best"]:
        b = summary["best"][0]
        metrics += [Metric(f"best_{k}", float(v), ts, 0) for k, v in b["metrics"].items()]
        metrics.append(Metric("best_trial_number", float(b["number"]), ts, 0))
        tags += [RunTag(f"best.{k}", str(v)) for k, v in b["params"].items()]
        if b["run_id"]:
            tags.append(RunTag("kdlab.best_run_id", b["run_id"]))
            tags.append(RunTag("mlflow.note.content", f"Best trial: [trial-{b['number']}]({tracker.run_url(b['run_id'])})"))
        client.log_text(parent_run_id, json.dumps(summary["best"], indent=2, default=str), "best_trials.json")
    _retry(client.log_batch, parent_run_id, metrics=metrics, tags=tags)
    _log_plots(study, lstudy, client, parent_run_id)
    if summary["best"] and lstudy.study.log_best_model and status == "FINISHED":
        try:
            _log_best_model(study, lstudy, tracker, summary["best"][0])
        except Exception as exc:  # noqa: BLE001 - the study's results stand without the model copy
            client.set_tag(parent_run_id, "kdlab.best_model_error", f"{type(exc).__name__}: {exc}"[:5000])
    _retry(client.set_terminated, parent_run_id, status)


def _log_plots(study, lstudy, client, parent_run_id: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vm
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    multi = len(study.directions) > 1
    names = [o.metric for o in lstudy.study.objectives]
    plots: list[tuple[str, Any]] = []
    if complete:
        if multi:
            plots.append(("pareto_front", lambda: vm.plot_pareto_front(study, target_names=names)))
            plots.append(("optimization_history", lambda: vm.plot_optimization_history(
                study, target=lambda t: t.values[0], target_name=names[0])))
        else:
            plots.append(("optimization_history", lambda: vm.plot_optimization_history(study, target_name=names[0])))
    if len(complete) >= 2 and study.get_trials(deepcopy=False)[0].params:
        tgt = (lambda t: t.values[0]) if multi else None
        plots.append(("param_importances", lambda: vm.plot_param_importances(study, target=tgt, target_name=names[0])))
        plots.append(("parallel_coordinate", lambda: vm.plot_parallel_coordinate(study, target=tgt, target_name=names[0])))
    import warnings

    for name, make in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = make()
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(9, 5.5)
            fig.tight_layout()
            client.log_figure(parent_run_id, fig, f"plots/{name}.png")
            plt.close(fig)
        except Exception as exc:  # noqa: BLE001 - e.g. importances of a one-value space; note it and go on
            client.set_tag(parent_run_id, f"kdlab.plot_skipped.{name}", f"{type(exc).__name__}: {exc}"[:500])


def _log_best_model(study, lstudy, tracker, best: dict[str, Any]) -> None:
    """Log the best trial's student (from its state_dict artifact) with ``mlflow.pytorch.log_model``."""
    import mlflow

    run_id = best["run_id"]
    if not run_id:
        return
    if any(o.path.startswith("student") and o.is_dir for o in tracker.client.list_artifacts(run_id)) and \
            any(f.path.endswith("MLmodel") for f in tracker.client.list_artifacts(run_id, "student")):
        return
    import torch

    from kdlab.config import load_config
    from kdlab.engine import Session
    from kdlab.study.config import trial_overrides
    from kdlab.teacher import build_model, load_state_dict_file, load_weights
    from kdlab.tracking import TrackedRun

    trial = study.trials[best["number"]]
    chosen = {k: _decode(lstudy, k, v) for k, v in trial.params.items()}
    loaded = load_config(lstudy.loaded.source, overrides={**lstudy.overrides,
                                                          **trial_overrides(lstudy, chosen)})
    data = Session().get_data(loaded)
    model = build_model(loaded.components["student"], loaded.params["student"], data)
    local = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/student/state_dict.pt", tracking_uri=tracker.uri)
    from pathlib import Path

    load_weights(model, load_state_dict_file(Path(local), "best trial"), key="best trial", value=run_id)
    TrackedRun(tracker, run_id).log_model(model, "student", data.train.x[:8])
    tracker.client.set_tag(run_id, "kdlab.best", "true")
    del torch


def _decode(lstudy, key: str, value: Any) -> Any:
    """Categorical choices that are lists travel through Optuna as YAML text."""
    dim = lstudy.study.search.get(key)
    if dim is not None and dim.type == "categorical":
        enc = dim.grid()
        if value in enc:
            return dim.choices[enc.index(value)]
    return value
