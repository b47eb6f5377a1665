"""The study's pictures as one interactive HTML page (plotly, its script inlined once: the MLflow UI shows HTML
artifacts inline, in a sandbox that loads nothing from elsewhere). Hover shows each trial's number, params and
metrics; full parameter names; pruned trials drawn apart."""

from __future__ import annotations

import html
import math
from typing import Any

from kdlab.study.plots import View, comparison_rows, pareto, reference_lines, wrap

COMPLETE, PRUNED, BEST, REF = "#1f77b4", "#9e9e9e", "#d62728", "#555555"
HEIGHT = 460


def available() -> bool:
    try:
        import plotly  # noqa: F401
    except ImportError:
        return False
    return True


def page(view: View, names: list[str]) -> str:
    """One HTML page holding the pictures ``names`` of ``view``, each under a heading."""
    import plotly.io as pio

    parts = [f"<h2>Study {html.escape(view.study)}</h2>",
             f"<p>{len(view.complete)} complete and {len(view.pruned)} pruned trials; objective "
             f"{html.escape(view.objective)} ({'maximize' if view.maximize else 'minimize'}). Hover a point for its "
             "trial.</p>"]
    first = True
    for name in names:
        fig = _DRAW[name](view)
        # as wide as the UI's artifact pane (responsive), never wider: no horizontal scrolling
        fig.update_layout(autosize=True, template="plotly_white", margin={"l": 60, "r": 30, "t": 60, "b": 60},
                          font={"size": 12})
        parts.append(pio.to_html(fig, full_html=False, include_plotlyjs="inline" if first else False,
                                 default_width="100%", config={"displaylogo": False, "responsive": True}))
        first = False
    body = "\n".join(parts)
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>study "
            f"{html.escape(view.study)}</title><style>body{{font-family:sans-serif;margin:12px}}</style></head>"
            f"<body>{body}</body></html>")


def _hover(q) -> str:
    lines = [f"trial {q.number} ({q.state.lower()})"]
    lines += [f"{k} = {_fmt(v)}" for k, v in q.params.items()]
    for k in ("val_accuracy", "test_accuracy", "student_params", "student_flops"):
        if k in q.metrics:
            lines.append(f"{k} = {_fmt(q.metrics[k])}")
    return "<br>".join(html.escape(x) for x in lines)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _refs(fig, view: View, **where) -> None:
    for label, value in reference_lines(view):
        fig.add_hline(y=value, line_dash="dot" if label == "teacher" else "dash", line_color=REF,
                      annotation_text=f"{label} {value:.4g}", annotation_position="top right", **where)


def _history(view: View) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    c = sorted(view.complete, key=lambda q: q.number)
    fig.add_scatter(x=[q.number for q in c], y=[q.value for q in c], mode="markers", name="complete",
                    marker={"color": COMPLETE, "size": 9}, hovertext=[_hover(q) for q in c], hoverinfo="text")
    best, ys = None, []
    for q in c:
        if best is None or (q.value > best if view.maximize else q.value < best):
            best = q.value
        ys.append(best)
    fig.add_scatter(x=[q.number for q in c], y=ys, mode="lines", line_shape="hv", name="best so far",
                    line={"color": BEST})
    p = view.pruned
    fig.add_scatter(x=[q.number for q in p], y=[q.value for q in p], mode="markers",
                    name="pruned (last reported value)", marker={"color": PRUNED, "symbol": "x", "size": 9},
                    hovertext=[_hover(q) for q in p], hoverinfo="text")
    _refs(fig, view)
    fig.update_layout(title="Optimisation history", xaxis_title="trial", yaxis_title=view.objective, height=HEIGHT)
    return fig


def _importances(view: View) -> Any:
    import plotly.graph_objects as go

    items = sorted(view.importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h",
                           marker_color=COMPLETE, text=[f"{v:.2f}" for _, v in items], textposition="outside"))
    fig.update_layout(title=f"Parameter importances for {view.objective} (fANOVA)", xaxis_range=[0, 1.1],
                      height=max(260, 60 * len(items) + 140), yaxis={"automargin": True})
    return fig


def _parallel(view: View) -> Any:
    import plotly.graph_objects as go

    pts = [q for q in view.points if all(d.name in q.params for d in view.dims)]
    def numeric(label: str, vals: list[float], log: bool) -> dict[str, Any]:
        # four ticks per axis, plain numbers: plotly's own ticks crowd a short axis
        f = (lambda v: math.log10(v)) if log else (lambda v: v)
        scaled = [f(v) for v in vals]
        lo, hi = min(scaled), max(scaled)
        ticks = [lo + (hi - lo) * i / 3 for i in range(4)] if hi > lo else [lo]
        text = [f"{(10 ** t if log else t):.3g}" for t in ticks]
        return {"label": label, "values": scaled, "tickvals": ticks, "ticktext": text}

    dims = []
    for d in view.dims:
        vals = [q.params[d.name] for q in pts]
        label = "<br>".join(wrap(d.name, 14))
        if d.numeric:
            nums = [float(v) for v in vals]
            dims.append(numeric(label, nums, d.log and all(v > 0 for v in nums)))
        else:
            cats = sorted({str(v) for v in vals})
            dims.append({"label": label, "values": [cats.index(str(v)) for v in vals],
                         "tickvals": list(range(len(cats))), "ticktext": cats})
    dims.append(numeric(view.objective, [q.value for q in pts], False))
    if view.pruned:
        dims.append({"label": "state", "values": [0 if q.state == "COMPLETE" else 1 for q in pts],
                     "tickvals": [0, 1], "ticktext": ["complete", "pruned"]})
    fig = go.Figure(go.Parcoords(line={"color": [q.value for q in pts], "colorscale": "Viridis",
                                       "reversescale": not view.maximize, "showscale": True,
                                       "colorbar": {"title": view.objective}},
                                 dimensions=dims, labelside="bottom"))
    fig.update_layout(title="Parallel coordinates (pruned trials at their last reported value)", height=HEIGHT + 40,
                      margin={"b": 100, "l": 70})
    return fig


