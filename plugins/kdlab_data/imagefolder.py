"""Images in a folder tree ``root/<class>/<image>`` (PNG, JPEG, ...), one sub-folder per class, read with Pillow,
resized to a fixed size, and split into seeded, stratified train / validation / test splits."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

import kdlab

from ._split import carve

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


def make_imagefolder(params: ImageFolderParams, *, seed: int) -> kdlab.Data:
    """Your own images in root/<class>/<image> folders (PNG, JPEG, ...), resized, with seeded stratified
    train / validation / test splits."""
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
    arrays = np.stack([_read(path, params.size, params.mode) for path, _ in items])
    x = torch.from_numpy(arrays).float().div_(255.0)
    x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x.unsqueeze(1)  # (N, C, H, W)
    y = torch.tensor([label for _, label in items], dtype=torch.int64)
    rest, test = carve(x, y, n_test, seed)
    train, val = carve(rest.x, rest.y, n_val, seed + 1)
    if params.normalize:
        mean = train.x.mean(dim=(0, 2, 3), keepdim=True)
        std = train.x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        train, val, test = (kdlab.Split((s.x - mean) / std, s.y) for s in (train, val, test))
    return kdlab.Data(train=train, val=val, test=test, num_classes=len(classes), class_names=classes)
