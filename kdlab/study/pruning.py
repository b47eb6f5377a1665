"""A trial's lifecycle observer: reports each epoch's objective to Optuna and stops the run when Optuna prunes it
(the run ends ``KILLED`` with the reason), and records the run's MLflow id on the trial as soon as the run starts
(so that a process that finds the trial stale can end its run)."""

from __future__ import annotations

from typing import Any

import kdlab
from kdlab.errors import Pruned
from kdlab.study import attrs
from kdlab.types import RunInfo


class TrialObserver:
    """Watches the student run of one Optuna ``trial``; ``metric`` (``val_accuracy`` or ``val_loss``) is reported
    after every epoch when ``prune`` is set (single-objective studies only)."""

    def __init__(self, trial: Any, metric: str | None):
        self.trial = trial
        self.metric = metric
        self.run: RunInfo | None = None
        self.run_id: str | None = None

    @kdlab.hookimpl
    def kdlab_run_start(self, run: RunInfo) -> None:
        if run.trial_number == self.trial.number:
            self.run, self.run_id = run, run.run_id
            if run.run_id:
                self.trial.set_user_attr(attrs.RUN_ID, run.run_id)

    @kdlab.hookimpl(trylast=True)
    def kdlab_epoch_end(self, run: RunInfo, epoch: int, metrics: dict[str, float]) -> None:
        if run is not self.run or self.metric is None or self.metric not in metrics:
            return
        value = metrics[self.metric]
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise Pruned(f"stopped after epoch {epoch} of {run.epochs}: {self.metric} {value:.4g} "
                         f"{_why(getattr(self.trial, 'study', None))}")


def _why(study: Any) -> str:
    """What the study's pruner compared the trial with, in words."""
    name = type(getattr(study, "pruner", None)).__name__
    if name == "MedianPruner":
        return "was worse than the median of the earlier trials at this epoch (median pruner)"
    if name == "HyperbandPruner":
        return "was not among the best of its Hyperband bracket at this epoch (hyperband pruner)"
    if name == "SuccessiveHalvingPruner":
        return "was not among the best of its rung at this epoch (successive halving pruner)"
    return f"was judged not promising by the {name}"
