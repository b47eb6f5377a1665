"""kdlab.augment: per-example seeded augmentation (data.augment), the same on the device and in loader workers;
soft labels under mixup/cutmix; the config checks of data.augment."""

from __future__ import annotations

import pytest
import torch

from kdlab import UNLABELED
from kdlab.augment import Augment, hash32, keys, uniform, view_of
from kdlab.config import DataConfig, LoaderConfig
from kdlab.errors import ConfigError, KdlabError
from kdlab.functional import masked_cross_entropy
from kdlab.loading import Loader, MemoryFeed, Rows
from kdlab_test_helpers import load_config, tiny_digits_config


def ops(*specs: dict) -> list:
    return DataConfig(name="x", augment=list(specs)).augment


CROP_FLIP = ops({"op": "random_crop", "padding": 2}, {"op": "hflip"})


def images(n: int = 16, c: int = 3, h: int = 6, w: int = 6) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(0))


def test_hash_is_the_same_for_python_ints_and_tensors_and_spreads_values():
    xs = torch.arange(1000)
    assert hash32(xs).tolist() == [hash32(i) for i in range(1000)]
    assert len(set(hash32(xs).tolist())) == 1000
    u = uniform(keys(0, xs, 1, 0), 0)
    assert 0 <= float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.05
    # every input changes the key
    base = keys(0, xs, 1, 0)
    for other in (keys(1, xs, 1, 0), keys(0, xs + 1, 1, 0), keys(0, xs, 2, 0), keys(0, xs, 1, 1)):
        assert (other != base).float().mean() > 0.99
    assert torch.equal(keys(0, xs, torch.full((1000,), 1), 0), base)  # a counter per example or one for all


def test_each_example_gets_its_own_choice_and_the_same_one_alone_or_in_any_batch():
    aug = Augment(CROP_FLIP, 10)
    x, y, idx = images(), torch.zeros(16, dtype=torch.int64), torch.arange(100, 116)
    out, _, _ = aug.train(x, y, idx, seed=3, counter=1)
    # not one crop for the whole batch: the rows moved differently
    offsets = set()
    for i in range(16):
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        for flip in (False, True):
            src = padded.flip(-1) if flip else padded
            for dy in range(5):
                for dx in range(5):
                    if torch.equal(src[:, dy:dy + 6, dx:dx + 6], out[i]):
                        offsets.add((flip, dy, dx))
    assert len(offsets) > 4
    # the same example alone, or in another order, gets the same output
    perm = torch.randperm(16)
    again, _, _ = aug.train(x[perm], y[perm], idx[perm], seed=3, counter=1)
    assert torch.equal(again, out[perm])
    one, _, _ = aug.train(x[5:6], y[5:6], idx[5:6], seed=3, counter=1)
    assert torch.equal(one, out[5:6])
    # seeded: the same seed repeats, another seed or epoch differs
    assert torch.equal(aug.train(x, y, idx, seed=3, counter=1)[0], out)
    assert not torch.equal(aug.train(x, y, idx, seed=4, counter=1)[0], out)
    assert not torch.equal(aug.train(x, y, idx, seed=3, counter=2)[0], out)


def test_crop_of_signals_flip_probability_and_normalize_in_eval():
    sig = torch.arange(20, dtype=torch.float32).view(2, 10)
    out, _, _ = Augment(ops({"op": "random_crop", "padding": 3}), 2).train(sig, torch.zeros(2).long(),
                                                                           torch.arange(2), seed=0, counter=0)
    assert out.shape == sig.shape
    x = images(4)
    flipped, _, _ = Augment(ops({"op": "hflip", "p": 1.0}), 2).train(x, torch.zeros(4).long(), torch.arange(4),
                                                                     seed=0, counter=0)
    assert torch.equal(flipped, x.flip(-1))
    norm = Augment(ops({"op": "hflip", "p": 1.0}, {"op": "normalize", "mean": [1, 2, 3], "std": [2, 2, 2]}), 2)
    mean = torch.tensor([1.0, 2, 3]).view(1, 3, 1, 1)
    assert torch.allclose(norm.eval(x), (x - mean) / 2)  # eval: the deterministic ops only
    assert torch.allclose(norm.train(x, torch.zeros(4).long(), torch.arange(4), seed=0, counter=0)[0],
                          (x.flip(-1) - mean) / 2)
    assert norm.random and not Augment(ops({"op": "normalize", "mean": [0], "std": [1]}), 2).random


