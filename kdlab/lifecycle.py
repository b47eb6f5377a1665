"""One run's lifecycle, the same for every kind of run (a teacher, a student, a study's baseline or trial, an
assistant stage, a continual-learning run): start its MLflow run, announce it to the plugins, hand each epoch's
metrics to them, and end it with one status and reason, whatever happens in between.

Observers are plugins on the lifecycle hooks of :mod:`kdlab.hookspecs`, registered for the run's duration: the
MLflow :class:`~kdlab.observers.tracking.TrackingObserver` (when tracking is on), the session's observers (a progress
display) and the run's own (a study's pruner). The training loop calls :meth:`LiveRun.epoch` and knows none of them.

Status: ``FINISHED``; ``KILLED`` when interrupted (Ctrl-C) or stopped on purpose (:class:`kdlab.errors.Pruned`),
with the reason; ``FAILED`` with the exception as the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kdlab.errors import Pruned
from kdlab.observers.tracking import TrackingObserver
from kdlab.plugins import get_plugins
from kdlab.tracking import FAILED, FINISHED, KILLED, NOTE, TrackedRun, Tracker
from kdlab.types import RunInfo


@dataclass
class RunOptions:
    """How a caller wants one run recorded and observed (a study trial, a baseline, an assistant stage)."""

    role: str = "student"
    parent_run_id: str | None = None
    run_name: str | None = None
    trial_number: int | None = None
    #: extra MLflow tags and params of the run
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    #: lifecycle plugins for this run only (objects with ``@kdlab.hookimpl`` methods, e.g. a study's pruner)
    observers: list[Any] = field(default_factory=list)
    log_model: bool | None = None  # None: tracking.log_model
    device: str | None = None  # overrides training.device (study workers)


class LiveRun:
    """A run in progress: what its body reports to the lifecycle."""

    def __init__(self, info: RunInfo, tracked: TrackedRun | None):
        self.info = info
        #: the MLflow run, for the body's artifacts (``None`` when tracking is off)
        self.tracked = tracked
        self.metrics: dict[str, float] = {}
        self.final_step = 0
        #: the logged model the final metrics belong to (set by the body after logging it), and the data they were
        #: measured on (``(name, digest)`` of the run's dataset input)
        self.model_id: str | None = None
        self.dataset: tuple[str, str] | None = None

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """An epoch has ended: every observer gets ``kdlab_epoch_end`` (the training loop's one callback)."""
        get_plugins().hook.kdlab_epoch_end(run=self.info, epoch=epoch, metrics=metrics)

    def finish(self, metrics: dict[str, float], step: int) -> None:
        """The run's final metrics (logged at ``step``, the number of epochs trained), handed to ``kdlab_run_end``."""
        self.metrics = dict(metrics)
        self.final_step = step


@contextmanager
def tracked_run(info: RunInfo, *, tracker: Tracker | None, tags: dict[str, str] | None = None,
                params: dict[str, Any] | None = None, parent_run_id: str | None = None,
                observers: list[Any] | tuple[Any, ...] = (), flush_every_s: float = 15.0) -> Iterator[LiveRun]:
    """Run the body of one run under its lifecycle; ``tracker=None`` records nothing in MLflow.

    The MLflow run is named ``info.name`` and tagged ``tags`` (``params`` are sent with its first metrics); its id
    is in ``info.run_id`` before ``kdlab_run_start``. ``kdlab_run_end`` fires exactly once, with the status."""
    tracked = None
    if tracker is not None:
        tracked = tracker.start(info.name, tags=tags, parent_run_id=parent_run_id, flush_every_s=flush_every_s)
        tracked.log_params(params or {}, defer=True)  # sent with the first metrics: one transaction less
        info.run_id = tracked.run_id
    live = LiveRun(info, tracked)
    watchers = [*([TrackingObserver(info, tracked, description=(tags or {}).get(NOTE))] if tracked else []),
                *observers]
    plugins = get_plugins()
    names = [plugins.add_observer(w) for w in watchers]
    status, reason = FAILED, None
    try:
        try:
            plugins.hook.kdlab_run_start(run=info)
            yield live
            status = FINISHED
        except (KeyboardInterrupt, Pruned) as exc:
            status = KILLED
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"pruned: {exc}"
            raise
        except BaseException as exc:
            reason = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            for w in watchers:
                if isinstance(w, TrackingObserver):
                    w.reason, w.final_step, w.model_id, w.dataset = reason, live.final_step, live.model_id, live.dataset
            plugins.hook.kdlab_run_end(run=info, metrics=live.metrics, status=status)
    finally:
        for name in names:
            plugins.remove_observer(name)
