"""CIFAR-10 from the official "python version" files, which users download themselves
(https://www.cs.toronto.edu/~kriz/cifar.html, ``cifar-10-python.tar.gz``, unpacked).

The files are pickles: ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` each hold ``b"data"`` (uint8, shape
``(N, 3072)``: 1024 red, 1024 green, 1024 blue values of a 32x32 image, row-major) and ``b"labels"`` (N ints in
0-9); ``batches.meta`` holds ``b"label_names"``. They are read with an unpickler that only admits the numpy array
types these files contain, so a tampered file cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

import kdlab

from ._split import carve, halves

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
#: the per-channel mean and standard deviation of the CIFAR-10 training images (pixel range 0-1)
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class Cifar10Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: str = Field(..., description="folder holding data_batch_1..5 and test_batch (cifar-10-batches-py), "
                                       "or the folder that contains cifar-10-batches-py")
    val_size: int = Field(5000, gt=0, description="training images held out for validation (stratified, seeded)")
    normalize: bool = Field(True, description="subtract the standard per-channel mean and divide by the std")
    limit: int | None = Field(None, gt=0, description="use only the first N training images (before the "
                                                      "validation split) and the first N test images")


class _ArraysOnly(pickle.Unpickler):
    """Admits the globals a CIFAR batch needs (numpy arrays and dtypes), nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes into protocol-2 pickles
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are expected)")


def read_batch(path: Path) -> dict[bytes, Any]:
    """One CIFAR pickle as a dict with bytes keys; errors name the file and what was expected."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected the CIFAR-10 python-version file {path.name!r})")
    try:
        with open(path, "rb") as f:
            obj = _ArraysOnly(f, encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, say which file
        raise ValueError(f"{path}: not a CIFAR-10 python-version pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict with keys b'data' and b'labels', got {type(obj).__name__}")
    return obj


def _arrays(path: Path) -> tuple[Any, Any]:
    import numpy as np

    batch = read_batch(path)
    missing = [k for k in (b"data", b"labels") if k not in batch]
    if missing:
        raise ValueError(f"{path}: expected keys b'data' and b'labels', missing {', '.join(map(repr, missing))} "
                         f"(found {', '.join(map(repr, sorted(batch, key=repr)))})")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: expected b'data' as uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: expected {data.shape[0]} b'labels' (one per row of b'data'), got shape "
                         f"{labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: expected b'labels' in 0-9, got values from {labels.min()} to {labels.max()}")
    return data, labels.astype("int64")


def find_root(root: str) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder (expected the unpacked cifar-10-batches-py folder)")
    if not (path / TEST_FILE).exists() and (path / "cifar-10-batches-py").is_dir():
        path = path / "cifar-10-batches-py"
    return path


def make_cifar10(params: Cifar10Params, *, seed: int) -> kdlab.Data:
    """CIFAR-10 (Krizhevsky 2009) from the official python-version files you downloaded: 50,000 train (a seeded,
    stratified validation split carved from it) / 10,000 test colour images of 32x32 in 10 classes."""
    import numpy as np
    import torch

    root = find_root(params.root)
    parts = [_arrays(root / name) for name in TRAIN_FILES]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = _arrays(root / TEST_FILE)
    if params.limit:
        x_train, y_train = x_train[: params.limit], y_train[: params.limit]
        x_test, y_test = x_test[: params.limit], y_test[: params.limit]
    if params.val_size >= len(y_train):
        raise ValueError(f"val_size={params.val_size} leaves no training images of {len(y_train)}")

    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)

    def images(a: Any) -> torch.Tensor:
        x = torch.from_numpy(a).reshape(-1, 3, 32, 32).float().div_(255.0)
        return x.sub_(mean).div_(std) if params.normalize else x  # in place: the full set is 600 MB as floats

    train, val = carve(images(x_train), torch.from_numpy(y_train), params.val_size, seed)
    test = kdlab.Split(images(x_test), torch.from_numpy(y_test))
    names = CLASS_NAMES
    if (root / META_FILE).exists():
        meta = read_batch(root / META_FILE)
        raw = meta.get(b"label_names")
        if isinstance(raw, list) and len(raw) == 10:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw]
    return kdlab.Data(train=train, val=val, test=test, num_classes=10, class_names=names, tasks=halves(10))
