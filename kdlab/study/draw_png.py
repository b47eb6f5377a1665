"""The study's pictures as PNGs (matplotlib), sized for the MLflow UI's artifact pane (about 900 px wide): full
parameter names wrapped at their dots, no overlapping labels, pruned trials drawn apart."""

from __future__ import annotations

import math
from typing import Any

from kdlab.study.plots import View, comparison_rows, pareto, reference_lines, wrap

SIZE = (7.6, 4.6)
DPI = 100
COMPLETE, PRUNED, BEST, REF = "#1f77b4", "#9e9e9e", "#d62728", "#555555"


def figure(view: View, name: str) -> Any:
    """The matplotlib figure of picture ``name`` (see :data:`kdlab.study.plots.NAMES`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # sized for the UI's artifact pane, which scales a picture down to its width: large type, few words
    with matplotlib.rc_context({"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 10}):
        fig = _DRAW[name](view, plt)
        fig.set_dpi(DPI)
        fig.tight_layout(rect=getattr(fig, "kdlab_rect", None))
    return fig


def _objective_label(view: View) -> str:
    return f"{view.objective} ({'higher' if view.maximize else 'lower'} is better)"


def _refs(ax, view: View) -> None:
    for label, value in reference_lines(view):
        ax.axhline(value, color=REF, linestyle=":" if label == "teacher" else "--", linewidth=1)
        ax.annotate(f"{label} {value:.4g}", (1.0, value), xycoords=("axes fraction", "data"), xytext=(-4, 3),
                    textcoords="offset points", ha="right", fontsize=10, color=REF)


def _history(view: View, plt) -> Any:
    fig, ax = plt.subplots(figsize=SIZE)
    c, p = view.complete, view.pruned
    if c:
        ax.scatter([q.number for q in c], [q.value for q in c], color=COMPLETE, label="complete", zorder=3)
        best, xs, ys = None, [], []
        for q in sorted(c, key=lambda q: q.number):
            if best is None or (q.value > best if view.maximize else q.value < best):
                best = q.value
            xs.append(q.number)
            ys.append(best)
        ax.step(xs, ys, where="post", color=BEST, label="best so far")
    if p:
        ax.scatter([q.number for q in p], [q.value for q in p], color=PRUNED, marker="x",
                   label="pruned (last reported value)", zorder=3)
    _refs(ax, view)
    ax.set_xlabel("trial")
    ax.set_ylabel(_objective_label(view))
    ax.set_title(f"Optimisation history of study {view.study}")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="best", fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def _importances(view: View, plt) -> Any:
    items = sorted(view.importances.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(SIZE[0], max(2.5, 0.6 * len(items) + 1.5)))
    ax.barh([k for k, _ in items], [v for _, v in items], color=COMPLETE)
    for i, (_, v) in enumerate(items):
        ax.annotate(f"{v:.2f}", (v, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=10)
    ax.set_xlim(0, max(1.0, max(v for _, v in items) * 1.15))
    ax.set_xlabel(f"importance for {view.objective} (fANOVA, sums to 1)")
    ax.set_title(f"Parameter importances ({len(view.complete)} complete trials)")
    return fig


def _norm(view: View, dim, values: list[Any]) -> tuple[list[float], list[str], list[float]]:
    """Values of one axis scaled to [0, 1], with tick labels and their positions."""
    if dim is None or dim.numeric:
        nums = [float(v) for v in values]
        lo, hi = min(nums), max(nums)
        f = (lambda v: math.log10(v)) if dim is not None and dim.log and lo > 0 else (lambda v: v)
        a, b = f(lo), f(hi)
        span = (b - a) or 1.0
        return [(f(v) - a) / span for v in nums], [f"{lo:.3g}", f"{hi:.3g}"], [0.0, 1.0]
    cats = sorted({str(v) for v in values})
    pos = {c: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
    return [pos[str(v)] for v in values], cats, [pos[c] for c in cats]


def _parallel(view: View, plt) -> Any:
    import matplotlib as mpl

    pts = [q for q in view.points if all(d.name in q.params for d in view.dims)]
    axes = [*view.dims, None]
    names = [d.name for d in view.dims] + [view.objective]
    cols = []
    for d, name in zip(axes, names):
        vals = [q.params[name] for q in pts] if d is not None else [q.value for q in pts]
        cols.append(_norm(view, d, vals))
    fig, ax = plt.subplots(figsize=SIZE)
    complete = [q.value for q in pts if q.state == "COMPLETE"]
    cnorm = mpl.colors.Normalize(min(complete, default=0), max(complete, default=1))
    cmap = mpl.colormaps["viridis" if view.maximize else "viridis_r"]
    xs = list(range(len(axes)))
    for i, q in enumerate(pts):
        ys = [col[0][i] for col in cols]
        if q.state == "COMPLETE":
            ax.plot(xs, ys, color=cmap(cnorm(q.value)), linewidth=1.6, alpha=0.9)
        else:
            ax.plot(xs, ys, color=PRUNED, linewidth=1, linestyle="--", alpha=0.7)
    for x, (_, labels, pos) in zip(xs, cols):
        ax.axvline(x, color="black", linewidth=0.8)
        for label, y in zip(labels, pos):
            ax.annotate(label, (x, y), xytext=(4, 0), textcoords="offset points", fontsize=10, va="center",
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
    ax.set_xticks(xs, ["\n".join(wrap(n, 12)) for n in names], fontsize=10)
    ax.set_yticks([])
    ax.set_xlim(-0.1, len(axes) - 0.6)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    sm = mpl.cm.ScalarMappable(norm=cnorm, cmap=cmap)
    fig.colorbar(sm, ax=ax, label=f"{view.objective} (complete trials)", pad=0.02)
    ax.set_title("Parallel coordinates" + (" (dashed: pruned, at their last value)" if view.pruned else ""))
    return fig


def _slice(view: View, plt) -> Any:
    n = len(view.dims)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axs = plt.subplots(rows, cols, figsize=(SIZE[0], 3.2 * rows + 0.6), squeeze=False, sharey=True)
    for ax, d in zip(axs.flat, view.dims):
        for state, color, marker in (("COMPLETE", COMPLETE, "o"), ("PRUNED", PRUNED, "x")):
            pts = [q for q in view.points if q.state == state and d.name in q.params]
            xs = [q.params[d.name] if d.numeric else str(q.params[d.name]) for q in pts]
            ax.scatter(xs, [q.value for q in pts], color=color, marker=marker, s=28,
                       label="complete" if state == "COMPLETE" else "pruned")
        if d.log:
            _log_axis(ax.xaxis)
        ax.set_xlabel(d.name, fontsize=10)
        ax.tick_params(labelsize=10)
        ax.grid(alpha=0.3)
        for label, value in reference_lines(view):
            ax.axhline(value, color=REF, linestyle=":" if label == "teacher" else "--", linewidth=1)
    for ax in list(axs.flat)[n:]:
        ax.set_visible(False)
    for r in range(rows):
        axs[r][0].set_ylabel(view.objective)
    if view.pruned:
        handles, labels = axs.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=2, frameon=False)
        fig.kdlab_rect = (0, 0.06, 1, 1)
    fig.suptitle(f"{view.objective} against each searched param\n(dotted: teacher, dashed: ce baseline)", fontsize=12)
    return fig


def _log_axis(axis) -> None:
    """A log axis with a few plain-number ticks (1, 2, 5 per decade) and no crowded minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.axes.set_xscale("log") if axis.axis_name == "x" else axis.axes.set_yscale("log")
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=5))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _comparison(view: View, plt) -> Any:
    rows = comparison_rows(view)
    fig, ax = plt.subplots(figsize=(SIZE[0], 1.1 * len(rows) + 1.4))
    labels = [f"{label}\n{size}" if size else label for label, _, size in rows]
    colors = [REF, PRUNED, BEST][: len(rows)] if len(rows) == 3 else [COMPLETE] * len(rows)
    ax.barh(labels[::-1], [v for _, v, _ in rows][::-1], color=colors[::-1])
    for i, (_, v, _) in enumerate(rows[::-1]):
        ax.annotate(f"{v:.4g}", (v, i), xytext=(4, 0), textcoords="offset points", va="center", fontsize=10)
    lo = min(v for _, v, _ in rows)
    ax.set_xlim(max(0.0, lo - 0.15), 1.0)
    ax.set_xlabel("test accuracy")
    ax.tick_params(axis="y", labelsize=11)
    ax.set_title("Teacher, ce baseline and the best distilled student")
    return fig


