"""Optuna storage: a journal file by default (several processes on one machine), an RDB URL for many machines
(PostgreSQL or MySQL, with heartbeats), and the locks kdlab takes in the same place the study lives.

``--storage`` / ``study.storage`` accept an RDB URL (``postgresql://...``, ``mysql://...``, ``sqlite:///...``),
``journal:PATH`` or a plain path to a journal file.

The locks serialise the few things that must happen once per study however many processes and machines take part:
claiming a trial against the budget, creating the parent MLflow run, training a teacher. They live where the study
lives, so every participant sees the same ones: an ``flock`` on a file beside a journal or SQLite file (one
machine), a PostgreSQL advisory lock or a MySQL ``GET_LOCK`` on the study's database (many machines). A lock held by
a process that dies is released with it (the kernel drops the ``flock``; the database ends the session).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from kdlab import paths
from kdlab.errors import KdlabError
from kdlab.signals import deferred

log = logging.getLogger("kdlab")


def default_storage_url() -> str:
    return f"journal:{paths.home() / 'optuna.journal'}"


def is_journal(url: str) -> bool:
    return url.startswith("journal:") or "://" not in url


def is_local(url: str) -> bool:
    """Whether only this machine's processes can use the storage (a journal or SQLite file)."""
    return is_journal(url) or url.startswith("sqlite:")


def uses_heartbeat(url: str) -> bool:
    """RDB storages on a server (PostgreSQL, MySQL, ...) judge a trial's owner dead by its heartbeat; file storages
    by its process (:mod:`kdlab.study.trials`)."""
    return not is_local(url)


def driver_url(url: str) -> str:
    """The URL with the driver kdlab installs (``kdlab[postgres]``: psycopg 3; ``kdlab[mysql]``: PyMySQL) when it
    names none: SQLAlchemy's default driver for ``postgresql://`` differs between its versions."""
    for plain, full in (("postgresql://", "postgresql+psycopg://"), ("postgres://", "postgresql+psycopg://"),
                        ("mysql://", "mysql+pymysql://")):
        if url.startswith(plain):
            return full + url[len(plain):]
    return url


def journal_path(url: str) -> Path:
    return Path(url.removeprefix("journal:")).expanduser()


def make_storage(url: str, *, heartbeat_interval: int = 30, grace_period: int | None = 120,
                 on_stale: Callable[[Any, Any], None] | None = None):
    """The Optuna storage at ``url``. On a server RDB, running trials send a heartbeat every ``heartbeat_interval``
    seconds and one silent for ``grace_period`` seconds is failed; ``on_stale(study, trial)`` is then called once,
    by the process that failed it (kdlab's retries it and closes its MLflow run)."""
    import optuna

    if is_journal(url):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = journal_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(_signal_safe(JournalFileBackend)(str(path)))
    engine_kwargs: dict[str, Any] = {}
    heartbeat: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}  # a server restart or a dropped idle connection is not an error
        heartbeat = {"heartbeat_interval": int(heartbeat_interval), "grace_period": grace_period}
        if on_stale is not None:
            heartbeat[_stale_callback_arg()] = on_stale
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for attempt in range(3):
            try:
                return optuna.storages.RDBStorage(driver_url(url), engine_kwargs=engine_kwargs, **heartbeat)
            except Exception as exc:  # noqa: BLE001
                # two processes creating the tables of a new database at once: the loser finds them made
                if attempt == 2 or "already exists" not in str(exc) and "duplicate" not in str(exc).lower():
                    raise
                time.sleep(0.5)
    raise AssertionError("unreachable")


def _signal_safe(backend_class):
    """``backend_class`` (Optuna's journal file backend) with each read and append finished before a stop signal is
    raised (:func:`kdlab.signals.deferred`). Ctrl-C or SIGTERM raised inside Optuna's file lock, between its rename
    and unlink, left the lock file behind and turned the signal into a FileNotFoundError: the worker then recorded
    its trial as failed with that error, or not at all, instead of as interrupted. (A class made here: optuna is
    imported only when a storage is made.)"""

    class SignalSafeJournalFile(backend_class):
        def read_logs(self, log_number_from: int):
            with deferred():
                return list(super().read_logs(log_number_from))

        def append_logs(self, logs) -> None:
            with deferred():
                super().append_logs(logs)

    return SignalSafeJournalFile


def _stale_callback_arg() -> str:
    import inspect

    import optuna

    params = inspect.signature(optuna.storages.RDBStorage).parameters
    return "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else "failed_trial_callback"


def release_storage(storage) -> None:
    """Close the pooled database connections of an RDB storage before a fork (SQLAlchemy's rule: none may cross
    into the child); this process reconnects on its next call."""
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()


# --- locks ----------------------------------------------------------------------------------------------------


class LockTimeout(KdlabError):
    pass


