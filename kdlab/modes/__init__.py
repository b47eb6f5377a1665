"""Run modes: what a run file asks for, composed from plain distillation runs (:func:`kdlab.distill.distil`).
A ``continual:`` section learns tasks in sequence (:mod:`~kdlab.modes.continual`), an ``assistant:`` section
chains teacher -> assistant -> student (:mod:`~kdlab.modes.assistant`), a ``born_again:`` section distils the student
from its own previous generation (:mod:`~kdlab.modes.born_again`); anything else is one distillation."""

from __future__ import annotations

from kdlab.config import LoadedConfig
from kdlab.distill import RunResult, distil
from kdlab.lifecycle import RunOptions
from kdlab.modes.assistant import run_assistant_chain
from kdlab.modes.born_again import run_born_again
from kdlab.modes.continual import run_continual
from kdlab.session import Session


def run(loaded: LoadedConfig, options: RunOptions | None = None, session: Session | None = None) -> RunResult:
    """Run what the config describes: a continual-learning run, a teacher-assistant chain, born-again generations,
    or one distillation."""
    options = options or RunOptions()
    session = session or Session()
    if loaded.config.continual is not None:
        return run_continual(loaded, options, session)
    if loaded.config.assistant is not None:
        return run_assistant_chain(loaded, options, session)
    if loaded.config.born_again is not None:
        return run_born_again(loaded, options, session)
    return distil(loaded, options, session)


__all__ = ["run", "RunOptions", "RunResult", "Session"]
