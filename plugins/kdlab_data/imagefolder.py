"""Images in a folder tree ``root/<class>/<image>`` (PNG, JPEG, ...), one sub-folder per class, read with Pillow,
resized to a fixed size, and split into seeded, stratified train / validation / test splits.

With ``stream: true`` the images stay on disk: each split's inputs are an :class:`ImageFiles` dataset that reads
an image when it is indexed (in the DataLoader's worker processes), so memory does not grow with the number of
images. Both forms give the same tensors: the same split, the same resize, the same normalisation statistics
(summed exactly over the training images' 8-bit values)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

import kdlab

from ._split import carve_indices

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageFolderParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: str = Field(..., description="folder with one sub-folder of images per class (the sub-folder names are "
                                       "the class names, sorted)")
    size: int = Field(32, gt=0, description="images are resized to size x size pixels")
    mode: Literal["rgb", "grayscale"] = Field("rgb", description="3 colour channels, or 1 grey channel")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of the images held out for validation")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of the images held out for testing")
    normalize: bool = Field(True, description="standardise each channel by the training split's mean and std")
    limit_per_class: int | None = Field(None, gt=0, description="use at most this many images of each class "
                                                                "(the first, by file name)")
    stream: bool = Field(False, description="read the images from disk as training needs them (a DataLoader "
                                            "with workers) instead of holding them all in memory")

    @model_validator(mode="after")
    def _fractions(self) -> ImageFolderParams:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave a share for training (sum below 1)")
        return self


def list_images(root: Path, limit_per_class: int | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """The class names (sorted sub-folder names) and the ``(file, label)`` pairs, sorted by file name."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (expected root/<class>/<image> files)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise ValueError(f"{root}: expected one sub-folder per class (at least 2), found "
                         f"{len(classes)}{': ' + classes[0] if classes else ''}")
    items: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
        if not files:
            raise ValueError(f"{root / name}: class folder without images (expected files ending in "
                             f"{', '.join(EXTENSIONS)})")
        items += [(f, label) for f in files[:limit_per_class]]
    return classes, items


def _read(path: Path, size: int, mode: str):
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB" if mode == "rgb" else "L")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None


def to_tensor(pixels: Any, mean: Any = None, std: Any = None):
    """One image's 8-bit pixels ``(H, W, C)`` or ``(H, W)`` as a float32 ``(C, H, W)`` tensor in [0, 1], normalised
    by ``mean``/``std`` (tensors of shape ``(C, 1, 1)``) when given."""
    import torch

    x = torch.from_numpy(pixels if pixels.flags.writeable else pixels.copy()).float().div_(255.0)
    x = x.permute(2, 0, 1) if x.ndim == 3 else x.unsqueeze(0)
    return x if mean is None else (x - mean) / std


class ImageFiles:
    """A streamed split's inputs: image files read, resized and normalised when indexed."""

    def __init__(self, paths: list[str], size: int, mode: str, mean: list[float] | None, std: list[float] | None):
        self.paths, self.size, self.mode = paths, size, mode
        self.mean, self.std = mean, std
        self._norm = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torch

        if self.mean is not None and self._norm is None:
            self._norm = (torch.tensor(self.mean).view(-1, 1, 1), torch.tensor(self.std).view(-1, 1, 1))
        mean, std = self._norm or (None, None)
        return to_tensor(_read(Path(self.paths[i]), self.size, self.mode), mean, std)

    def __getstate__(self) -> dict[str, Any]:  # workers rebuild the normalisation tensors
        return {**self.__dict__, "_norm": None}


class _Stats:
    """Per-channel sums of 8-bit pixel values, exact in float64: the mean and (unbiased) std of a set of images."""

    def __init__(self) -> None:
        self.n, self.s, self.ss = 0, None, None

    def add(self, pixels: Any, channels: int) -> None:
        """Images (or one image) with ``channels`` channels last."""
        import numpy as np

        a = pixels.astype(np.float64).reshape(-1, channels)
        self.n += a.shape[0]
        s, ss = a.sum(0), (a * a).sum(0)
        self.s, self.ss = (s, ss) if self.s is None else (self.s + s, self.ss + ss)

    def result(self) -> tuple[list[float], list[float]]:
        import numpy as np

        mean = self.s / (self.n * 255.0)
        var = (self.ss / 255.0**2 - self.n * mean * mean) / max(self.n - 1, 1)
        return mean.tolist(), np.maximum(np.sqrt(np.maximum(var, 0)), 1e-6).tolist()


def _stats_of_files(paths: list[str], size: int, mode: str, key: dict[str, Any]) -> tuple[list[float], list[float]]:
    """The statistics of the training images, read once (one image at a time) and cached by the files' names,
    sizes and times."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = kdlab.cache_dir("data") / f"imagefolder-stats-{digest}.json"
    if path.exists():
        stored = json.loads(path.read_text())
        return stored["mean"], stored["std"]
    stats = _Stats()
    for p in paths:
        stats.add(_read(Path(p), size, mode), 3 if mode == "rgb" else 1)
    mean, std = stats.result()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"mean": mean, "std": std}))
    tmp.replace(path)
    return mean, std


def make_imagefolder(params: ImageFolderParams, *, seed: int) -> kdlab.Data:
    """Your own images in root/<class>/<image> folders (PNG, JPEG, ...), resized, with seeded stratified
    train / validation / test splits (streamed from disk with ``stream: true``)."""
    try:
        import PIL  # noqa: F401
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        raise ImportError("the imagefolder data source reads images with Pillow: pip install pillow") from None
    import numpy as np
    import torch

    root = Path(params.root).expanduser()
    classes, items = list_images(root, params.limit_per_class)
    n = len(items)
    n_test = max(1, round(params.test_fraction * n))
    n_val = max(1, round(params.val_fraction * n))
    if n - n_test - n_val < 1:
        raise ValueError(f"{root}: {n} images are too few for a train, validation and test split")
    y = torch.tensor([label for _, label in items], dtype=torch.int64)
    rest, test = carve_indices(y, n_test, seed)
    train_r, val_r = carve_indices(y[rest], n_val, seed + 1)
    order = {"train": rest[train_r], "val": rest[val_r], "test": test}
    if params.stream:
        paths = {k: [str(items[i][0]) for i in idx.tolist()] for k, idx in order.items()}
        mean = std = None
        if params.normalize:
            key = {"v": 1, "files": [(p, Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in paths["train"]],
                   "size": params.size, "mode": params.mode}
            mean, std = _stats_of_files(paths["train"], params.size, params.mode, key)
        splits = {k: kdlab.Split(ImageFiles(paths[k], params.size, params.mode, mean, std), y[idx])
                  for k, idx in order.items()}
    else:
        arrays = np.stack([_read(path, params.size, params.mode) for path, _ in items])
        x = torch.from_numpy(arrays).float().div_(255.0)
        # (N, C, H, W), contiguous: a batch laid out otherwise (channels last) is computed in another order
        x = x.permute(0, 3, 1, 2).contiguous() if x.ndim == 4 else x.unsqueeze(1)
        splits = {k: kdlab.Split(x[idx], y[idx]) for k, idx in order.items()}
        if params.normalize:
            stats = _Stats()
            stats.add(arrays[order["train"].numpy()], 3 if params.mode == "rgb" else 1)
            mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in stats.result())
            splits = {k: kdlab.Split((s.x - mean) / std, s.y) for k, s in splits.items()}
    return kdlab.Data(train=splits["train"], val=splits["val"], test=splits["test"], num_classes=len(classes),
                      class_names=classes)
