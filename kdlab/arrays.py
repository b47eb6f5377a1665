"""Arrays on disk, read lazily: a raw file per array (``<name>.bin``) and its dtype and shape in ``meta.json``,
written chunk by chunk into a temporary folder that is renamed when complete (readers see all of it or none), and
opened as memory-mapped tensors (copy-on-write, so nothing is read until used and nothing is written back).
``meta.json``, written last, also holds each file's SHA-256 (:func:`problem` checks a folder against it once per
process), so a folder whose files were cut short, changed or lost is found and rebuilt rather than read.

Teacher outputs over streamed data and the teacher's cached views are kept this way, so that memory stays flat as
the data grows, and forked or spawned workers share the pages through the operating system's cache."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

_DTYPES = {"float16": (np.float16, torch.float16), "float32": (np.float32, torch.float32),
           "int16": (np.int16, torch.int16), "int32": (np.int32, torch.int32), "int64": (np.int64, torch.int64),
           "uint8": (np.uint8, torch.uint8)}


class ArrayWriter:
    """Arrays written into ``folder`` (a temporary sibling until :meth:`commit`); ``meta`` is stored beside them."""

    def __init__(self, folder: Path, arrays: dict[str, tuple[tuple[int, ...], str]],
                 meta: dict[str, Any] | None = None):
        self.folder = folder
        self.tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.meta = {"arrays": {k: {"shape": list(shape), "dtype": dtype} for k, (shape, dtype) in arrays.items()},
                     **(meta or {})}
        self.arrays = {k: np.memmap(self.tmp / f"{k}.bin", dtype=_DTYPES[dtype][0], mode="w+", shape=shape)
                       for k, (shape, dtype) in arrays.items()}

    def write(self, name: str, index: Any, value: torch.Tensor) -> None:
        """``array[index] = value`` (converted to the array's dtype)."""
        arr = self.arrays[name]
        arr[index] = value.detach().cpu().numpy().astype(arr.dtype, copy=False)

    def commit(self) -> Path:
        for arr in self.arrays.values():
            arr.flush()
        names = list(self.arrays)
        self.arrays.clear()
        self.meta["sha256"] = {k: _digest(self.tmp / f"{k}.bin") for k in names}
        (self.tmp / "meta.json").write_text(json.dumps(self.meta, indent=1, sort_keys=True))
        if self.folder.exists():  # another process finished first: keep its copy
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            try:
                self.tmp.replace(self.folder)
            except OSError:  # lost a race to another writer
                shutil.rmtree(self.tmp, ignore_errors=True)
        return self.folder

    def abort(self) -> None:
        self.arrays.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _digest(path: Path) -> str:
    """20 hex digits of the SHA-256 of a file (as :func:`kdlab.files.file_digest`, a layer beside this one)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:20]


#: folders whose files matched their checksums in this process, with their files' modification times and sizes
_verified: set[tuple[Any, ...]] = set()


def problem(folder: Path) -> str | None:
    """What is wrong with a committed folder of arrays (``None``: nothing, or no folder): no readable
    ``meta.json``, a file missing or of the wrong size, or one that does not match its checksum. The checksums are
    read once per process and folder (later calls check sizes and modification times only)."""
    if not folder.exists():
        return None
    meta_file = folder / "meta.json"
    try:
        meta = json.loads(meta_file.read_text())
        specs = meta["arrays"]
        sums = meta["sha256"]
        if not isinstance(specs, dict) or not isinstance(sums, dict):
            raise ValueError("not a mapping of arrays")
    except FileNotFoundError:
        return "no meta.json: its writing was cut short"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"meta.json: {type(exc).__name__}: {exc}"[:300]
    for name, spec in specs.items():
        path = folder / f"{name}.bin"
        try:
            np_dtype, _ = _DTYPES[spec["dtype"]]
            size = int(np.prod(tuple(spec["shape"]))) * np.dtype(np_dtype).itemsize
        except (KeyError, TypeError, ValueError) as exc:
            return f"meta.json: array {name!r}: {type(exc).__name__}: {exc}"[:300]
        if not path.exists():
            return f"{name}.bin is missing"
        if path.stat().st_size != size:
            return f"{name}.bin has {path.stat().st_size} bytes, expected {size}"
    stats = [(p.stat().st_mtime_ns, p.stat().st_size) for p in [meta_file, *(folder / f"{k}.bin" for k in specs)]]
    key = (str(folder.resolve()), *stats)
    if key not in _verified:
        for name in specs:
            if sums.get(name) != _digest(folder / f"{name}.bin"):
                return f"{name}.bin does not match its checksum"
        _verified.add(key)
    return None


def read_meta(folder: Path) -> dict[str, Any] | None:
    """The metadata of a committed folder of arrays, or ``None``."""
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def open_arrays(folder: Path) -> dict[str, torch.Tensor] | None:
    """The arrays of a committed folder as CPU tensors over memory maps, or ``None`` when it is missing or broken."""
    meta = read_meta(folder)
    if meta is None:
        return None
    out = {}
    for name, spec in meta["arrays"].items():
        path = folder / f"{name}.bin"
        shape = tuple(spec["shape"])
        np_dtype, _ = _DTYPES[spec["dtype"]]
        if not path.exists() or path.stat().st_size != int(np.prod(shape)) * np.dtype(np_dtype).itemsize:
            return None
        # mode "c": copy-on-write pages, so the tensor is writable for torch and the file is never changed
        out[name] = torch.from_numpy(np.memmap(path, dtype=np_dtype, mode="c", shape=shape))
    return out
