"""Pictures of a study for its parent MLflow run: what to draw, read from the Optuna study (its complete *and*
pruned trials), the teacher and the ``ce`` baseline. Each picture is drawn twice: a PNG (matplotlib,
:mod:`kdlab.study.draw_png`) and a panel of one interactive HTML page (plotly, :mod:`kdlab.study.draw_html`) that
the MLflow UI shows inline.

Pictures (artifact ``plots/<name>.png``, and all of them in ``plots/study.html``):

* ``optimization_history``: the objective per trial, the best so far, pruned trials at their last reported value,
  the teacher and the baseline as reference lines;
* ``param_importances``: Optuna's importance of each searched param (fANOVA), by its full dotted name;
* ``parallel_coordinate``: one axis per searched param and the objective, pruned trials dashed;
* ``slice``: the objective against each searched param (temperature, alpha, lr, ...);
* ``comparison``: test accuracy of the teacher, the ``ce`` baseline and the best student, with their sizes and
  FLOPs;
* ``accuracy_vs_size``: accuracy against student size with the Pareto front, when the student's size varies;
* ``pareto_front``: the first two objectives of a multi-objective study, with the front.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from kdlab.study import attrs

#: every picture a study may have, in the order they are shown
NAMES = ("optimization_history", "param_importances", "parallel_coordinate", "slice", "comparison",
         "accuracy_vs_size", "pareto_front")


@dataclass
class Point:
    """One trial as the pictures see it: ``value`` is the first objective (a pruned trial's last reported one)."""

    number: int
    state: str  # COMPLETE or PRUNED
    value: float
    values: list[float]
    params: dict[str, Any]
    metrics: dict[str, float]


@dataclass
class Dim:
    """A searched param: its full dotted name, whether it is numeric and on a log scale."""

    name: str
    numeric: bool
    log: bool = False


@dataclass
class View:
    """Everything the pictures of one study are drawn from."""

    study: str
    objectives: list[tuple[str, str]]  # (metric, direction)
    points: list[Point]
    dims: list[Dim]
    importances: dict[str, float] = field(default_factory=dict)
    teacher: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    best: Point | None = None
    #: why a picture is not drawn
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def objective(self) -> str:
        return self.objectives[0][0]

    @property
    def maximize(self) -> bool:
        return self.objectives[0][1] == "maximize"

    @property
    def complete(self) -> list[Point]:
        return [p for p in self.points if p.state == "COMPLETE"]

    @property
    def pruned(self) -> list[Point]:
        return [p for p in self.points if p.state == "PRUNED"]

    def wanted(self) -> list[str]:
        """The pictures this study has data for (the others are in ``skipped`` with the reason)."""
        out = []
        for name in NAMES:
            why = self._why_not(name)
            if why:
                self.skipped[name] = why
            else:
                out.append(name)
        return out

    def _why_not(self, name: str) -> str | None:
        if not self.complete and name != "optimization_history":
            return "no complete trial"
        if name == "optimization_history" and not self.points:
            return "no complete or pruned trial"
        if name == "param_importances" and not self.importances:
            return self.skipped.get(name) or "needs two complete trials that differ in a searched param"
        if name in ("parallel_coordinate", "slice") and not self.dims:
            return "nothing is searched"
        if name == "comparison" and not (self.teacher or self.baseline):
            return "no teacher and no baseline to compare with"
        if name == "accuracy_vs_size" and len({p.metrics.get("student_params") for p in self.complete}) < 2:
            return "every complete trial has the same student size"
        if name == "pareto_front" and len(self.objectives) < 2:
            return "single-objective study"
        return None


def collect(study, objectives: list[tuple[str, str]], search: dict[str, Any]) -> View:
    """The :class:`View` of an Optuna ``study`` with ``objectives`` ``[(metric, direction)]`` and the study
    file's ``search`` dimensions."""
    from optuna.trial import TrialState

    points = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if t.state == TrialState.COMPLETE:
            values = list(t.values)
        elif t.intermediate_values:
            values = [t.intermediate_values[max(t.intermediate_values)]]
        else:
            continue
        points.append(Point(t.number, t.state.name, values[0], values, dict(t.params),
                            dict(t.user_attrs.get(attrs.METRICS) or {})))
    dims = [Dim(k, d.type != "categorical", bool(getattr(d, "log", False))) for k, d in search.items()]
    view = View(study.study_name, objectives, points, dims, teacher=dict(study.user_attrs.get(attrs.TEACHER) or {}),
                baseline=dict(study.user_attrs.get(attrs.BASELINE) or {}))
    complete = view.complete
    if complete:
        pick = max if view.maximize else min
        view.best = pick(complete, key=lambda p: p.value)
    if len(complete) >= 2 and dims:
        try:
            import warnings

            from optuna.importance import get_param_importances

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                view.importances = dict(get_param_importances(study, target=lambda t: t.values[0]))
        except Exception as exc:  # noqa: BLE001 - e.g. every trial has the same params
            view.skipped["param_importances"] = f"{type(exc).__name__}: {exc}"
    return view


def pareto(points: list[Point], fx: Callable[[Point], float], fy: Callable[[Point], float], x_small: bool = True,
           y_large: bool = True) -> list[Point]:
    """The points that no other point beats on both ``fx`` (smaller is better when ``x_small``) and ``fy``
    (larger is better when ``y_large``), sorted by ``fx``."""
    kx = (lambda p: fx(p)) if x_small else (lambda p: -fx(p))
    ky = (lambda p: -fy(p)) if y_large else (lambda p: fy(p))
    front = [p for p in points
             if not any(kx(q) <= kx(p) and ky(q) <= ky(p) and (kx(q) < kx(p) or ky(q) < ky(p)) for q in points)]
    return sorted(front, key=fx)


def wrap(name: str, width: int = 14) -> list[str]:
    """A dotted name split at its dots into lines of about ``width`` characters (full names, never cut)."""
    parts = name.split(".")
    lines, cur = [], ""
    for i, part in enumerate(parts):
        piece = part + ("." if i < len(parts) - 1 else "")
        if cur and len(cur) + len(piece) > width:
            lines.append(cur)
            cur = piece
        else:
            cur += piece
    lines.append(cur)
    return lines


def size_text(metrics: dict[str, Any], role: str) -> str:
    """``77,130 params · 4.2 MFLOPs`` for a role's size metrics (what is known)."""
    parts = []
    if metrics.get(f"{role}_params"):
        parts.append(f"{int(metrics[f'{role}_params']):,} params")
    if metrics.get(f"{role}_flops"):
        parts.append(f"{human(metrics[f'{role}_flops'])}FLOPs")
    return " · ".join(parts)


def human(v: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.3g} "


def comparison_rows(view: View) -> list[tuple[str, float, str]]:
    """``[(label, test accuracy, size text)]`` for the teacher, the ``ce`` baseline and the best student."""
    rows = []
    best = view.best.metrics if view.best else {}
    t_acc = view.teacher.get("teacher_test_accuracy", best.get("teacher_test_accuracy"))
    if t_acc is not None:
        rows.append(("teacher", t_acc, size_text(best or view.baseline, "teacher")))
    if view.baseline.get("test_accuracy") is not None:
        rows.append(("ce baseline (same student, no teacher)", view.baseline["test_accuracy"],
                     size_text(view.baseline, "student")))
    if view.best is not None and best.get("test_accuracy") is not None:
        rows.append((f"best student (trial {view.best.number})", best["test_accuracy"], size_text(best, "student")))
    return rows


def reference_lines(view: View) -> list[tuple[str, float]]:
    """Horizontal lines for the objective's plots: the teacher's and the baseline's value of the objective."""
    out = []
    metric = view.objective
    t = view.teacher.get(f"teacher_{metric}") if not metric.startswith("teacher_") else None
    if t is not None:
        out.append(("teacher", t))
    b = view.baseline.get(metric)
    if b is not None:
        out.append(("ce baseline", b))
    return out


def study_plots(study, objectives: list[tuple[str, str]], search: dict[str, Any]) -> tuple[View, list[str]]:
    """The view of the study and the names of the pictures to draw from it."""
    view = collect(study, objectives, search)
    return view, view.wanted()
