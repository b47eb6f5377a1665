"""Content fingerprints and crash-safe writes for kdlab's caches and stores."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def digest(obj: Any) -> str:
    """A short stable fingerprint of a JSON-able object (key order does not matter): 20 hex digits of SHA-256."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def file_digest(path: Path) -> str:
    """20 hex digits of the SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:20]


def _tmp(path: Path) -> Path:
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def atomic_torch_save(obj: Any, path: Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: readers (other workers, a rerun after a
    crash) see the old file or the whole new one, never half of one."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    torch.save(obj, tmp)
    tmp.replace(path)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` through a temporary file and a rename (see :func:`atomic_torch_save`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_text(text)
    tmp.replace(path)
    return path


@contextmanager
def file_lock(path: Path, timeout_s: float = 300.0) -> Iterator[None]:
    """An exclusive lock between processes of this machine, held on the file ``path`` (created if missing) for the
    ``with`` block; ``TimeoutError`` after ``timeout_s`` seconds of waiting. A no-op where ``fcntl`` is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another process held the lock {path} for more than {timeout_s:g} s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
