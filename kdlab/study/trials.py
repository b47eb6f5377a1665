"""A study's trials in its Optuna storage, shared by every process and machine that takes part: who owns a running
trial, which trials are stale (their owner is known dead), the retry of a stale trial, and the trial budget.

* **Owner.** A trial records the process that runs it (user attr ``owner``: host, process id, the process's start
  time, the machine's boot id and pid namespace) before anything else happens in it.
* **Stale.** A running trial is stale only when its owner is known dead: on a server RDB storage (PostgreSQL,
  MySQL) when its heartbeat has been silent for ``grace_period`` seconds (Optuna's heartbeat); on a journal or
  SQLite file when its owner, on this machine, no longer runs. A trial owned by a live process, or by one that
  cannot be judged (another machine on a file storage), is never failed.
* **Retry.** A stale trial becomes ``FAIL`` and is retried once as a new trial with the same params (user attr
  ``retry_of``); its MLflow run ends ``FAILED``.
* **Budget.** ``n_trials`` counts the trials that are finished (complete, pruned, or failed for a reason of their
  own) or will be (running, waiting) across every process; interrupted and stale trials do not count. Claims are
  taken under the study's storage lock, so N workers anywhere run exactly ``n_trials`` trials.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Callable, Iterator

from kdlab.study import attrs

log = logging.getLogger("kdlab")

#: the key of a study's lock in its storage (see :func:`kdlab.study.storage.storage_locks`)
STUDY_LOCK = "study:{name}"


# --- owners ---------------------------------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot (Linux), or ``None``."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    # the command name (field 2) may hold spaces and parentheses: count from the last ')'
    return stat.rsplit(")", 1)[1].split()[19]


@lru_cache(maxsize=4)
def _this_process(pid: int) -> dict[str, Any]:
    owner: dict[str, Any] = {"host": socket.gethostname(), "pid": pid}
    for key, value in (("start", _start_ticks(pid)), ("boot", _read("/proc/sys/kernel/random/boot_id")),
                       ("pidns", _link("/proc/self/ns/pid"))):
        if value is not None:
            owner[key] = value
    return owner


def _link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def this_process() -> dict[str, Any]:
    """The owner record of the calling process (user attr ``owner``)."""
    return dict(_this_process(os.getpid()))


def owner_alive(owner: dict[str, Any] | None) -> bool | None:
    """Whether the process in ``owner`` still runs: ``True``, ``False`` (known dead), or ``None`` when this machine
    cannot tell (another host, or another container on this kernel)."""
    if not owner:
        return None
    me = _this_process(os.getpid())
    if owner.get("host") != me["host"]:
        return None
    if owner.get("boot") and me.get("boot") and owner["boot"] != me["boot"]:
        return False  # this machine has rebooted since (host names are unique among the machines of a study)
    if owner.get("pidns") != me.get("pidns"):
        return None
    pid = int(owner["pid"])
    if owner.get("start") and me.get("start"):
        return _start_ticks(pid) == owner["start"]  # None (no such process) or another process with its pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_owner(owner: dict[str, Any] | None) -> str:
    if not owner:
        return "unknown owner"
    return f"{owner.get('host', '?')} pid {owner.get('pid', '?')}"


# --- counting -------------------------------------------------------------------------------------------------


def fail_reason(trial) -> str:
    """Why a trial failed or was pruned, as recorded; a trial failed by Optuna's heartbeat has no reason of its own
    (its record could no longer be written), so it is named here."""
    reason = trial.user_attrs.get(attrs.FAIL, "")
    if not reason and trial.state.name == "FAIL":
        owner = trial.user_attrs.get(attrs.OWNER)
        return f"{attrs.STALE} no heartbeat within the grace period ({describe_owner(owner)})"
    return reason


def counts(trial) -> bool:
    """Whether ``trial`` counts against the budget: finished (complete, pruned, or failed for a reason of its own)
    or about to be (running, waiting to run). Interrupted and stale trials do not: they are re-run."""
    name = trial.state.name
    if name in ("COMPLETE", "PRUNED", "RUNNING", "WAITING"):
        return True
    if name == "FAIL":
        reason = trial.user_attrs.get(attrs.FAIL)
        return bool(reason) and reason != attrs.INTERRUPTED and not reason.startswith(attrs.STALE)
    return False


def finished_count(study) -> int:
    """Trials that are done and count against the budget."""
    return sum(1 for t in study.get_trials(deepcopy=False) if counts(t) and t.state.is_finished())


def claimed_count(study) -> int:
    """Trials that count against the budget, running and waiting ones included."""
    return sum(1 for t in study.get_trials(deepcopy=False) if counts(t))


# --- stale trials ---------------------------------------------------------------------------------------------


class StaleTrials:
    """The ``on_stale(study, trial)`` callback: called once for each trial failed because its owner died, by the
    process that failed it. Retries the trial once (``max_retry``) as a new trial with the same params, and ends its
    MLflow run ``FAILED`` with the reason through ``end_run(run_id, reason)`` (set once a tracker exists)."""

    def __init__(self, max_retry: int = 1, end_run: Callable[[str, str], None] | None = None):
        self.max_retry = max_retry
        self.end_run = end_run

    def __call__(self, study, trial) -> None:
        reason = fail_reason(trial)
        log.warning("trial %d of %s is stale (%s): marked failed", trial.number, study.study_name, reason)
        self.retry(study, trial)
        run_id = trial.user_attrs.get(attrs.RUN_ID)
        if run_id and self.end_run is not None:
            try:
                self.end_run(run_id, reason)
            except Exception as exc:  # noqa: BLE001 - the retry stands; the run is closed by the next sweep
                log.warning("could not end the MLflow run %s of stale trial %d: %s", run_id, trial.number, exc)

    def retry(self, study, trial) -> None:
        import optuna

        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        if len(history) > self.max_retry:
            log.warning("trial %d is not retried again (retried %d times already)", trial.number, len(history) - 1)
            return
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs={attrs.RETRY_OF: trial.number},
            # the system attrs of Optuna's RetryHeartbeatStaleTrialCallback, so its helpers read them too
            system_attrs={"failed_trial": history[0], "retry_history": history}))


def fail_dead_owners(study, storage, on_stale: Callable[[Any, Any], None] | None) -> list[int]:
    """On a journal or SQLite file: fail the running trials whose owner is known dead; returns their numbers.

    The caller holds the study's lock, so a running trial without an owner is one whose process died between
    asking for it and recording itself (it held that same lock meanwhile), or one left by an older kdlab."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get(attrs.OWNER)
        if owner_alive(owner) is not False and owner is not None:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        reason = (f"{attrs.STALE} owner {describe_owner(owner)} is no longer running" if owner else
                  f"{attrs.STALE} its process died before recording itself")
        try:
            storage.set_trial_user_attr(trial_id, attrs.FAIL, reason)
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # its owner finished it meanwhile after all
        failed.append(t.number)
        if on_stale is not None:
            on_stale(study, storage.get_trial(trial_id))
    return failed


