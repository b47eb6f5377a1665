"""The MLflow observer of one run: per-epoch metrics as they come, final metrics and the end status (with its
reason) when the run ends."""

from __future__ import annotations

import kdlab
from kdlab.tracking import TrackedRun
from kdlab.types import RunInfo


class TrackingObserver:
    """Records the run ``info`` in ``tracked``; ignores every other run's hooks (runs may nest or overlap)."""

    def __init__(self, info: RunInfo, tracked: TrackedRun):
        self.info = info
        self.tracked = tracked
        #: set by the lifecycle before the run ends: why it did not finish, and the step of the final metrics
        self.reason: str | None = None
        self.final_step = 0
        self._last: dict[str, float] = {}

    @kdlab.hookimpl(tryfirst=True)
    def kdlab_epoch_end(self, run: RunInfo, epoch: int, metrics: dict[str, float]) -> None:
        if run is self.info:
            self.tracked.log_epoch(epoch, metrics)
            self._last = dict(metrics)

    @kdlab.hookimpl(tryfirst=True)
    def kdlab_run_end(self, run: RunInfo, metrics: dict[str, float], status: str) -> None:
        if run is not self.info:
            return
        # A final metric that has a per-epoch curve (val_accuracy) is logged again only when it differs from the
        # last epoch's value, so that the run's summary value in the MLflow table is the kept model's.
        final = {k: v for k, v in metrics.items() if self._last.get(k) != v}
        if final:
            self.tracked.log_metrics(final, step=self.final_step)
        if self.reason:
            self.tracked.set_tags({"kdlab.status_reason": self.reason[:5000]})
        self.tracked.end(status)

