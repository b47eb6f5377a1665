"""Terminal output: a rich progress display for epochs, quiet when stdout is not a terminal or with --quiet."""

from __future__ import annotations

import sys
from typing import Any


def make_console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


class RichReporter:
    """Engine reporter that shows one progress bar per training stage."""

    def __init__(self, quiet: bool = False, console=None):
        self.enabled = not quiet and sys.stdout.isatty()
        self.console = console or make_console()
        self._progress = None
        self._task = None

    def stage(self, description: str, epochs: int) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[status]}"), TimeRemainingColumn(), console=self.console,
                                  transient=False)
        self._progress.start()
        self._task = self._progress.add_task(description, total=epochs, status="")

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        if self._progress is not None:
            status = f"loss {metrics.get('train_loss', float('nan')):.4f}  val_acc {metrics.get('val_accuracy', float('nan')):.4f}"
            self._progress.update(self._task, completed=epoch, status=status)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        self.console.print(text)

    def done(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def metrics_table(title: str, rows: list[tuple[str, Any]]):
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for k, v in rows:
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) and not float(v).is_integer() else str(int(v) if isinstance(v, float) else v))
    return table