def sweep(study, storage, url: str, on_stale: Callable[[Any, Any], None] | None) -> None:
    """Fail the study's stale trials (and retry them through ``on_stale``): by heartbeat on a server RDB storage,
    by owner on a file. The caller holds the study's lock."""
    from kdlab.study.storage import uses_heartbeat

    if uses_heartbeat(url):
        import warnings

        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # calls the storage's on_stale for each
    else:
        fail_dead_owners(study, storage, on_stale)


# --- the budget -----------------------------------------------------------------------------------------------


RUN, WAIT, DONE = "run", "wait", "done"


def decide(study, target: int, url: str) -> str:
    """What a worker does next (the caller holds the study's lock and has swept stale trials):

    * ``run``: the budget has room, or a retry is waiting;
    * ``wait``: the budget is claimed but trials of other processes still run and could go stale (and be retried):
      poll until they end;
    * ``done``: nothing is left to run."""
    from kdlab.study.storage import uses_heartbeat

    trials = study.get_trials(deepcopy=False)
    if any(t.state.name == "WAITING" for t in trials):
        return RUN
    if sum(1 for t in trials if counts(t)) < target:
        return RUN
    heartbeat = uses_heartbeat(url)
    for t in trials:
        if t.state.name == "RUNNING" and (heartbeat or owner_alive(t.user_attrs.get(attrs.OWNER)) is not None):
            return WAIT
    return DONE


def shared_deadline(study, timeout: float | None, started: float) -> float | None:
    """The study's deadline (user attr ``deadline``, a Unix time): the one in force when this process joins, else
    ``started + timeout`` (recorded for those that join later). The caller holds the study's lock."""
    current = study.user_attrs.get(attrs.DEADLINE)
    if current is not None and float(current) > time.time():
        return float(current)
    if not timeout:
        return None
    deadline = started + float(timeout)
    study.set_user_attr(attrs.DEADLINE, deadline)
    return deadline


class StaleWatch:
    """A thread that sweeps stale trials every ``interval`` seconds while this process's workers are busy in their
    own trials, so that a dead machine's trial is failed and retried within the grace period. It takes the study's
    lock only when it is free."""

    def __init__(self, study, storage, url: str, locks, on_stale, interval: float):
        self.args = (study, storage, url, on_stale)
        self.lock = locks.lock(STUDY_LOCK.format(name=study.study_name))
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kdlab-stale-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if self.lock.acquire(blocking=False):
                    try:
                        sweep(*self.args)
                    finally:
                        self.lock.release()
            except Exception as exc:  # noqa: BLE001 - a storage hiccup: the workers sweep too
                log.debug("stale-trial sweep failed: %s", exc)

    def __enter__(self) -> StaleWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@contextmanager
def heartbeat(trial, storage) -> Iterator[None]:
    """The heartbeat of ``trial`` while it is held outside ``study.optimize`` (a stacked trial, from its claim to its
    tell): on storages with heartbeats (server RDBs) a thread records one every ``heartbeat_interval`` seconds, as
    ``study.optimize``'s own thread does; elsewhere nothing. Only the storages' public methods are used."""
    interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
    if not interval:
        yield
        return
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(trial.study.study_name), trial.number)
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the grace period covers a few
                log.debug("heartbeat of trial %s failed: %s", trial.number, exc)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"kdlab-heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextmanager
def finished_elsewhere(what: str) -> Iterator[None]:
    """Around telling a trial's outcome: when another process has already failed it as stale (its heartbeat was late
    past the grace period), its retry runs elsewhere, so this result is dropped with a warning, not the worker."""
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        yield
    except (UpdateFinishedTrialError, ValueError) as exc:
        if "finished" not in str(exc).lower() and "cannot tell" not in str(exc).lower():
            raise
        log.warning("%s was failed by another process before it ended: %s", what, exc)


def tell(study, trial, values, state) -> None:
    """Tell ``trial``'s outcome (dropped with a warning when another process already failed it: see
    :func:`finished_elsewhere`)."""
    with finished_elsewhere(f"trial {trial.number}"):
        study.tell(trial, values, state=state)
