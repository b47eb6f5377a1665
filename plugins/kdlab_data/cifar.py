"""CIFAR-10 and CIFAR-100 from the official "python version" files, which users download themselves
(https://www.cs.toronto.edu/~kriz/cifar.html, ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``, unpacked).

The files are pickles: CIFAR-10's ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` each hold ``b"data"``
(uint8, shape ``(N, 3072)``: 1024 red, 1024 green, 1024 blue values of a 32x32 image, row-major) and ``b"labels"``
(N ints in 0-9); ``batches.meta`` holds ``b"label_names"``. CIFAR-100's ``train`` and ``test`` hold ``b"data"`` and
``b"fine_labels"`` (0-99) and ``b"coarse_labels"`` (0-19); ``meta`` holds ``b"fine_label_names"`` and
``b"coarse_label_names"``. They are read with an unpickler that only admits the numpy array types these files
contain, so a tampered file cannot run code.

With ``stream: true`` the images are copied once, as they are (8 bits a value), into a file in kdlab's data cache,
and each split's inputs are a :class:`CifarImages` dataset that reads an image from it when indexed: memory does
not grow with the data, and the tensors are the ones the in-memory form gives.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

import kdlab

from ._split import carve_indices, halves

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
#: the per-channel mean and standard deviation of the CIFAR-10 training images (pixel range 0-1)
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
#: the per-channel mean and standard deviation of the CIFAR-100 training images (pixel range 0-1)
MEAN100 = (0.5071, 0.4865, 0.4409)
STD100 = (0.2673, 0.2564, 0.2762)


class Cifar10Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: str = Field(..., description="folder holding data_batch_1..5 and test_batch (cifar-10-batches-py), "
                                       "or the folder that contains cifar-10-batches-py")
    val_size: int = Field(5000, gt=0, description="training images held out for validation (stratified, seeded)")
    normalize: bool = Field(True, description="subtract the standard per-channel mean and divide by the std")
    limit: int | None = Field(None, gt=0, description="use only the first N training images (before the "
                                                      "validation split) and the first N test images")
    stream: bool = Field(False, description="read images from an 8-bit copy on disk as training needs them "
                                            "(a DataLoader with workers) instead of holding them in memory")


class Cifar100Params(Cifar10Params):
    root: str = Field(..., description="folder holding train, test and meta (cifar-100-python), or the folder "
                                       "that contains cifar-100-python")
    labels: Literal["fine", "coarse"] = Field("fine", description="the 100 fine classes or the 20 superclasses")


@dataclass(frozen=True)
class Format:
    """Where one of the two CIFAR datasets keeps what."""

    title: str
    folder: str
    train: tuple[str, ...]
    test: str
    meta: str
    num_classes: int
    label_key: bytes
    names_key: bytes
    mean: tuple[float, ...]
    std: tuple[float, ...]


CIFAR10 = Format("CIFAR-10", "cifar-10-batches-py", TRAIN_FILES, TEST_FILE, META_FILE, 10, b"labels",
                 b"label_names", MEAN, STD)


def cifar100_format(labels: str) -> Format:
    fine = labels == "fine"
    return Format("CIFAR-100", "cifar-100-python", ("train",), "test", "meta", 100 if fine else 20,
                  b"fine_labels" if fine else b"coarse_labels",
                  b"fine_label_names" if fine else b"coarse_label_names", MEAN100, STD100)


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


def read_batch(path: Path, fmt: Format = CIFAR10) -> dict[bytes, Any]:
    """One CIFAR pickle as a dict with bytes keys; errors name the file and what was expected."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected the {fmt.title} python-version file {path.name!r})")
    try:
        with open(path, "rb") as f:
            obj = _ArraysOnly(f, encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, say which file
        raise ValueError(f"{path}: not a {fmt.title} python-version pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict with keys b'data' and {fmt.label_key!r}, got "
                         f"{type(obj).__name__}")
    return obj


def _arrays(path: Path, fmt: Format = CIFAR10) -> tuple[Any, Any]:
    import numpy as np

    batch = read_batch(path, fmt)
    key = fmt.label_key
    missing = [k for k in (b"data", key) if k not in batch]
    if missing:
        raise ValueError(f"{path}: expected keys b'data' and {key!r}, missing {', '.join(map(repr, missing))} "
                         f"(found {', '.join(map(repr, sorted(batch, key=repr)))})")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: expected b'data' as uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: expected {data.shape[0]} {key!r} (one per row of b'data'), got shape "
                         f"{labels.shape}")
    top = fmt.num_classes - 1
    if labels.size and (labels.min() < 0 or labels.max() > top):
        raise ValueError(f"{path}: expected {key!r} in 0-{top}, got values from {labels.min()} to {labels.max()}")
    return data, labels.astype("int64")


def find_root(root: str, fmt: Format = CIFAR10) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder (expected the unpacked {fmt.folder} folder)")
    if not (path / fmt.test).exists() and (path / fmt.folder).is_dir():
        path = path / fmt.folder
    return path


class CifarImages:
    """A streamed split's inputs: rows of an 8-bit ``(N, 3072)`` image file, read when indexed (the file is opened
    in each process on first use), scaled to [0, 1] and normalised by ``mean``/``std`` when given."""

    def __init__(self, path: str, total: int, rows: list[int], mean: tuple[float, ...] | None,
                 std: tuple[float, ...] | None):
        self.path, self.total, self.rows, self.mean, self.std = path, total, rows, mean, std
        self._file = self._norm = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[Any]:
        import numpy as np
        import torch

        if self._file is None:
            self._file = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.total, 3072))
            if self.mean is not None:
                self._norm = (torch.tensor(self.mean).view(1, 3, 1, 1), torch.tensor(self.std).view(1, 3, 1, 1))
        x = _images(np.ascontiguousarray(self._file[[self.rows[i] for i in indices]]), self._norm)
        return list(x)

    def __getstate__(self) -> dict[str, Any]:  # a worker process opens the file itself
        return {**self.__dict__, "_file": None, "_norm": None}