def test_random_resized_crop_keeps_the_size_and_differs_per_example():
    x = images(8, 3, 16, 16)
    out, _, _ = Augment(ops({"op": "random_resized_crop", "scale": [0.2, 0.5]}), 2).train(
        x, torch.zeros(8).long(), torch.arange(8), seed=0, counter=0)
    assert out.shape == x.shape and torch.isfinite(out).all()
    full, _, _ = Augment(ops({"op": "random_resized_crop", "scale": [1, 1], "ratio": [1, 1]}), 2).train(
        x, torch.zeros(8).long(), torch.arange(8), seed=0, counter=0)
    assert torch.allclose(full, x, atol=1e-5)  # the whole image, resized to itself


def test_named_inputs_augment_images_and_pass_ids_through():
    x = {"image": images(4), "ids": torch.arange(12).view(4, 3)}
    out, _, _ = Augment(CROP_FLIP, 10).train(x, torch.zeros(4).long(), torch.arange(4), seed=0, counter=1)
    assert torch.equal(out["ids"], x["ids"]) and not torch.equal(out["image"], x["image"])
    with pytest.raises(KdlabError, match="mixup mixes inputs, but ids cannot be mixed"):
        Augment(ops({"op": "mixup"}), 10).check(x)
    with pytest.raises(KdlabError, match="no floating-point inputs with spatial dimensions"):
        Augment(CROP_FLIP, 10).check({"ids": torch.arange(12).view(4, 3)})
    with pytest.raises(KdlabError, match="random_resized_crop needs images"):
        Augment(ops({"op": "random_resized_crop"}), 10).check(torch.randn(4, 1, 20))
    with pytest.raises(KdlabError, match="normalize has 2 means and 2 stds for inputs 'x' with 3 channel"):
        Augment(ops({"op": "normalize", "mean": [0, 0], "std": [1, 1]}), 10).check(images(2))


@pytest.mark.parametrize("op", ["mixup", "cutmix"])
def test_mixing_gives_soft_labels_and_unlabels_rows_mixed_with_unlabeled_ones(op):
    x = images(6)
    y = torch.tensor([0, 1, 2, 3, UNLABELED, 5])
    aug = Augment(ops({"op": op, "alpha": 1.0}), 6)
    out, labels, soft = aug.train(x, y, torch.arange(6), seed=0, counter=1, first=0)
    assert out.shape == x.shape and soft.shape == (6, 6)
    # rows 4 (unlabeled) and 5 (mixed with row 4) lose their label
    assert labels.tolist() == [0, 1, 2, 3, UNLABELED, UNLABELED]
    assert torch.allclose(soft[:4].sum(1), torch.ones(4)) and soft[4:].abs().sum() == 0
    lam = float(soft[1, 1])
    assert soft[1, 0] == pytest.approx(1 - lam) and 0 < lam <= 1
    # one choice per batch, seeded by the first row's index and the epoch
    assert torch.equal(aug.train(x, y, torch.arange(6), seed=0, counter=1, first=0)[2], soft)
    if op == "mixup":
        assert torch.allclose(out[1], lam * x[1] + (1 - lam) * x[0])


def test_masked_cross_entropy_with_soft_labels():
    logits = torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, UNLABELED, 3])
    one_hot = torch.nn.functional.one_hot(labels.clamp(min=0), 4).float()
    assert torch.allclose(masked_cross_entropy(logits, labels, soft_labels=one_hot),
                          masked_cross_entropy(logits, labels))
    assert torch.allclose(masked_cross_entropy(logits, labels, 0.1, soft_labels=one_hot),
                          masked_cross_entropy(logits, labels, 0.1))


