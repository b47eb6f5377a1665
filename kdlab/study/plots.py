"""Pictures of a study for its parent MLflow run: optimisation history, parameter importances, parallel
coordinates, and the Pareto front of a multi-objective study (matplotlib, through Optuna's own plots)."""

from __future__ import annotations

import warnings
from typing import Any, Callable


def study_figures(study, objective_names: list[str]) -> tuple[list[tuple[str, Any]], dict[str, str]]:
    """``([(name, figure)], {name: why skipped})`` for the plots this study has data for."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna.visualization.matplotlib as vm
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    multi = len(study.directions) > 1
    first = objective_names[0]
    plots: list[tuple[str, Callable[[], Any]]] = []
    if complete:
        if multi:
            plots.append(("pareto_front", lambda: vm.plot_pareto_front(study, target_names=objective_names)))
            plots.append(("optimization_history", lambda: vm.plot_optimization_history(
                study, target=lambda t: t.values[0], target_name=first)))
        else:
            plots.append(("optimization_history", lambda: vm.plot_optimization_history(study, target_name=first)))
    if len(complete) >= 2 and study.get_trials(deepcopy=False)[0].params:
        tgt = (lambda t: t.values[0]) if multi else None
        plots.append(("param_importances", lambda: vm.plot_param_importances(study, target=tgt, target_name=first)))
        plots.append(("parallel_coordinate", lambda: vm.plot_parallel_coordinate(study, target=tgt,
                                                                                 target_name=first)))
    figures, skipped = [], {}
    for name, make in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = make()
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(9, 5.5)
            fig.tight_layout()
            figures.append((name, fig))
        except Exception as exc:  # noqa: BLE001 - e.g. importances of a one-value space; note it and go on
            skipped[name] = f"{type(exc).__name__}: {exc}"
    return figures, skipped
