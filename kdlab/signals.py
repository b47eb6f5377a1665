"""Signals: SIGTERM handled like Ctrl-C, and study workers that stop with their main process.

* :func:`handle_sigterm` (every command): the first SIGTERM raises :class:`kdlab.errors.Terminated` (a
  ``KeyboardInterrupt``), so a run ends ``KILLED`` and a study records its running trials as interrupted, as on
  Ctrl-C; the command exits 143. Further SIGTERMs while it stops are ignored, so that recording is not cut short
  (a second Ctrl-C still stops at once).
* :func:`deferred` (around each call to a store): a signal that arrives inside is raised when the call returns, so
  that an interrupted database transaction cannot leave the store's session broken for the recording that follows.
* A stop raised inside a callback that cannot raise (a GC or weakref callback, ``__del__``) is delivered again
  (``sys.unraisablehook``), not lost.
* :func:`worker_process` (in a study's worker process): the same for SIGINT and SIGTERM, and the worker gets SIGTERM
  when its main process dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``; elsewhere a watchdog thread polls the
  parent's id), so no worker trains on under a dead study.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from kdlab.errors import Terminated

_stopping = False
_force_sigint = False  # the main process: a second Ctrl-C stops at once
_depth = 0  # inside deferred() (main thread only)
_pending: type[BaseException] | None = None
_stopped_by: type[BaseException] | None = None


def _on_signal(signum, frame) -> None:  # noqa: ANN001 - signal handler signature
    global _stopping, _pending, _stopped_by
    error = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    if _stopping:
        if error is KeyboardInterrupt and _force_sigint:
            raise KeyboardInterrupt()
        return  # already stopping: let the first signal's clean-up finish
    _stopping, _stopped_by = True, error
    if _depth > 0:
        _pending = error
        return
    raise error()


def _on_unraisable(unraisable) -> None:  # noqa: ANN001 - sys.unraisablehook signature
    """A stop raised by :func:`_on_signal` inside a callback that cannot raise (a weakref or GC callback, a
    ``__del__``: Python prints "Exception ignored in ..." and goes on) would be lost, and the command would run on,
    deaf to a second signal. Deliver it again instead, from a thread a moment later: sent from here, it would be
    handled in this hook, whose exceptions are ignored too."""
    global _stopping
    exc = unraisable.exc_value
    if isinstance(exc, KeyboardInterrupt) and _stopping and _stopped_by is type(exc):
        _stopping = False
        again = threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGTERM if _stopped_by is Terminated
                                                 else signal.SIGINT))
        again.daemon = True
        again.start()
        return
    _previous_unraisable(unraisable)


_previous_unraisable = sys.unraisablehook


def _install_unraisable() -> None:
    global _previous_unraisable
    if sys.unraisablehook is not _on_unraisable:
        _previous_unraisable = sys.unraisablehook
        sys.unraisablehook = _on_unraisable


@contextmanager
def deferred() -> Iterator[None]:
    """Hold a signal that arrives inside the block until it ends (in the main thread; elsewhere a no-op)."""
    global _depth, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending is not None:
            error, _pending = _pending, None
            raise error()


def handle_sigterm():
    """SIGTERM raises :class:`Terminated` and SIGINT ``KeyboardInterrupt``, once each, in the main thread, outside
    :func:`deferred` blocks (a no-op outside the main thread). Returns a function that puts the previous handlers
    back."""
    global _stopping, _force_sigint, _pending
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    _stopping, _force_sigint, _pending = False, True, None
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    hook = sys.unraisablehook
    _install_unraisable()

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sys.unraisablehook = hook

    return restore


def stopping() -> type[BaseException] | None:
    """The error of the stop signal that arrived (:class:`Terminated` or ``KeyboardInterrupt``), or ``None``: a
    worker starts no new trial after one."""
    return _stopped_by if _stopping else None


def reset() -> None:
    """Forget that a signal arrived (a process that goes on after handling one, e.g. a test)."""
    global _stopping, _pending
    _stopping, _pending = False, None


def worker_process(parent_pid: int | None) -> None:
    """Set up a study worker process: SIGINT and SIGTERM stop it once, cleanly; it gets SIGTERM when the process
    ``parent_pid`` dies. Exits at once when that process is already gone."""
    global _stopping, _force_sigint, _pending
    _stopping, _force_sigint, _pending = False, False, None
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    _install_unraisable()
    if parent_pid is None:
        return
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM when the parent dies
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the watchdog below does it
            _watch_parent(parent_pid)
    else:  # pragma: no cover - not Linux
        _watch_parent(parent_pid)
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(143)


def _watch_parent(parent_pid: int) -> None:
    def watch() -> None:
        import time

        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="kdlab-parent-watch", daemon=True).start()


def stop_processes(procs: list, grace_s: float = 20.0) -> None:
    """Ask worker processes to stop (SIGTERM: each records its running trial as interrupted), wait up to
    ``grace_s`` seconds, then kill the ones still running."""
    import time

    for p in procs:
        if p.is_alive():
            try:
                os.kill(p.pid, signal.SIGTERM)
            except (ProcessLookupError, TypeError):
                pass
    deadline = time.time() + grace_s
    for p in procs:
        p.join(timeout=max(0.1, deadline - time.time()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(timeout=5)
