from __future__ import annotations

import hashlib
import json
from concurrent.futures import ProcessPoolExecutor

from pydantic import BaseModel, ConfigDict, Field

import kdlab

from ._split import carve, halves

_CHUNK = 10_000


class Mnist1dParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_samples: int = Field(5000, gt=0, description="examples generated for train+test (generator default 5000)")
    train_split: float = Field(0.8, gt=0, lt=1, description="train share of num_samples (generator default 0.8)")
    generator_seed: int = Field(42, description="seed of the mnist1d generator (42: the standard benchmark)")
    val_size: int = Field(500, ge=1, description="examples carved from the train split for validation")
    transfer_size: int = Field(0, ge=0, description="unlabeled examples generated with transfer_seed (0: none)")
    transfer_seed: int = Field(1000, description="base seed of the transfer split (must differ from generator_seed)")


def _generate(num_samples: int, train_split: float, seed: int) -> dict:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = num_samples, train_split, seed
    ds = make_dataset(args)
    return {k: ds[k] for k in ("x", "y", "x_test", "y_test")}


def _cached(tag: dict, make):
    import numpy as np

    key = hashlib.sha256(json.dumps(tag, sort_keys=True).encode()).hexdigest()[:16]
    path = kdlab.cache_dir("data") / f"mnist1d-{key}.npz"
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    arrays = make()
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return arrays


def _transfer(n: int, seed: int) -> dict:
    import numpy as np

    seeds = [seed + i for i in range((n + _CHUNK - 1) // _CHUNK)]
    sizes = [min(_CHUNK, n - i * _CHUNK) for i in range(len(seeds))]
    # Each chunk is the package's own generator, default arguments, its own seed; chunks run in parallel.
    # The generator makes 10 classes x (num_samples // 10), so ask for a round number and trim.
    jobs = [(-(-s // 10) * 10, 1.0 - 1e-9, sd) for s, sd in zip(sizes, seeds)]
    if len(jobs) > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=min(len(jobs), 4), mp_context=mp.get_context("spawn")) as ex:
            parts = list(ex.map(_generate, *zip(*jobs)))
    else:
        parts = [_generate(*jobs[0])]
    xs = np.concatenate([np.concatenate([p["x"], p["x_test"]])[:s] for p, s in zip(parts, sizes)])
    return {"x": xs.astype("float32")}


def make_mnist1d(params: Mnist1dParams, *, seed: int) -> kdlab.Data:
    """MNIST-1D (Greydanus 2020) from the mnist1d package's generator: 4,000 train / 1,000 test by default,
    a validation split carved from train and an optional unlabeled transfer split made with another seed."""
    import torch

    if params.transfer_size and params.transfer_seed == params.generator_seed:
        raise ValueError("transfer_seed must differ from generator_seed, or the transfer split repeats the data")
    base = _cached(
        {"v": 1, "n": params.num_samples, "split": params.train_split, "seed": params.generator_seed},
        lambda: {k: v for k, v in _generate(params.num_samples, params.train_split, params.generator_seed).items()},
    )
    x = torch.tensor(base["x"], dtype=torch.float32)
    y = torch.tensor(base["y"], dtype=torch.int64)
    test = kdlab.Split(torch.tensor(base["x_test"], dtype=torch.float32),
                       torch.tensor(base["y_test"], dtype=torch.int64))
    if params.val_size >= len(y):
        raise ValueError(f"val_size={params.val_size} leaves no training examples of {len(y)}")
    train, val = carve(x, y, params.val_size, seed)
    transfer = None
    if params.transfer_size:
        arr = _cached({"v": 1, "transfer": params.transfer_size, "seed": params.transfer_seed},
                      lambda: _transfer(params.transfer_size, params.transfer_seed))
        transfer = kdlab.Split(torch.tensor(arr["x"], dtype=torch.float32))
    return kdlab.Data(train=train, val=val, test=test, transfer=transfer, num_classes=10,
                      class_names=[str(i) for i in range(10)], tasks=halves(10))
