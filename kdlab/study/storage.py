"""Optuna storage: a journal file by default (safe for several local worker processes), any Optuna URL otherwise.

``--storage`` / ``study.storage`` accept an RDB URL (``sqlite:///...``, ``postgresql://...``), ``journal:PATH``
or a plain path to a journal file.
"""

from __future__ import annotations

from pathlib import Path

from kdlab import paths


def default_storage_url() -> str:
    return f"journal:{paths.home() / 'optuna.journal'}"


def is_local(url: str) -> bool:
    """Whether only this machine's processes use the storage (so stale RUNNING trials can be failed at start)."""
    return url.startswith(("journal:", "sqlite:")) or "://" not in url


def make_storage(url: str):
    import optuna

    if url.startswith("journal:") or "://" not in url:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs = {}
    heartbeat = {}
    if url.startswith("sqlite:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        # several machines: a dead worker's RUNNING trial is failed after its heartbeat stops
        heartbeat = {"heartbeat_interval": 30, "grace_period": 120}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
