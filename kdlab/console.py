"""Terminal output: the rich console, kdlab's messages (the ``kdlab`` logger) shown on it, and tables of metrics."""

from __future__ import annotations

import logging
from typing import Any


def make_console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


class ConsoleMessages(logging.Handler):
    """Prints the ``kdlab`` logger's messages (``teacher mlp reused from cache``) on a rich console."""

    def __init__(self, console) -> None:
        super().__init__(logging.INFO)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        from rich.markup import escape

        self.console.print(escape(record.getMessage()))


def show_messages(console) -> ConsoleMessages:
    """Show kdlab's info messages on ``console`` (the command line does so unless ``--quiet``)."""
    logger = logging.getLogger("kdlab")
    logger.setLevel(logging.INFO)
    handler = ConsoleMessages(console)
    logger.addHandler(handler)
    return handler


def metrics_table(title: str, rows: list[tuple[str, Any]]):
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for k, v in rows:
        if isinstance(v, float):
            text = str(int(v)) if v.is_integer() else f"{v:.4f}"
        else:
            text = str(v)
        table.add_row(k, text)
    return table
