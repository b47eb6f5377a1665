"""Arrays on disk, read lazily: a raw file per array (``<name>.bin``) and its dtype and shape in ``meta.json``,
written chunk by chunk into a temporary folder that is renamed when complete (readers see all of it or none), and
opened as memory-mapped tensors (copy-on-write, so nothing is read until used and nothing is written back).

Teacher outputs over streamed data and the teacher's cached views are kept this way, so that memory stays flat as
the data grows, and forked or spawned workers share the pages through the operating system's cache."""

from __future__ import annotations

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
        self.arrays.clear()
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
