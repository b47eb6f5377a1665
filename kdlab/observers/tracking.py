"""The MLflow observer of one run: per-epoch metrics as they come, final metrics and the end status (with its
reason, also in the run's description) when the run ends."""

from __future__ import annotations

import kdlab
from kdlab.tracking import FAILED, KILLED, NOTE, TrackedRun
from kdlab.types import RunInfo


class TrackingObserver:
    """Records the run ``info`` in ``tracked``; ignores every other run's hooks (runs may nest or overlap).
    ``description``: the run's description as it started, which an unfinished run's outcome is added to."""

    def __init__(self, info: RunInfo, tracked: TrackedRun, description: str | None = None):
        self.info = info
        self.tracked = tracked
        self.description = description
        #: set by the lifecycle before the run ends: why it did not finish, the step of the final metrics, the
        #: logged model and the dataset they belong to
        self.reason: str | None = None
        self.final_step = 0
        self.model_id: str | None = None
        self.dataset: tuple[str, str] | None = None
        self._curves: set[str] = set()

    @kdlab.hookimpl(tryfirst=True)
    def kdlab_epoch_end(self, run: RunInfo, epoch: int, metrics: dict[str, float]) -> None:
        if run is self.info:
            self.tracked.log_epoch(epoch, metrics)
            self._curves.update(metrics)

    @kdlab.hookimpl(tryfirst=True)
    def kdlab_run_end(self, run: RunInfo, metrics: dict[str, float], status: str) -> None:
        if run is not self.info:
            return
        # A final metric never reuses a per-epoch curve's name: the kept weights' val_accuracy is best_val_accuracy
        # (or the curve's last point), so that every metric has one point per step (kdlab.metrics.STEPS).
        final = {k: v for k, v in metrics.items() if k not in self._curves}
        if final:
            self.tracked.log_metrics(final, step=self.final_step, model_id=self.model_id, dataset=self.dataset)
        if self.reason:
            tags = {"kdlab.status_reason": self.reason[:5000]}
            tags[NOTE] = outcome_note(self.description, status, self.reason)
            self.tracked.set_tags(tags)
        self.tracked.end(status)


def outcome_note(description: str | None, status: str, reason: str) -> str:
    """A run's description with why it did not finish: a pruned run says so (its MLflow status is KILLED, as
    MLflow's own integrations end stopped runs), a failed one gives the error."""
    if reason.startswith("pruned: "):
        line = f"**Pruned** (MLflow status {KILLED}): {reason.removeprefix('pruned: ')}"
    elif reason == "interrupted":
        line = f"**Interrupted** (MLflow status {KILLED})"
    else:
        line = f"**Failed** (MLflow status {FAILED}): {reason}"
    # first, so that the UI's collapsed description shows it
    return (f"{line}\n\n{description}" if description else line)[:5000]