def _images(a: Any, norm: tuple[Any, Any] | None):
    import torch

    x = torch.from_numpy(a).reshape(-1, 3, 32, 32).float().div_(255.0)
    return x.sub_(norm[0]).div_(norm[1]) if norm is not None else x  # in place: the full set is 600 MB as floats


def _stream_file(root: Path, fmt: Format, files: list[str], limit: int | None, tag: str) -> tuple[str, int, Any]:
    """The images of ``files`` (the first ``limit``) copied once into an 8-bit file in kdlab's data cache, one
    source file at a time; returns its path, its number of rows and the labels."""
    import numpy as np

    sources = [root / f for f in files]
    key = {"v": 1, "fmt": fmt.title, "label": fmt.label_key.decode(), "limit": limit,
           "files": [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in sources if p.exists()]}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = kdlab.cache_dir("data") / f"{fmt.folder}-{tag}-{digest}.u8"
    labels_path = path.with_suffix(".labels.npy")
    if path.exists() and labels_path.exists():
        labels = np.load(labels_path)
        return str(path), len(labels), labels
    parts = [_arrays(p, fmt) for p in sources]  # validates every file first (one at a time would do as well)
    total = sum(len(d) for d, _ in parts)
    n = min(total, limit) if limit else total
    tmp = path.with_suffix(".tmp")
    out = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(max(n, 1), 3072))
    row, labels = 0, []
    for data, y in parts:
        take = min(len(data), n - row)
        out[row:row + take] = data[:take]
        labels.append(y[:take])
        row += take
    out.flush()
    del out
    labels = np.concatenate(labels)
    np.save(labels_path, labels)
    tmp.replace(path)
    return str(path), n, labels


def make_cifar10(params: Cifar10Params, *, seed: int) -> kdlab.Data:
    """CIFAR-10 (Krizhevsky 2009) from the official python-version files you downloaded: 50,000 train (a seeded,
    stratified validation split carved from it) / 10,000 test colour images of 32x32 in 10 classes."""
    return _make(params, CIFAR10, seed, CLASS_NAMES)


def make_cifar100(params: Cifar100Params, *, seed: int) -> kdlab.Data:
    """CIFAR-100 (Krizhevsky 2009) from the official python-version files you downloaded: 50,000 train (a seeded,
    stratified validation split carved from it) / 10,000 test colour images of 32x32 in 100 classes (or 20
    superclasses)."""
    fmt = cifar100_format(params.labels)
    return _make(params, fmt, seed, [str(i) for i in range(fmt.num_classes)])


def _make(params: Cifar10Params, fmt: Format, seed: int, default_names: list[str]) -> kdlab.Data:
    import numpy as np
    import torch

    root = find_root(params.root, fmt)
    norm = (torch.tensor(fmt.mean).view(1, 3, 1, 1), torch.tensor(fmt.std).view(1, 3, 1, 1)) \
        if params.normalize else None
    if params.stream:
        train_file, n_train, y_train = _stream_file(root, fmt, list(fmt.train), params.limit, "train")
        test_file, n_test, y_test = _stream_file(root, fmt, [fmt.test], params.limit, "test")
    else:
        parts = [_arrays(root / name, fmt) for name in fmt.train]
        x_train = np.concatenate([p[0] for p in parts])
        y_train = np.concatenate([p[1] for p in parts])
        x_test, y_test = _arrays(root / fmt.test, fmt)
        if params.limit:
            x_train, y_train = x_train[: params.limit], y_train[: params.limit]
            x_test, y_test = x_test[: params.limit], y_test[: params.limit]
    if params.val_size >= len(y_train):
        raise ValueError(f"val_size={params.val_size} leaves no training images of {len(y_train)}")
    y_train_t, y_test_t = torch.from_numpy(np.asarray(y_train)), torch.from_numpy(np.asarray(y_test))
    train_rows, val_rows = carve_indices(y_train_t, params.val_size, seed)
    if params.stream:
        mean, std = (fmt.mean, fmt.std) if params.normalize else (None, None)

        def split(file: str, total: int, rows: Any, y: Any) -> kdlab.Split:
            return kdlab.Split(CifarImages(file, total, rows.tolist(), mean, std), y[rows])

        train = split(train_file, n_train, train_rows, y_train_t)
        val = split(train_file, n_train, val_rows, y_train_t)
        test = split(test_file, n_test, torch.arange(n_test), y_test_t)
    else:
        x = _images(x_train, norm)
        train, val = kdlab.Split(x[train_rows], y_train_t[train_rows]), kdlab.Split(x[val_rows], y_train_t[val_rows])
        test = kdlab.Split(_images(x_test, norm), y_test_t)
    names = default_names
    if (root / fmt.meta).exists():
        meta = read_batch(root / fmt.meta, fmt)
        raw = meta.get(fmt.names_key)
        if isinstance(raw, list) and len(raw) == fmt.num_classes:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw]
    return kdlab.Data(train=train, val=val, test=test, num_classes=fmt.num_classes, class_names=names,
                      tasks=halves(fmt.num_classes))
