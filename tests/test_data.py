"""The first-party data sources: split sizes, dtypes, label ranges, seeding and the transfer split."""

from __future__ import annotations

import pytest
import torch

import kdlab
from kdlab.plugins import get_registry


def _make(name: str, seed: int = 0, **params) -> kdlab.Data:
    comp = get_registry().get("data", name)
    return comp.build(comp.validate_params(params), seed=seed)


def _check_labelled(split: kdlab.Split, num_classes: int) -> None:
    assert split.x.dtype == torch.float32 and split.y is not None and split.y.dtype == torch.int64
    assert split.y.shape == (len(split),)
    assert int(split.y.min()) >= 0 and int(split.y.max()) < num_classes
    assert torch.isfinite(split.x).all()


# -- digits -----------------------------------------------------------------------------------------------------


def test_digits_splits():
    d = _make("digits")
    assert (len(d.train), len(d.val), len(d.test)) == (1797 - 360 - 180, 180, 360)
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10 and d.transfer is None
    for split in (d.train, d.val, d.test):
        _check_labelled(split, 10)
        assert float(split.x.min()) >= 0 and float(split.x.max()) <= 1
    # stratified: every class in every split
    assert all(len(torch.unique(s.y)) == 10 for s in (d.train, d.val, d.test))
    assert d.class_names == [str(i) for i in range(10)] and d.tasks == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_digits_splits_are_disjoint():
    d = _make("digits")
    rows = [tuple(r.tolist()) for s in (d.train, d.val, d.test) for r in s.x.flatten(1)]
    # the raw dataset has a handful of duplicate images; the splits together must still cover every row once
    assert len(rows) == 1797
    train = {tuple(r.tolist()) for r in d.train.x.flatten(1)}
    test = {tuple(r.tolist()) for r in d.test.x.flatten(1)}
    assert len(train & test) <= 5


def test_digits_same_seed_same_data_other_seed_other_split():
    a, b, c = _make("digits", seed=3), _make("digits", seed=3), _make("digits", seed=4)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.test.x, c.test.x)


def test_digits_sizes_and_flatten():
    d = _make("digits", test_size=100, val_size=50, flatten=True)
    assert (len(d.train), len(d.val), len(d.test)) == (1647, 50, 100)
    assert d.input_shape == (64,)


def test_digits_transfer_split():
    d = _make("digits", transfer_size=200)
    assert d.transfer is not None and len(d.transfer) == 200 and d.transfer.y is None
    assert d.transfer.x.shape == (200, 1, 8, 8) and d.transfer.x.dtype == torch.float32
    assert float(d.transfer.x.min()) >= 0 and float(d.transfer.x.max()) <= 1
    assert "transfer" in d.splits()
    e = _make("digits", transfer_size=200)
    assert torch.equal(d.transfer.x, e.transfer.x)


def test_digits_sizes_that_leave_no_training_data():
    with pytest.raises(kdlab.PluginError, match="leaves no training images"):
        _make("digits", test_size=1000, val_size=797)


# -- mnist1d ----------------------------------------------------------------------------------------------------


def test_mnist1d_default_splits(shared_cache):
    d = _make("mnist1d")
    assert (len(d.train), len(d.val), len(d.test)) == (3500, 500, 1000)
    assert d.input_shape == (40,) and d.num_classes == 10 and d.transfer is None
    for split in (d.train, d.val, d.test):
        _check_labelled(split, 10)
    assert len(torch.unique(d.val.y)) == 10
    # the generated arrays are cached under the data cache
    assert list((shared_cache / "data").glob("mnist1d-*.npz"))


def test_mnist1d_same_seed_same_data(shared_cache):
    a, b, c = _make("mnist1d", seed=0), _make("mnist1d", seed=0), _make("mnist1d", seed=1)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    # the split seed moves the validation rows; the benchmark's test split is the generator's, not the seed's
    assert not torch.equal(a.val.x, c.val.x)
    assert torch.equal(a.test.x, c.test.x)


def test_mnist1d_val_size(shared_cache):
    d = _make("mnist1d", val_size=100)
    assert (len(d.train), len(d.val)) == (3900, 100)


def test_mnist1d_transfer_split(shared_cache):
    d = _make("mnist1d", transfer_size=200)
    assert d.transfer is not None and d.transfer.y is None
    assert d.transfer.x.shape == (200, 40) and d.transfer.x.dtype == torch.float32
    assert torch.isfinite(d.transfer.x).all()
    # generated with another seed: not a copy of the training rows
    train_rows = {tuple(r.tolist()) for r in d.train.x}
    assert not any(tuple(r.tolist()) in train_rows for r in d.transfer.x)
    again = _make("mnist1d", transfer_size=200)
    assert torch.equal(d.transfer.x, again.transfer.x)


def test_mnist1d_transfer_seed_must_differ(shared_cache):
    with pytest.raises(kdlab.PluginError, match="transfer_seed must differ"):
        _make("mnist1d", transfer_size=10, transfer_seed=42)
