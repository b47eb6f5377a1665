"""What a study shows a person: its summary (read from the Optuna storage alone), the summary table, and the live
progress line. It writes nothing (the MLflow record is :mod:`kdlab.study.record`)."""

from __future__ import annotations

import time
from typing import Any

from kdlab.study import attrs
from kdlab.study.trials import describe_owner, fail_reason, finished_count


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
    user = study.user_attrs
    best = best_trials(study)
    return {
        "study": study.study_name,
        "directions": [d.name.lower() for d in study.directions],
        "states": _states(study),
        "best": [{"number": t.number, "values": t.values, "params": t.params,
                  "metrics": t.user_attrs.get(attrs.METRICS, {}), "run_id": t.user_attrs.get(attrs.RUN_ID)}
                 for t in best],
        "baseline": user.get(attrs.BASELINE),
        "teacher": user.get(attrs.TEACHER),
        "parent_run_id": user.get(attrs.PARENT),
        "experiment": user.get(attrs.EXPERIMENT),
        "tracking_uri": user.get(attrs.TRACKING),
        "failures": [{"number": t.number, "reason": fail_reason(t)}
                     for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL"],
    }


def status(study, target: int | None = None) -> dict[str, Any]:
    """A study's progress across every process and machine, read from its storage (``kdlab study status``): the
    summary, plus trials by state per machine and device, the running trials and their owners, the retries."""
    from datetime import datetime

    out = summarize(study)
    by_place: dict[tuple[str, str], dict[str, int]] = {}
    running, retries = [], []
    now = datetime.now()
    for t in study.get_trials(deepcopy=False):
        owner = t.user_attrs.get(attrs.OWNER) or {}
        place = (str(owner.get("host", "-")), str(t.user_attrs.get(attrs.DEVICE, "-")))
        counts = by_place.setdefault(place, {})
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
        if t.state.name == "RUNNING":
            age = (now - t.datetime_start).total_seconds() if t.datetime_start else None
            running.append({"number": t.number, "owner": describe_owner(owner), "device": place[1],
                            "seconds": age})
        if attrs.RETRY_OF in t.user_attrs:
            retries.append({"number": t.number, "retry_of": t.user_attrs[attrs.RETRY_OF], "state": t.state.name})
    out["finished"] = finished_count(study)
    out["n_trials"] = target
    out["deadline"] = study.user_attrs.get(attrs.DEADLINE)
    out["by_place"] = [{"host": h, "device": d, "states": c} for (h, d), c in sorted(by_place.items())]
    out["running"] = running
    out["retries"] = retries
    return out


def render_status(st: dict[str, Any], console) -> None:
    from rich.table import Table

    states = st["states"]
    counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(states.items())) or "no trials yet"
    budget = f" ({st['finished']} of {st['n_trials']} counted trials done)" if st.get("n_trials") else ""
    console.print(f"[bold]study {st['study']}[/bold]: {counts}{budget}")
    names = ["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"]
    table = Table(title="trials by machine and device", title_justify="left")
    for col in ("host", "device", *[n.lower() for n in names]):
        table.add_column(col, justify="left" if col in ("host", "device") else "right")
    for row in st["by_place"]:
        table.add_row(row["host"], row["device"], *[str(row["states"].get(n, 0)) for n in names])
    console.print(table)
    for r in st["running"]:
        age = f", {r['seconds']:.0f} s" if r["seconds"] is not None else ""
        console.print(f"running: trial {r['number']} on {r['owner']} ({r['device']}{age})")
    for r in st["retries"]:
        console.print(f"retry: trial {r['number']} re-runs stale trial {r['retry_of']} ({r['state'].lower()})")
    best = st["best"]
    if best:
        b = best[0]
        vals = ", ".join(f"{v:.4g}" for v in (b["values"] or []))
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in b["params"].items())
        console.print(f"best: trial {b['number']} ({vals}): {params}")
    fails = st.get("failures") or []
    if fails:
        console.print(f"{len(fails)} failed trial(s); last: trial {fails[-1]['number']}: {fails[-1]['reason'][:200]}")


def render_summary(summary: dict[str, Any], console) -> None:
    from rich.table import Table

    states = summary["states"]
    counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(states.items()))
    console.print(f"[bold]study {summary['study']}[/bold]: {counts}")
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
                      f"  view: {view_command(summary['tracking_uri'])}\n")
    fails = summary.get("failures") or []
    if fails:
        console.print(f"{len(fails)} failed trial(s); last: trial {fails[-1]['number']}: {fails[-1]['reason'][:200]}")


def view_command(uri: str) -> str:
    """How to look at the study in the MLflow UI: a SQLite store's server serves the artifacts beside it."""
    if uri.startswith("sqlite:///"):
        folder = uri.removeprefix("sqlite:///").rsplit("/", 1)[0]
        return f"mlflow server --backend-store-uri {uri} --artifacts-destination {folder}/artifacts"
    return f"open {uri}" if uri.startswith("http") else f"mlflow server --backend-store-uri {uri}"


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
