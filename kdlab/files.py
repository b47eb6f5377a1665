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


#: how much of a package :func:`code_digest` reads at most (a plugin is a few files; a stray huge tree is cut)
_CODE_FILES, _CODE_BYTES = 5000, 200 << 20


def code_digest(obj: Any) -> str:
    """20 hex digits of the SHA-256 of the source code that defines ``obj`` (a component's factory): every ``.py``
    file of its top-level package (an installed plugin's files, or a first-party plugin's folder), or its module's
    file. ``"unknown"`` when the source cannot be found (a class defined in an interactive session). A plugin author
    who changes a component's code without bumping the version gets a new fingerprint, so no stale cache is used."""
    import inspect
    import sys

    module = inspect.getmodule(obj)
    if module is None:
        return "unknown"
    top = sys.modules.get(module.__name__.split(".", 1)[0], module)
    if getattr(top, "__path__", None) and getattr(top, "__file__", None):
        root = Path(top.__file__).parent
    elif getattr(module, "__file__", None):
        root = Path(module.__file__)
    else:
        try:
            return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:20]
        except (OSError, TypeError):
            return "unknown"
    return _tree_digest(str(root.resolve()))


_TREE_DIGESTS: dict[str, str] = {}


def _tree_digest(root: str) -> str:
    """The digest of the ``.py`` files under ``root`` (or of the file ``root``), by relative path; once per
    process."""
    if root in _TREE_DIGESTS:
        return _TREE_DIGESTS[root]
    h = hashlib.sha256()
    base = Path(root)
    if base.is_file():
        files = [base]
    else:
        files = []
        for folder, dirs, names in os.walk(base):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
            files += [Path(folder) / n for n in sorted(names) if n.endswith(".py")]
            if len(files) > _CODE_FILES:
                break
    total = 0
    for f in files[:_CODE_FILES]:
        try:
            data = f.read_bytes()
        except OSError:
            continue
        total += len(data)
        if total > _CODE_BYTES:
            break
        h.update(str(f.relative_to(base) if f != base else f.name).encode() + b"\0" + data + b"\0")
    _TREE_DIGESTS[root] = h.hexdigest()[:20]
    return _TREE_DIGESTS[root]


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