class Lock:
    """One named lock; ``acquire`` blocks (up to ``timeout`` seconds, else :class:`LockTimeout`) or, with
    ``blocking=False``, returns whether it got it. ``release`` is idempotent."""

    def __init__(self, backend: _Backend, key: str):
        self.backend, self.key = backend, key
        self.held = False
        self._handle: Any = None

    def acquire(self, blocking: bool = True, timeout: float | None = 600.0, waiting: str | None = None) -> bool:
        start = last_note = time.monotonic()
        delay = 0.02
        while True:
            self._handle = self.backend.try_acquire(self.key)
            if self._handle is not None:
                self.held = True
                return True
            if not blocking:
                return False
            now = time.monotonic()
            if timeout is not None and now - start > timeout:
                raise LockTimeout(f"could not take the lock {self.key!r} in {self.backend.where} within "
                                  f"{timeout:.0f} s: another process holds it")
            if waiting and now - last_note > 60:
                log.info("%s (%.0f s so far)", waiting, now - start)
                last_note = now
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def release(self) -> None:
        if self.held:
            self.held = False
            handle, self._handle = self._handle, None
            self.backend.release(self.key, handle)

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class _Backend:
    where = "the storage"

    def close(self) -> None:
        """Close pooled connections (before a fork: none may cross into the child)."""

    def try_acquire(self, key: str) -> Any | None:
        raise NotImplementedError

    def release(self, key: str, handle: Any) -> None:
        raise NotImplementedError


class _FileLocks(_Backend):
    """``flock`` on a file per key in ``folder``: exclusive between every open file, so between processes and
    between threads of one process alike; dropped by the kernel when its holder dies."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.where = str(folder)

    def try_acquire(self, key: str) -> Any | None:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / f"{_digest(key)}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    def release(self, key: str, handle: Any) -> None:
        import fcntl

        try:
            fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            os.close(handle)


class _SqlLocks(_Backend):
    """A PostgreSQL advisory lock or a MySQL named lock, held by a connection of its own (autocommit: no
    transaction stays open while it is held). The server ends the session of a holder that dies, and the lock with
    it; TCP keepalives find a holder whose machine vanished."""

    def __init__(self, url: str):
        self.url = driver_url(url)
        self.where = self.url.split("@")[-1]
        self.kind = "postgresql" if self.url.startswith("postgres") else "mysql"
        self._engine = None
        self._pid = None

    def _connect(self):
        import sqlalchemy

        if self._engine is None or self._pid != os.getpid():
            if self._engine is not None:
                # inherited through a fork: its pooled connections are the parent's; leave them to it
                self._engine.dispose(close=False)
            args: dict[str, Any] = {}
            if self.kind == "postgresql":
                args = {"options": "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3",
                        "connect_timeout": 10}
            # a small pool: a claim reuses a connection (a new one costs a server process, ~10 ms)
            self._engine = sqlalchemy.create_engine(self.url, connect_args=args, pool_size=2, max_overflow=8,
                                                    pool_pre_ping=True, isolation_level="AUTOCOMMIT")
            self._pid = os.getpid()
        return self._engine.connect()

    def try_acquire(self, key: str) -> Any | None:
        import sqlalchemy

        conn = self._connect()
        try:
            if self.kind == "postgresql":
                got = conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": _int64(key)}).scalar()
            else:
                got = conn.execute(sqlalchemy.text("SELECT GET_LOCK(:k, 0)"), {"k": f"kdlab-{_digest(key)}"}).scalar()
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            return None
        return conn

    def release(self, key: str, handle: Any) -> None:
        import sqlalchemy

        try:
            if self.kind == "postgresql":
                handle.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _int64(key)})
            else:
                handle.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:k)"), {"k": f"kdlab-{_digest(key)}"})
        except Exception:  # noqa: BLE001 - the session may still hold it: end the session, not back to the pool
            handle.invalidate()
        finally:
            handle.close()

    def close(self) -> None:
        if self._engine is not None and self._pid == os.getpid():
            self._engine.dispose()


class _NoLocks(_Backend):
    """Storages kdlab cannot lock (Redis journals, gRPC proxies): every lock is granted at once, so the budget may
    be overshot by the trials asked at the same moment (docs/distributed.md)."""

    where = "no lock"

    def try_acquire(self, key: str) -> Any | None:
        return True

    def release(self, key: str, handle: Any) -> None:
        pass


class StorageLocks:
    """The locks of one storage: ``lock(key)`` returns a :class:`Lock`; ``hold(key)`` is the blocking context."""

    def __init__(self, backend: _Backend):
        self.backend = backend
        #: whether these locks exclude other processes (claims of the budget are exact)
        self.exclusive = not isinstance(backend, _NoLocks)

    def lock(self, key: str) -> Lock:
        return Lock(self.backend, key)

    def close(self) -> None:
        """Close the idle pooled connections of the locks (before a fork); they reopen on the next claim."""
        self.backend.close()

    @contextmanager
    def hold(self, key: str, timeout: float | None = 600.0, waiting: str | None = None) -> Iterator[Lock]:
        lock = self.lock(key)
        lock.acquire(timeout=timeout, waiting=waiting)
        try:
            yield lock
        finally:
            lock.release()


def storage_locks(url: str) -> StorageLocks:
    if is_journal(url):
        path = journal_path(url)
        return StorageLocks(_FileLocks(path.with_name(path.name + ".locks")))
    if url.startswith("sqlite:"):
        path = Path(url.removeprefix("sqlite:///"))
        return StorageLocks(_FileLocks(path.with_name(path.name + ".locks")))
    if url.startswith(("postgres", "mysql")):
        return StorageLocks(_SqlLocks(url))
    return StorageLocks(_NoLocks())


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def _int64(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
