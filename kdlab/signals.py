"""Signals: SIGTERM handled like Ctrl-C, and study workers that stop with their main process.

* :func:`handle_sigterm` (every command): the first SIGTERM raises :class:`kdlab.errors.Terminated` (a
  ``KeyboardInterrupt``), so a run ends ``KILLED`` and a study records its running trials as interrupted, as on
  Ctrl-C; the command exits 143. Further signals while it stops are ignored, so that recording is not cut short.
* :func:`worker_process` (in a study's worker process): the same for SIGINT and SIGTERM, and the worker gets SIGTERM
  when its main process dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``; elsewhere a watchdog thread polls the
  parent's id), so no worker trains on under a dead study.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from kdlab.errors import Terminated

_stopping = False


def _on_signal(signum, frame) -> None:  # noqa: ANN001 - signal handler signature
    global _stopping
    if _stopping:
        return  # already stopping: let the first signal's clean-up finish
    _stopping = True
    if signum == signal.SIGTERM:
        raise Terminated()
    raise KeyboardInterrupt()


def handle_sigterm():
    """SIGTERM raises :class:`Terminated` once in the main thread (a no-op outside it). Returns a function that puts
    the previous handler back."""
    global _stopping
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    _stopping = False
    previous = signal.signal(signal.SIGTERM, _on_signal)
    return lambda: signal.signal(signal.SIGTERM, previous)


def reset() -> None:
    """Forget that a signal arrived (a process that goes on after handling one, e.g. a test)."""
    global _stopping
    _stopping = False


def worker_process(parent_pid: int | None) -> None:
    """Set up a study worker process: SIGINT and SIGTERM stop it once, cleanly; it gets SIGTERM when the process
    ``parent_pid`` dies. Exits at once when that process is already gone."""
    global _stopping
    _stopping = False
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
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