def _slice(view: View) -> Any:
    from plotly.subplots import make_subplots

    n = len(view.dims)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = make_subplots(rows=rows, cols=cols, shared_yaxes=True, horizontal_spacing=0.06,
                        vertical_spacing=0.18 if rows > 1 else 0.1)
    for i, d in enumerate(view.dims):
        r, c = i // cols + 1, i % cols + 1
        for state, color, symbol in (("COMPLETE", COMPLETE, "circle"), ("PRUNED", PRUNED, "x")):
            pts = [q for q in view.points if q.state == state and d.name in q.params]
            fig.add_scatter(x=[q.params[d.name] if d.numeric else str(q.params[d.name]) for q in pts],
                            y=[q.value for q in pts], mode="markers", marker={"color": color, "symbol": symbol},
                            name="complete" if state == "COMPLETE" else "pruned", showlegend=i == 0,
                            hovertext=[_hover(q) for q in pts], hoverinfo="text", row=r, col=c)
        fig.update_xaxes(title_text=d.name, type="log" if d.log else None, dtick="D2" if d.log else None, row=r,
                         col=c)
    fig.update_yaxes(title_text=view.objective, col=1)
    fig.update_layout(title=f"{view.objective} against each searched param", height=320 * rows + 120)
    return fig


def _comparison(view: View) -> Any:
    import plotly.graph_objects as go

    rows = comparison_rows(view)[::-1]
    colors = [REF, PRUNED, BEST][: len(rows)][::-1] if len(rows) == 3 else [COMPLETE] * len(rows)
    labels = [f"{label}<br><sub>{html.escape(size)}</sub>" if size else label for label, _, size in rows]
    fig = go.Figure(go.Bar(x=[v for _, v, _ in rows], y=labels, orientation="h", marker_color=colors,
                           text=[f"{v:.4g}" for _, v, _ in rows], textposition="outside"))
    lo = min(v for _, v, _ in rows)
    fig.update_layout(title="Teacher, ce baseline and the best distilled student (test accuracy)",
                      xaxis_range=[max(0.0, lo - 0.15), 1.02], height=110 * len(rows) + 140,
                      yaxis={"automargin": True})
    return fig


def _front(fig, pts, fx, fy, x_small: bool, y_large: bool) -> None:
    fig.add_scatter(x=[fx(q) for q in pts], y=[fy(q) for q in pts], mode="markers", name="complete trials",
                    marker={"color": COMPLETE, "size": 9}, hovertext=[_hover(q) for q in pts], hoverinfo="text")
    front = pareto(pts, fx, fy, x_small, y_large)
    fig.add_scatter(x=[fx(q) for q in front], y=[fy(q) for q in front], mode="lines+markers+text",
                    name="Pareto front", line={"color": BEST}, text=[f"#{q.number}" for q in front],
                    textposition="bottom right", hovertext=[_hover(q) for q in front], hoverinfo="text")


def _accuracy_vs_size(view: View) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    pts = [q for q in view.complete if "student_params" in q.metrics and "val_accuracy" in q.metrics]
    _front(fig, pts, lambda q: q.metrics["student_params"], lambda q: q.metrics["val_accuracy"], True, True)
    if view.objective == "val_accuracy":
        _refs(fig, view)
    fig.update_layout(title="Accuracy against student size", xaxis={"type": "log", "title": "student parameters"},
                      yaxis_title="val_accuracy", height=HEIGHT)
    return fig


def _pareto(view: View) -> Any:
    import plotly.graph_objects as go

    (m0, d0), (m1, d1) = view.objectives[:2]
    fig = go.Figure()
    _front(fig, view.complete, lambda q: q.values[1], lambda q: q.values[0], d1 == "minimize", d0 == "maximize")
    fig.update_layout(title="Pareto front of the first two objectives", xaxis_title=f"{m1} ({d1})",
                      yaxis_title=f"{m0} ({d0})", height=HEIGHT)
    return fig


_DRAW = {"optimization_history": _history, "param_importances": _importances, "parallel_coordinate": _parallel,
         "slice": _slice, "comparison": _comparison, "accuracy_vs_size": _accuracy_vs_size, "pareto_front": _pareto}
