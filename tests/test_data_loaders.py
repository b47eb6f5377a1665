"""Data users download themselves: CIFAR-10 python-version pickles and image folders, made small in the real
formats in temporary folders; their errors; and a tiny distillation on each."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import kdlab
from conftest import tiny_digits_config
from kdlab.errors import PluginError
from kdlab.modes import run
from kdlab.plugins import get_registry
from kdlab_data.cifar import MEAN, STD
from kdlab_test_helpers import load_config


def _make(name: str, seed: int = 0, **params) -> kdlab.Data:
    comp = get_registry().get("data", name)
    return comp.build(comp.validate_params(params), seed=seed)


# -- CIFAR-10 ---------------------------------------------------------------------------------------------------


def _cifar_batch(n: int, offset: int, rng: np.random.Generator) -> dict:
    labels = [(offset + i) % 10 for i in range(n)]
    data = np.zeros((n, 3072), dtype=np.uint8)
    for i, label in enumerate(labels):
        # each class a colour, plus noise, laid out as the real files are: 1024 R, 1024 G, 1024 B
        base = np.repeat(np.array([label * 25, 255 - label * 25, (label * 70) % 256], dtype=np.int64), 1024)
        data[i] = np.clip(base + rng.integers(-20, 21, 3072), 0, 255).astype(np.uint8)
    # the official files were written by Python 2: bytes keys, a list of int labels
    return {b"batch_label": b"training batch", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * n}


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        with open(root / f"data_batch_{i}", "wb") as f:
            pickle.dump(_cifar_batch(20, i, rng), f, protocol=2)
    with open(root / "test_batch", "wb") as f:
        pickle.dump(_cifar_batch(30, 0, rng), f, protocol=2)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f, protocol=2)
    return root


def test_cifar10_splits(cifar_root):
    d = _make("cifar10", root=str(cifar_root), val_size=20)
    assert (len(d.train), len(d.val), len(d.test)) == (80, 20, 30)
    assert d.input_shape == (3, 32, 32) and d.num_classes == 10 and d.class_names[0] == "airplane"
    for s in (d.train, d.val, d.test):
        assert s.x.dtype == torch.float32 and s.y.dtype == torch.int64
        assert int(s.y.min()) >= 0 and int(s.y.max()) <= 9
    assert len(torch.unique(d.val.y)) == 10  # stratified


def test_cifar10_pixel_layout_and_normalisation(cifar_root):
    raw = _make("cifar10", root=str(cifar_root), val_size=10, normalize=False)
    with open(cifar_root / "test_batch", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    first = torch.from_numpy(batch[b"data"][0].astype(np.float32) / 255).reshape(3, 32, 32)
    assert torch.equal(raw.test.x[0], first)  # channel-major, row-major, as the format says
    assert 0 <= float(raw.test.x.min()) and float(raw.test.x.max()) <= 1
    norm = _make("cifar10", root=str(cifar_root), val_size=10)
    expected = (raw.test.x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(norm.test.x, expected)


def test_cifar10_parent_folder_limit_and_seed(cifar_root):
    d = _make("cifar10", root=str(cifar_root.parent), val_size=10, limit=40)  # the folder holding the batches
    assert (len(d.train), len(d.val), len(d.test)) == (30, 10, 30)
    a = _make("cifar10", seed=1, root=str(cifar_root), val_size=20)
    b = _make("cifar10", seed=1, root=str(cifar_root), val_size=20)
    c = _make("cifar10", seed=2, root=str(cifar_root), val_size=20)
    assert torch.equal(a.val.x, b.val.x) and not torch.equal(a.val.x, c.val.x)


class _Py2Pickler(pickle._Pickler):
    """Writes every str and bytes as a Python 2 ``str`` (SHORT_BINSTRING/BINSTRING), as the official files are."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str


def test_cifar10_reads_pickles_as_python_2_wrote_them(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"batch_label": "batch", "labels": [i % 10 for i in range(20)],
                 "data": rng.integers(0, 256, (20, 3072), dtype=np.uint8)}
        buf = io.BytesIO()
        _Py2Pickler(buf, protocol=2).dump(batch)
        # numpy 1.x (and Python 2) name the array reconstructor numpy.core.multiarray
        (root / name).write_bytes(buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    d = _make("cifar10", root=str(root), val_size=10)
    assert (len(d.train), len(d.val), len(d.test)) == (90, 10, 20)
    assert d.test.y.tolist() == [i % 10 for i in range(20)]


def test_cifar10_missing_folder(tmp_path):
    with pytest.raises(PluginError) as info:
        _make("cifar10", root=str(tmp_path / "nowhere"))
    msg = str(info.value)
    assert "data 'cifar10' from plugin 'kdlab-data'" in msg and "nowhere: no such folder" in msg


def test_cifar10_missing_file(cifar_root):
    (cifar_root / "data_batch_3").unlink()
    with pytest.raises(PluginError, match=r"data_batch_3: no such file \(expected the CIFAR-10 python-version file"):
        _make("cifar10", root=str(cifar_root))


def test_cifar10_wrong_pickle_keys(cifar_root):
    with open(cifar_root / "data_batch_2", "wb") as f:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}, f)  # str keys, not bytes
    with pytest.raises(PluginError) as info:
        _make("cifar10", root=str(cifar_root))
    msg = str(info.value)
    assert "data_batch_2: expected keys b'data' and b'labels', missing b'data', b'labels'" in msg
    assert "found 'data', 'labels'" in msg


