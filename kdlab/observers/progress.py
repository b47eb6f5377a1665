"""The terminal progress display: one rich progress bar per training run (epochs done of the run's epochs, the
loss and validation accuracy). Silent when stdout is not a terminal."""

from __future__ import annotations

import sys

import kdlab
from kdlab.console import make_console
from kdlab.types import RunInfo


class ProgressObserver:
    """Draws the progress of whichever run is training (runs in one process train one after another)."""

    def __init__(self, console=None, enabled: bool | None = None):
        self.enabled = sys.stdout.isatty() if enabled is None else enabled
        self.console = console or make_console()
        self._progress = None
        self._task = None
        self._run: RunInfo | None = None

    @kdlab.hookimpl
    def kdlab_run_start(self, run: RunInfo) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._stop()
        self._run = run
        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[status]}"), TimeRemainingColumn(), console=self.console,
                                  transient=False)
        self._progress.start()
        self._task = self._progress.add_task(run.name or run.role, total=run.epochs or None, status="")

    @kdlab.hookimpl
    def kdlab_epoch_end(self, run: RunInfo, epoch: int, metrics: dict[str, float]) -> None:
        if self._progress is not None and run is self._run:
            status = (f"loss {metrics.get('train_loss', float('nan')):.4f}  "
                      f"val_acc {metrics.get('val_accuracy', float('nan')):.4f}")
            self._progress.update(self._task, completed=epoch, status=status)

    @kdlab.hookimpl
    def kdlab_run_end(self, run: RunInfo) -> None:
        if run is self._run:
            self._stop()

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._run = None