def _front(ax, pts, fx, fy, x_small: bool, y_large: bool) -> None:
    ax.scatter([fx(q) for q in pts], [fy(q) for q in pts], color=COMPLETE, label="complete trials")
    front = pareto(pts, fx, fy, x_small, y_large)
    ax.plot([fx(q) for q in front], [fy(q) for q in front], color=BEST, marker="o", label="Pareto front")
    for q in front:
        ax.annotate(f"#{q.number}", (fx(q), fy(q)), xytext=(4, -10), textcoords="offset points", fontsize=10)


def _accuracy_vs_size(view: View, plt) -> Any:
    fig, ax = plt.subplots(figsize=SIZE)
    pts = [q for q in view.complete if "student_params" in q.metrics and "val_accuracy" in q.metrics]
    _front(ax, pts, lambda q: q.metrics["student_params"], lambda q: q.metrics["val_accuracy"], True, True)
    for label, value in reference_lines(view) if view.objective == "val_accuracy" else []:
        ax.axhline(value, color=REF, linestyle=":" if label == "teacher" else "--", linewidth=1, label=label)
    _log_axis(ax.xaxis)
    ax.set_xlabel("student parameters (log scale)")
    ax.set_ylabel("val_accuracy")
    ax.set_title("Accuracy against student size\n(Pareto front: no smaller student is as accurate)")
    ax.legend(fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def _pareto(view: View, plt) -> Any:
    (m0, d0), (m1, d1) = view.objectives[:2]
    fig, ax = plt.subplots(figsize=SIZE)
    _front(ax, view.complete, lambda q: q.values[1], lambda q: q.values[0], d1 == "minimize", d0 == "maximize")
    ax.set_xlabel(f"{m1} ({d1})")
    ax.set_ylabel(f"{m0} ({d0})")
    ax.set_title("Pareto front of the first two objectives")
    ax.legend(fontsize=10)
    ax.grid(alpha=0.3)
    return fig


_DRAW = {"optimization_history": _history, "param_importances": _importances, "parallel_coordinate": _parallel,
         "slice": _slice, "comparison": _comparison, "accuracy_vs_size": _accuracy_vs_size, "pareto_front": _pareto}
