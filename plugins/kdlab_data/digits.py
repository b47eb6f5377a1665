from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

import kdlab

from ._split import carve, halves


class DigitsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    test_size: int = Field(360, gt=0, description="images held out for the test split")
    val_size: int = Field(180, gt=0, description="images held out for the validation split")
    flatten: bool = Field(False, description="give inputs as 64-vectors instead of 1x8x8 images")
    transfer_size: int = Field(0, ge=0, description="unlabeled transfer images: training images shifted by up to "
                                                   "1 pixel with Gaussian noise (0: no transfer split)")
    transfer_noise: float = Field(0.05, ge=0, description="noise std of the transfer images (pixel range 0-1)")


def make_digits(params: DigitsParams, *, seed: int) -> kdlab.Data:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 real images), seeded stratified splits."""
    import torch
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.tensor(raw.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(raw.target, dtype=torch.int64)
    if params.test_size + params.val_size >= len(y):
        raise ValueError(f"test_size + val_size = {params.test_size + params.val_size} leaves no training images "
                         f"of {len(y)}")
    rest, test = carve(x, y, params.test_size, seed)
    train, val = carve(rest.x, rest.y, params.val_size, seed + 1)
    transfer = None
    if params.transfer_size:
        g = torch.Generator().manual_seed(seed + 2)
        src = train.x[torch.randint(len(train), (params.transfer_size,), generator=g)]
        padded = torch.nn.functional.pad(src, (1, 1, 1, 1))
        dx = torch.randint(0, 3, (params.transfer_size,), generator=g)
        dy = torch.randint(0, 3, (params.transfer_size,), generator=g)
        rows = torch.arange(8)
        xs = torch.stack([padded[i, :, dy[i] + rows][:, :, dx[i] + rows] for i in range(params.transfer_size)])
        xs = (xs + params.transfer_noise * torch.randn(xs.shape, generator=g)).clamp(0, 1)
        transfer = kdlab.Split(xs)
    splits = [train, val, test] + ([transfer] if transfer is not None else [])
    if params.flatten:
        splits = [kdlab.Split(s.x.reshape(len(s), -1), s.y) for s in splits]
    return kdlab.Data(
        train=splits[0], val=splits[1], test=splits[2], transfer=splits[3] if transfer is not None else None,
        num_classes=10, class_names=[str(i) for i in range(10)], tasks=halves(10),
    )
