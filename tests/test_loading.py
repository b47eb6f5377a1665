"""Streamed data (kdlab.loading): an image folder of generated PNGs and CIFAR-format files read lazily through
the DataLoader with worker processes give the tensors, batches and metrics of the same data held in memory; the
conformance kit checks streamed splits; named inputs stream too."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import kdlab
from kdlab import batch
from kdlab.loading import Concat, Rows, head, read
from kdlab.modes import Session, run
from kdlab.plugins import get_registry
from kdlab.testing import ConformanceError, check_data
from kdlab_test_helpers import load_config, set_dotted, tiny_digits_config


def _make(name: str, seed: int = 0, **params) -> kdlab.Data:
    comp = get_registry().get("data", name)
    return comp.build(comp.validate_params(params), seed=seed)


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for name, colour in {"cat": (200, 40, 40), "dog": (40, 200, 40), "fox": (40, 40, 200)}.items():
        (root / name).mkdir(parents=True)
        for i in range(14):
            pixels = np.clip(np.array(colour) + rng.integers(-70, 71, (10, 10, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
    return root


def _cifar(tmp_path: Path, hundred: bool = False) -> Path:
    root = tmp_path / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    root.mkdir()
    rng = np.random.default_rng(0)
    files = [("train", 60), ("test", 30)] if hundred else [*((f"data_batch_{i}", 12) for i in range(1, 6)),
                                                             ("test_batch", 30)]
    for name, n in files:
        labels = [i % 10 for i in range(n)]
        base = np.repeat(np.array(labels)[:, None] * 25, 3072, axis=1)
        data = np.clip(base + rng.integers(-40, 41, (n, 3072)), 0, 255).astype(np.uint8)
        batch_ = {b"data": data}
        if hundred:
            batch_.update({b"fine_labels": labels, b"coarse_labels": [y // 5 for y in labels]})
        else:
            batch_[b"labels"] = labels
        (root / name).write_bytes(pickle.dumps(batch_, protocol=2))
    return root


def _same_data(a: kdlab.Data, b: kdlab.Data) -> None:
    assert a.input_shape == b.input_shape and a.num_classes == b.num_classes
    for name, split in a.splits().items():
        other = b.splits()[name]
        assert not split.streamed and other.streamed and len(split) == len(other)
        assert torch.equal(split.y, other.y)
        assert torch.equal(split.x, read(other.x, list(range(len(other)))))


def test_streamed_image_folder_gives_the_in_memory_tensors(image_root):
    memory = _make("imagefolder", root=str(image_root), size=8)
    streamed = _make("imagefolder", root=str(image_root), size=8, stream=True)
    _same_data(memory, streamed)
    assert isinstance(streamed.train.x[0], torch.Tensor) and streamed.streamed and not memory.streamed
    grey = _make("imagefolder", root=str(image_root), size=4, mode="grayscale", normalize=False, stream=True)
    assert grey.input_shape == (1, 4, 4)


@pytest.mark.parametrize("hundred", [False, True], ids=["cifar10", "cifar100"])
def test_streamed_cifar_files_give_the_in_memory_tensors(tmp_path, hundred):
    root, name = _cifar(tmp_path, hundred), "cifar100" if hundred else "cifar10"
    memory = _make(name, root=str(root), val_size=10)
    streamed = _make(name, root=str(root), val_size=10, stream=True)
    _same_data(memory, streamed)
    assert memory.num_classes == (100 if hundred else 10)
    limited = _make(name, root=str(root), val_size=10, stream=True, limit=40)
    assert (len(limited.train) + len(limited.val), len(limited.test)) == (40, 30)


def test_cifar100_coarse_labels(tmp_path):
    d = _make("cifar100", root=str(_cifar(tmp_path, hundred=True)), val_size=10, labels="coarse")
    assert d.num_classes == 20 and int(d.test.y.max()) == 1


@pytest.mark.parametrize("name", ["imagefolder", "cifar10", "cifar100"])
def test_streamed_sources_pass_the_conformance_kit(name, image_root, tmp_path):
    comp = get_registry().get("data", name)
    if name == "imagefolder":
        example = {"root": str(image_root), "size": 8, "stream": True}
    else:
        example = {"root": str(_cifar(tmp_path, name == "cifar100")), "val_size": 10, "stream": True}
    data = check_data(comp, example)
    assert data.streamed


def test_the_kit_names_a_broken_streamed_split():
    class Unpicklable:
        def __init__(self):
            self.handle = open(__file__)  # noqa: SIM115 - a file handle does not pickle

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.zeros(3)

    class Lists(Unpicklable):
        def __getitem__(self, i):
            return [0.0, 1.0]

    from kdlab.testing import components_of

    for kind, message in ((Unpicklable, "does not pickle"), (Lists, "example 0 is list, expected a tensor")):
        class Plugin:
            @kdlab.hookimpl
            def kdlab_register_data(self, register, kind=kind):
                def make(params, *, seed):
                    split = kdlab.Split(kind(), torch.zeros(4, dtype=torch.int64))
                    return kdlab.Data(train=split, val=split, test=split, num_classes=2)

                register("broken", make)

        (comp,) = components_of(Plugin(), "broken-test")
        with pytest.raises(ConformanceError, match=message):
            check_data(comp)


def test_rows_and_concat_read_across_parts():
    a, b = torch.arange(10).view(5, 2), torch.arange(100, 106).view(3, 2)

    class Dataset:
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return b[i]

    rows = Rows([a, Dataset()])
    assert len(rows) == 8
    assert torch.equal(rows.read([6, 0, 5, 4, 7]), torch.cat([a, b])[[6, 0, 5, 4, 7]])
    assert torch.equal(head(rows, 3), a[:3]) and torch.equal(rows[6], b[1])
    cat = Concat([a.float(), b.float()])
    idx = torch.tensor([7, 1, 5, 0])
    assert torch.equal(cat[idx], torch.cat([a, b]).float()[idx])


def _images_config(root: Path, stream: bool, **overrides) -> dict:
    cfg = tiny_digits_config(**{
        "data": {"name": "imagefolder", "params": {"root": str(root), "size": 8, "stream": stream},
                 "loader": {"workers": 2}},
        "teacher.name": "cnn2d", "teacher.params": {"channels": [8]}, "teacher.training.epochs": 2,
        "teacher.training.batch_size": 8, "student.params": {"hidden": [8]}, "training.epochs": 2,
        "training.batch_size": 8, "tracking.enabled": False,
    })
    return set_dotted(cfg, overrides)


def _metrics(result) -> tuple:
    return (result.metrics["test_accuracy"], result.metrics["val_accuracy"], result.metrics["agreement"],
            [h["train_loss"] for h in result.fit.history], [h["val_loss"] for h in result.fit.history])


@pytest.mark.parametrize("augment", [False, True], ids=["cached-teacher", "augmented-live-teacher"])
def test_a_streamed_run_and_an_in_memory_run_give_the_same_metrics(image_root, write_config, augment):
    extra = {"data.augment": [{"op": "random_crop", "padding": 1}, {"op": "hflip"}]} if augment else {}
    memory = run(load_config(write_config(_images_config(image_root, False, **extra))), session=Session())
    streamed = run(load_config(write_config(_images_config(image_root, True, **extra))), session=Session())
    assert _metrics(memory) == _metrics(streamed)


def test_cifar_files_stream_through_the_loader_with_workers(tmp_path, write_config):
    root = _cifar(tmp_path)
    cfg = _images_config(root, True, **{"data.name": "cifar10", "data.params": {"root": str(root), "val_size": 10,
                                                                                "stream": True},
                                        "teacher.params": {"channels": [4]}})
    streamed = run(load_config(write_config(cfg)), session=Session())
    cfg["data"]["params"]["stream"] = False
    memory = run(load_config(write_config(cfg)), session=Session())
    assert _metrics(memory) == _metrics(streamed)
    # the teacher's outputs over streamed rows stay on disk, one memory-mapped array per split
    folders = list((Path(kdlab.cache_dir("outputs"))).glob("*/meta.json"))
    assert len(folders) == 1 and {p.name for p in folders[0].parent.glob("*.bin")} == {
        "train.bin", "val.bin", "test.bin"}


def test_damaged_streamed_outputs_are_removed_and_rebuilt_with_a_warning(image_root, write_config, capsys):
    from kdlab.cli import main

    cfg = _images_config(image_root, True)
    first = run(load_config(write_config(cfg)), session=Session())
    (folder,) = [p.parent for p in Path(kdlab.cache_dir("outputs")).glob("*/meta.json")]
    meta = json.loads((folder / "meta.json").read_text())
    assert set(meta["sha256"]) == {"train", "val", "test"}  # each array's checksum, written last
    capsys.readouterr()
    assert main(["cache", "list", "--outputs"]) == 0
    assert "outputs      1 entry" in capsys.readouterr().out
    train = folder / "train.bin"
    data = bytearray(train.read_bytes())
    data[len(data) // 2] ^= 0xFF
    train.write_bytes(bytes(data))
    again = run(load_config(write_config(cfg)), session=Session())
    err = capsys.readouterr().err
    assert "the cached teacher outputs" in err and "train.bin does not match its checksum" in err
    assert _metrics(again) == _metrics(first)  # rebuilt: the same outputs, the same student
    (folder / "val.bin").write_bytes(b"")  # cut short
    run(load_config(write_config(cfg)), session=Session())
    assert "val.bin has 0 bytes" in capsys.readouterr().err
    run(load_config(write_config(cfg)), session=Session())
    assert "damaged" not in capsys.readouterr().err


def test_a_streamed_teacher_with_the_wrong_number_of_logits_is_named_before_its_outputs_are_cached(image_root):
    from kdlab.errors import PluginError
    from kdlab.teachers.cache import teacher_outputs

    data = _make("imagefolder", root=str(image_root), size=8, stream=True)
    wrong = type("Teacher", (), {"fingerprint": "wrong-logits", "component": None,
                                 "model": nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))})()
    with pytest.raises(PluginError, match=r"teacher returned a float32 tensor of shape \(\d+, 5\) over the train "
                                          r"split; expected logits of shape \(\d+, 3\)"):
        teacher_outputs(wrong, data, torch.device("cpu"), 16)
    assert not list(Path(kdlab.cache_dir("outputs")).iterdir())  # nothing cached


def test_the_run_time_data_contract_reads_a_streamed_split_by_its_length_and_first_example():
    from kdlab.contracts import check_data
    from kdlab.errors import PluginError

    class Broken:
        def __len__(self):
            return 4

        def __getitem__(self, i):
            raise OSError("the disk went away")

    y = torch.tensor([0, 1, 0, 1])
    good = kdlab.Data(train=kdlab.Split(Rows([torch.zeros(4, 3)]), y), val=kdlab.Split(torch.zeros(4, 3), y),
                      test=kdlab.Split(torch.zeros(4, 3), y), num_classes=2)
    check_data(good, None)
    bad = kdlab.Data(train=kdlab.Split(Broken(), y), val=good.val, test=good.test, num_classes=2)
    with pytest.raises(PluginError, match="split 'train': reading example 0 raised OSError: the disk went away"):
        check_data(bad, None)
    other = kdlab.Data(train=kdlab.Split(Rows([torch.zeros(4, 5)]), y), val=good.val, test=good.test, num_classes=2)
    with pytest.raises(PluginError, match="different shapes"):
        check_data(other, None)


# -- named inputs stream too ----------------------------------------------------------------------------------


class _Named(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, image, ids):
        return self.head(torch.cat([self.conv(image).mean((2, 3)), self.emb(ids).mean(1)], 1))


class _NamedRows:
    def __init__(self, n: int, offset: int):
        self.n, self.offset = n, offset

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.offset + i)
        label = (self.offset + i) % 2
        return {"image": torch.randn(1, 6, 6, generator=g) + 2 * label, "ids": torch.full((3,), label)}


class NamedPlugin:
    @kdlab.hookimpl
    def kdlab_register_data(self, register):
        def make(params, *, seed):
            def split(n, offset, labelled=True):
                y = torch.tensor([(offset + i) % 2 for i in range(n)])
                return kdlab.Split(_NamedRows(n, offset), y if labelled else None)

            return kdlab.Data(train=split(40, 0), val=split(10, 100), test=split(10, 200),
                              transfer=split(12, 300, labelled=False), num_classes=2)

        register("named-stream", make)

    @kdlab.hookimpl
    def kdlab_register_teachers(self, register):
        register("named-net", lambda params, *, num_classes: _Named(num_classes))

    @kdlab.hookimpl
    def kdlab_register_students(self, register):
        register("named-net", lambda params, *, num_classes: _Named(num_classes))


def test_named_inputs_stream_with_augmentation_and_transfer_rows(plugins, write_config):
    plugins.register(NamedPlugin(), "named-test")
    cfg = tiny_digits_config(**{
        "data": {"name": "named-stream", "augment": [{"op": "random_crop", "padding": 1}], "loader": {"workers": 1}},
        "teacher": {"name": "named-net", "training": {"epochs": 2, "batch_size": 8}},
        "student": {"name": "named-net"}, "training.epochs": 2, "training.batch_size": 8,
        "tracking.enabled": False,
    })
    result = run(load_config(write_config(cfg)), session=Session())
    assert 0 <= result.metrics["test_accuracy"] <= 1 and len(result.fit.history) == 2
    assert batch.rows(head(Rows([_NamedRows(3, 0)]), 2)) == 2