def test_the_device_path_and_loader_workers_make_the_same_batches():
    """In-memory rows augmented batched (MemoryFeed) and streamed rows augmented in two loader worker processes
    (Loader) give the same inputs for the same permutation."""
    x, y = images(40), torch.arange(40) % 10
    aug = Augment(CROP_FLIP, 10)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    memory = list(MemoryFeed(x, y, None, {}, 16, augment=aug, seed=7).epoch(3, perm, perm, cached=False))

    class Dataset:
        def __len__(self):
            return 40

        def __getitem__(self, i):
            return x[i]

    loader = Loader(Rows([Dataset()]), y, 16, LoaderConfig(workers=2), torch.device("cpu"), augment=aug, train=True,
                    seed=7)
    try:
        streamed = list(loader.batches(3, perm))
    finally:
        loader.close()
    assert len(memory) == len(streamed) == 3
    for step, (xb, yb, index, _, _) in zip(memory, streamed):
        assert torch.equal(step.x, xb) and torch.equal(step.y, yb) and torch.equal(step.index, index)


def test_views_are_picked_per_example_and_epoch():
    idx = torch.arange(200)
    v1, v2 = view_of(0, idx, 1, 4), view_of(0, idx, 2, 4)
    assert set(v1.tolist()) == {0, 1, 2, 3} and not torch.equal(v1, v2)
    assert torch.equal(view_of(0, idx, 1, 4), v1)


def test_policies_are_seeded_per_example():
    pytest.importorskip("torchvision")
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for spec in ({"op": "randaugment", "num_ops": 2, "magnitude": 9}, {"op": "autoaugment", "policy": "cifar10"}):
        aug = Augment(ops(spec), 10)
        a = aug.train(x, torch.zeros(4).long(), torch.arange(4), seed=0, counter=1)[0]
        state = torch.get_rng_state()
        b = aug.train(x, torch.zeros(4).long(), torch.arange(4), seed=0, counter=1)[0]
        assert torch.equal(torch.get_rng_state(), state)  # torch's own generator is left as it was
        assert torch.equal(a, b) and a.shape == x.shape
        one = aug.train(x[2:3], torch.zeros(1).long(), torch.arange(2, 3), seed=0, counter=1)[0]
        assert torch.equal(one, a[2:3])


# -- config ----------------------------------------------------------------------------------------------------


def test_augment_config_errors(write_config):
    bad = tiny_digits_config(**{"data.augment": [{"op": "mixup"}, {"op": "hflip"}]})
    with pytest.raises(ConfigError, match="mixup mixes the examples of a batch: put it after the per-example ops"):
        load_config(write_config(bad))
    with pytest.raises(ConfigError, match="use one of mixup and cutmix"):
        load_config(write_config(tiny_digits_config(**{"data.augment": [{"op": "mixup"}, {"op": "cutmix"}]})))
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tiny_digits_config(**{"data.augment": [{"op": "rotate"}]})))
    assert "data.augment.0" in str(info.value) and "random_crop" in str(info.value)
    views = tiny_digits_config(**{"data.augment": [{"op": "hflip"}, {"op": "cutmix"}], "teacher.mode": "views"})
    with pytest.raises(ConfigError, match="teacher.mode: views cannot replay cutmix"):
        load_config(write_config(views))
    with pytest.raises(ConfigError, match="data.augment.0.random_crop.padding"):
        load_config(write_config(tiny_digits_config(**{"data.augment": [{"op": "random_crop", "padding": -1}]})))


def test_mixup_needs_a_loss_that_reads_soft_labels(write_config):
    from kdlab.modes import run

    cfg = tiny_digits_config(**{"data.augment": [{"op": "mixup"}], "loss": {"name": "dkd"},
                                "tracking.enabled": False})
    with pytest.raises(KdlabError, match="loss 'dkd' does not read kdlab.LossInputs.soft_labels"):
        run(load_config(write_config(cfg)))
