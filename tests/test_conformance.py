"""The conformance kit (kdlab.testing) run against every first-party component, and shown to catch broken ones."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

import kdlab
import kdlab_data.plugin
import kdlab_losses.plugin
import kdlab_models.plugin
from kdlab.testing import (
    ConformanceError,
    check_component,
    check_data,
    check_loss,
    check_model,
    check_params,
    components_of,
)

FIRST_PARTY = [c for plugin in (kdlab_data.plugin, kdlab_models.plugin, kdlab_losses.plugin)
               for c in components_of(plugin)]

def _cifar_files(folder: Path) -> dict[str, Any]:
    """Tiny files laid out as CIFAR-10's python version: pickled dicts with bytes keys, written by Python 2."""
    root = folder / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [*((f"data_batch_{i}", 20) for i in range(1, 6)), ("test_batch", 20)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [i % 10 for i in range(n)]}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}, protocol=2))
    return {"root": str(root), "val_size": 20}


def _cifar100_files(folder: Path) -> dict[str, Any]:
    """Tiny files laid out as CIFAR-100's python version (train, test: fine and coarse labels)."""
    root = folder / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 60), ("test", 20)):
        fine = [i % 100 for i in range(n)]
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": fine,
                 b"coarse_labels": [f // 5 for f in fine]}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    return {"root": str(root), "val_size": 10}


def _image_folder(folder: Path) -> dict[str, Any]:
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("cat", "dog", "owl"):
        (folder / label).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)).save(folder / label / f"{i}.png")
    return {"root": str(folder), "size": 8}


#: params that keep a check fast (or that a component requires), by (kind, name): a dict, or a function of a
#: temporary folder that writes the files the component reads and returns the params
EXAMPLES: dict[tuple[str, str], dict[str, Any] | Callable[[Path], dict[str, Any]]] = {
    ("data", "mnist1d"): {"num_samples": 1000, "val_size": 100},
    ("data", "cifar10"): _cifar_files,
    ("data", "cifar100"): _cifar100_files,
    ("data", "imagefolder"): _image_folder,
}
#: input shapes an architecture accepts
SHAPES: dict[str, tuple[int, ...]] = {"cnn1d": (40,), "cnn2d": (1, 8, 8), "mlp": (1, 8, 8), "resnet1d": (40,)}


def test_every_kind_has_first_party_components():
    from kdlab.registry import KINDS

    assert {c.kind for c in FIRST_PARTY} == set(KINDS)


@pytest.mark.parametrize("component", FIRST_PARTY, ids=lambda c: f"{c.kind}-{c.name}")
def test_first_party_component_conforms(component, shared_cache, tmp_path):
    kwargs = {}
    if component.kind in ("teacher", "student"):
        kwargs["input_shape"] = SHAPES.get(component.name, (1, 8, 8))
    example = EXAMPLES.get((component.kind, component.name))
    check_component(component, example(tmp_path) if callable(example) else example, **kwargs)


# -- the kit catches what it promises to catch --------------------------------------------------------------------


def _component(kind: str, factory, params: type[BaseModel] | None = None, name: str = "broken"):
    """A component of a throw-away plugin, as kdlab would register it."""
    class Plugin:
        pass

    hook = {"data": "kdlab_register_data", "teacher": "kdlab_register_teachers",
            "student": "kdlab_register_students", "loss": "kdlab_register_losses"}[kind]
    setattr(Plugin, hook, staticmethod(kdlab.hookimpl(lambda register: register(name, factory, params))))
    return components_of(Plugin(), "kdlab-broken")[0]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(4, description="a width")


def test_params_must_forbid_unknown_keys():
    class Loose(BaseModel):
        width: int = 4

    with pytest.raises(ConformanceError, match="accepts unknown keys"):
        check_params(_component("student", lambda p, **k: None, Loose))


def test_params_must_be_typed():
    class Untyped(BaseModel):
        model_config = ConfigDict(extra="forbid")
        anything: Any = None

    with pytest.raises(ConformanceError, match="'anything' accepts values of any type"):
        check_params(_component("student", lambda p, **k: None, Untyped))


def test_params_defaults_must_validate():
    class Required(BaseModel):
        model_config = ConfigDict(extra="forbid")
        width: int

    comp = _component("student", lambda p, **k: None, Required)
    with pytest.raises(ConformanceError, match="do not validate"):
        check_params(comp)
    assert check_params(comp, {"width": 3}).width == 3


def test_model_with_wrong_logits_shape_is_caught():
    comp = _component("student", lambda p, *, input_shape, num_classes: nn.Linear(64, num_classes + 1), Strict)
    with pytest.raises(ConformanceError, match=r"expected logits of shape \(4, 10\)"):
        check_model(comp, input_shape=(64,))


def test_model_that_is_not_a_module_is_caught():
    with pytest.raises(ConformanceError, match="expected a torch.nn.Module"):
        check_model(_component("teacher", lambda p, **k: "not a model"))


class Detached(kdlab.Loss):
    uses_teacher = False

    def __init__(self, params=None):
        super().__init__()

    def forward(self, inputs):
        ce = nn.functional.cross_entropy(inputs.student_logits.detach().requires_grad_(), inputs.labels.clamp(min=0))
        return kdlab.LossOutput(ce, {"ce": ce})


class NanOnUnlabeled(kdlab.Loss):
    uses_teacher = False

    def __init__(self, params=None):
        super().__init__()

    def forward(self, inputs):
        ce = nn.functional.cross_entropy(inputs.student_logits, inputs.labels, ignore_index=-1)
        if not inputs.labeled.all():
            ce = ce * float("nan")
        return kdlab.LossOutput(ce, {"ce": ce})


def test_loss_whose_gradient_misses_the_student_is_caught():
    with pytest.raises(ConformanceError, match="does not reach the student"):
        check_loss(_component("loss", Detached))


def test_loss_that_breaks_on_unlabeled_rows_is_caught():
    with pytest.raises(ConformanceError, match="partly unlabeled"):
        check_loss(_component("loss", NanOnUnlabeled))


def _data(labels_offset: int = 0, seeded: bool = True):
    def make(params, *, seed):
        g = torch.Generator().manual_seed(seed if seeded else int(torch.randint(0, 10**6, ())))
        split = lambda n: kdlab.Split(torch.randn(n, 3, generator=g), torch.arange(n) % 3 + labels_offset)  # noqa: E731
        return kdlab.Data(train=split(12), val=split(6), test=split(6), num_classes=3)

    return _component("data", make)


def test_data_conforms_and_catches_labels_out_of_range_and_unseeded_randomness():
    assert check_data(_data()).input_shape == (3,)
    with pytest.raises(ConformanceError, match=r"labels span \[1, 3\], expected \[0, 3\)"):
        check_data(_data(labels_offset=1))
    with pytest.raises(ConformanceError, match="differs between two builds"):
        check_data(_data(seeded=False))


def test_models_map_a_real_batch_of_digits_to_logits(shared_cache):
    data = check_data(next(c for c in FIRST_PARTY if (c.kind, c.name) == ("data", "digits")))
    for comp in FIRST_PARTY:
        if comp.kind in ("teacher", "student") and comp.name in ("mlp", "cnn2d"):
            model = check_model(comp, data=data).eval()
            assert model(data.test.x[:3]).shape == (3, data.num_classes)


def test_importing_the_kit_is_light():
    # pytest imports kdlab.testing in every session once kdlab is installed (pytest11): no torch, no MLflow.
    import subprocess
    import sys

    code = "import sys, kdlab.testing; print(sorted(m for m in ('torch', 'mlflow', 'optuna') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]"
