"""Errors kdlab raises on purpose. Each one names the culprit: a file and dotted key, or a plugin.

The CLI prints the message of a :class:`KdlabError` without a traceback and exits non-zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class KdlabError(Exception):
    """Base class of every error that kdlab reports to a user as a message, not a traceback."""

    exit_code = 1


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a config file."""

    key: str  # dotted key, e.g. ``loss.params.temperature``
    message: str  # what was expected
    value: Any = None
    has_value: bool = True
    line: int | None = None

    def render(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        got = f" (got {shorten(repr(self.value))})" if self.has_value else ""
        return f"{where}{self.key or '<top level>'}: {shorten(self.message, 1000)}{got}"


def shorten(text: str, limit: int = 200) -> str:
    """``text`` cut to about ``limit`` characters, saying how much was left out: error messages stay readable
    whatever a user's value or an exception's message holds."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


class ConfigError(KdlabError):
    """A config file (or override) that does not validate. Lists every problem found, not just the first."""

    exit_code = 2

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        n = len(problems)
        head = f"{source}: {n} problem{'s' if n != 1 else ''}"
        super().__init__("\n  ".join([head] + [p.render() for p in problems]))


class PluginError(KdlabError):
    """A plugin broke a contract: bad hook implementation, duplicate component, factory that raised."""

    exit_code = 3


class TrainingError(KdlabError):
    """Training could not go on: a non-finite loss, an unusable device."""


class NonFiniteLoss(TrainingError):
    """The loss became NaN or infinite during training."""


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM (what schedulers and container runtimes send): handled exactly like Ctrl-C (runs end
    ``KILLED``, running trials are recorded as interrupted), and the command exits with 143."""


class Pruned(Exception):
    """Raised by a lifecycle observer (a study's pruner) to stop a run early on purpose: the run ends ``KILLED``
    with this message as its reason, not ``FAILED``."""