def test_cifar10_wrong_shape(cifar_root):
    with open(cifar_root / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(PluginError,
                       match=r"test_batch: expected b'data' as uint8 of shape \(N, 3072\), got uint8 \(2, 1024\)"):
        _make("cifar10", root=str(cifar_root))


def test_cifar10_not_a_pickle_and_no_code_execution(cifar_root):
    (cifar_root / "data_batch_1").write_text("hello")
    with pytest.raises(PluginError, match="data_batch_1: not a CIFAR-10 python-version pickle"):
        _make("cifar10", root=str(cifar_root))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(cifar_root / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(PluginError, match="refusing to load builtins.print"):
        _make("cifar10", root=str(cifar_root))


def test_cifar10_distillation(cifar_root, write_config):
    cfg = tiny_digits_config(**{
        "data": {"name": "cifar10", "params": {"root": str(cifar_root), "val_size": 20}},
        "teacher.name": "cnn2d", "teacher.params": {"channels": [4, 8]}, "teacher.training.epochs": 2,
        "student.params": {"hidden": [8]}, "training.epochs": 2, "tracking.enabled": False,
    })
    result = run(load_config(write_config(cfg)))
    assert result.metrics["student_params"] == 3072 * 8 + 8 + 8 * 10 + 10  # an MLP flattens the 3x32x32 images
    assert 0 <= result.metrics["test_accuracy"] <= 1 and 0 <= result.metrics["agreement"] <= 1
    assert len(result.fit.history) == 2


def test_cifar10_root_is_required(write_config):
    from kdlab.errors import ConfigError

    cfg = tiny_digits_config(**{"data": {"name": "cifar10", "params": {}}})
    with pytest.raises(ConfigError) as info:
        load_config(write_config(cfg))
    assert info.value.problems[0].key == "data.params.root" and "required" in info.value.problems[0].message


# -- image folders ----------------------------------------------------------------------------------------------


COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "fox": (40, 40, 200)}


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(np.array(colour) + rng.integers(-30, 31, (14, 10, 3)), 0, 255).astype(np.uint8)
            ext = "png" if i % 2 else "jpg"  # both formats, odd sizes: everything is resized
            Image.fromarray(pixels).save(root / name / f"{i:02d}.{ext}")
    (root / "cat" / "notes.txt").write_text("not an image, skipped by extension")
    return root


def test_imagefolder_splits(image_root):
    d = _make("imagefolder", root=str(image_root), size=8, val_fraction=0.25, test_fraction=0.25)
    assert d.class_names == ["cat", "dog", "fox"] and d.num_classes == 3
    assert (len(d.train), len(d.val), len(d.test)) == (18, 9, 9)
    assert d.input_shape == (3, 8, 8)
    for s in (d.train, d.val, d.test):
        assert s.x.dtype == torch.float32 and s.y.dtype == torch.int64 and set(s.y.tolist()) == {0, 1, 2}
    # normalised by the training split's statistics
    assert torch.allclose(d.train.x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)


def test_imagefolder_pixels_grayscale_and_limit(image_root):
    d = _make("imagefolder", root=str(image_root), size=4, normalize=False, mode="grayscale", limit_per_class=6)
    assert d.input_shape == (1, 4, 4) and len(d.train) + len(d.val) + len(d.test) == 18
    rgb = _make("imagefolder", root=str(image_root), size=4, normalize=False)
    assert 0 <= float(rgb.train.x.min()) and float(rgb.train.x.max()) <= 1
    # the red channel of cat images is high, of fox images low
    cats, foxes = rgb.train.x[rgb.train.y == 0], rgb.train.x[rgb.train.y == 2]
    assert float(cats[:, 0].mean()) > 0.6 > 0.3 > float(foxes[:, 0].mean())


def test_imagefolder_same_seed_same_split(image_root):
    a, b = _make("imagefolder", root=str(image_root), size=4), _make("imagefolder", root=str(image_root), size=4)
    c = _make("imagefolder", seed=7, root=str(image_root), size=4)
    assert torch.equal(a.test.x, b.test.x) and not torch.equal(a.test.x, c.test.x)


def test_imagefolder_errors(image_root, tmp_path):
    with pytest.raises(PluginError, match="nowhere: no such folder"):
        _make("imagefolder", root=str(tmp_path / "nowhere"))
    (image_root / "empty").mkdir()
    with pytest.raises(PluginError, match="empty: class folder without images"):
        _make("imagefolder", root=str(image_root))
    (image_root / "empty" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(PluginError, match=r"broken.png: not a readable image"):
        _make("imagefolder", root=str(image_root))
    flat = tmp_path / "flat"
    flat.mkdir()
    with pytest.raises(PluginError, match="expected one sub-folder per class"):
        _make("imagefolder", root=str(flat))


def test_imagefolder_fractions_are_validated(write_config, image_root):
    from kdlab.errors import ConfigError

    cfg = tiny_digits_config(**{"data": {"name": "imagefolder", "params": {
        "root": str(image_root), "val_fraction": 0.5, "test_fraction": 0.5}}})
    with pytest.raises(ConfigError, match="val_fraction \\+ test_fraction must leave a share for training"):
        load_config(write_config(cfg))


def test_imagefolder_distillation(image_root, write_config):
    cfg = tiny_digits_config(**{
        "data": {"name": "imagefolder", "params": {"root": str(image_root), "size": 8}},
        "teacher.name": "cnn2d", "teacher.params": {"channels": [8]}, "teacher.training.epochs": 5,
        "teacher.training.batch_size": 8, "student.params": {"hidden": [8]}, "training.epochs": 3,
        "tracking.enabled": False,
    })
    result = run(load_config(write_config(cfg)))
    assert result.metrics["teacher_test_accuracy"] >= 0.5  # three colours are easy
    assert 0 <= result.metrics["agreement"] <= 1 and len(result.fit.history) == 3
