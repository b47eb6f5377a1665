"""kdlab-vision: the CIFAR nets of the KD literature (shapes, parameter counts, stage names), the `torchvision` and
`timm` components (weights through torchvision's own cache, local checkpoints, head replacement, channel
adaptation, close matches for unknown names), the missing `vision` extra, and a short real run. CPU only, no
downloads: every weights file is written by the test."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import kdlab_vision.plugin
import pytest
import torch
from kdlab_vision.adapt import adapt_conv_weight
from kdlab_vision.cifar import CIFAR_NETS
from pydantic import ValidationError
from torch import nn

import kdlab_models.plugin
from conftest import tiny_digits_config
from kdlab.cli import main
from kdlab.errors import PluginError
from kdlab.testing import check_component, components_of


def _import(name: str):
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - not installed, or a build that does not match torch
        return None


# torchvision and timm are the `vision` extra: their tests skip where it is not installed (scripts/setup.sh
# installs only `test`); the CIFAR nets, the missing-extra error and the run need neither.
torchvision, timm = _import("torchvision"), _import("timm")
needs_torchvision = pytest.mark.skipif(torchvision is None, reason="needs torchvision: pip install 'kdlab[vision]'")
needs_timm = pytest.mark.skipif(timm is None, reason="needs timm: pip install 'kdlab[vision]'")

COMPONENTS = {(c.kind, c.name): c for c in components_of(kdlab_vision.plugin)}


def build(name: str, params: dict | None = None, *, input_shape=(3, 32, 32), num_classes: int = 10,
          kind: str = "student") -> nn.Module:
    """Validate params and build, exactly as kdlab does for a config's teacher or student."""
    comp = COMPONENTS[(kind, name)]
    return comp.build(comp.validate_params(params or {}), input_shape=input_shape, num_classes=num_classes)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random non-default values in every tensor, so that "loaded" is not confused with "initialised"."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g))
    return model


def test_every_architecture_is_teacher_and_student():
    names = {"torchvision", "timm", *CIFAR_NETS}
    assert {n for k, n in COMPONENTS if k == "teacher"} == names == {n for k, n in COMPONENTS if k == "student"}


# -- the CIFAR nets ------------------------------------------------------------------------------------------------

#: documented dotted module names, by family
STAGES = {"resnet": ["conv1", "layer1", "layer2", "layer3", "fc"],
          "wrn": ["conv1", "block1", "block2", "block3", "bn1", "fc"],
          "vgg": ["block0", "block1", "block2", "block3", "block4", "pool4", "classifier"]}


@pytest.mark.parametrize("name", list(CIFAR_NETS))
def test_cifar_net_matches_its_published_size_and_maps_images_to_logits(name):
    model = build(name, num_classes=100)
    published = CIFAR_NETS[name][1] * 1e6
    assert n_params(model) == pytest.approx(published, rel=0.02), f"{name}: {n_params(model)} vs {published:.0f}"
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    for stage in STAGES[next(family for family in STAGES if name.startswith(family))]:
        model.get_submodule(stage)


def test_cifar_nets_take_small_one_channel_images():
    for name in ("resnet20", "wrn_16_2", "vgg8"):
        model = build(name, input_shape=(1, 8, 8))
        stem = model.conv1 if hasattr(model, "conv1") else model.block0[0]
        assert stem.in_channels == 1
        assert model.eval()(torch.randn(1, 1, 8, 8)).shape == (1, 10)
    with pytest.raises(PluginError, match=r"vgg8 needs images of at least 8x8, got 4x4"):
        build("vgg8", input_shape=(1, 4, 4))
    with pytest.raises(PluginError, match=r"resnet20 takes images of shape \(C, H, W\), got \(64,\)"):
        build("resnet20", input_shape=(64,))


def test_cifar_resnet_is_repdistillers_layout():
    """Parameter names as RepDistiller's, so a state_dict of its models loads into ours."""
    keys = set(build("resnet8x4").state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.0.downsample.0.weight",
            "layer3.0.downsample.1.weight", "fc.weight"} <= keys
    keys = set(build("wrn_16_2").state_dict())
    assert {"block1.layer.0.convShortcut.weight", "block3.layer.1.bn2.weight", "bn1.weight"} <= keys
    assert {"block0.0.weight", "block0.1.weight", "block4.3.weight", "classifier.weight"} <= set(build("vgg13")
                                                                                               .state_dict())


@pytest.mark.parametrize("kind, name, example", [
    ("teacher", "wrn_16_2", None),
    ("student", "resnet20", None),
    ("student", "vgg8", None),
    pytest.param("teacher", "torchvision", {"arch": "mobilenet_v3_small"}, marks=needs_torchvision),
    pytest.param("student", "timm", {"name": "resnet18"}, marks=needs_timm),
])
def test_components_honour_the_model_contract(kind, name, example):
    check_component(COMPONENTS[(kind, name)], example)  # (1, 8, 8) inputs, 10 classes


# -- torchvision -----------------------------------------------------------------------------------------------------


@needs_torchvision
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "squeezenet1_1", "googlenet"])
def test_torchvision_architecture_without_weights(arch):
    model = build("torchvision", {"arch": arch}, num_classes=7)
    assert model.train()(torch.randn(2, 3, 32, 32)).shape == (2, 7)  # googlenet: no auxiliary outputs


def _weights_file(torch_home: Path, arch: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """Put a state_dict where torchvision's weights mechanism looks first: $TORCH_HOME/hub/checkpoints/<file name
    of the weights URL>. torchvision checks hashes only when it downloads, so this file is loaded as it is."""
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    path = torch_home / "hub" / "checkpoints" / os.path.basename(url)
    path.parent.mkdir(parents=True)
    state = _seeded(torchvision.models.get_model(arch)).state_dict()
    torch.save(state, path)
    return path, state


@needs_torchvision
def test_torchvision_weights_default_load_through_torchvision_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _, state = _weights_file(tmp_path, "mobilenet_v3_small")

    model = build("torchvision", {"arch": "mobilenet_v3_small", "weights": "DEFAULT"}, num_classes=10)
    loaded = model.state_dict()
    head = "classifier.3"
    for key, tensor in state.items():
        if not key.startswith(head):
            assert torch.equal(loaded[key], tensor), key
    assert loaded[f"{head}.weight"].shape == (10, 1024)  # a fresh head for the data's classes

    kept = build("torchvision", {"arch": "mobilenet_v3_small", "weights": "IMAGENET1K_V1", "keep_head": True},
                 num_classes=1000).state_dict()
    assert all(torch.equal(kept[k], v) for k, v in state.items())

    with pytest.raises(PluginError, match=r"keep_head: the classifier classifier.3 of weights "
                                          r"MobileNet_V3_Small_Weights.IMAGENET1K_V1 has 1000 outputs but the data "
                                          r"has 10 classes; set keep_head: false"):
        build("torchvision", {"arch": "mobilenet_v3_small", "weights": "DEFAULT", "keep_head": True})


@needs_torchvision
def test_pretrained_stem_is_adapted_to_one_channel(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _, state = _weights_file(tmp_path, "mobilenet_v3_small")
    model = build("torchvision", {"arch": "mobilenet_v3_small", "weights": "DEFAULT"}, input_shape=(1, 32, 32))
    stem = model.features[0][0]
    assert stem.in_channels == 1
    assert torch.equal(stem.weight, state["features.0.0.weight"].sum(1, keepdim=True))
    assert model.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_adapted_stem_answers_a_grey_image_as_the_original():
    w = torch.randn(8, 3, 3, 3)
    grey = torch.randn(1, 1, 5, 5)
    original = nn.functional.conv2d(grey.expand(1, 3, 5, 5), w)
    for c in (1, 3, 6):
        adapted = nn.functional.conv2d(grey.expand(1, c, 5, 5), adapt_conv_weight(w, c))
        assert torch.allclose(adapted, original, atol=1e-5), c


@needs_torchvision
def test_torchvision_checkpoint(tmp_path):
    # a model fine-tuned on 10 classes: with keep_head it loads as it is
    tuned = _seeded(torchvision.models.resnet18(num_classes=10))
    path = tmp_path / "tuned.pth"
    torch.save({"state_dict": tuned.state_dict()}, path)
    model = build("torchvision", {"arch": "resnet18", "checkpoint": str(path), "keep_head": True})
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tuned.state_dict().items())
    # without keep_head the backbone loads and the data gets a fresh classifier
    model = build("torchvision", {"arch": "resnet18", "checkpoint": str(path)}, num_classes=5)
    assert torch.equal(model.layer4[1].conv2.weight, tuned.layer4[1].conv2.weight)
    assert model.fc.weight.shape == (5, 512)


@needs_torchvision
def test_torchvision_checkpoint_as_safetensors(tmp_path):
    save_file = pytest.importorskip("safetensors.torch").save_file

    net = _seeded(torchvision.models.squeezenet1_1(num_classes=4))  # head: classifier.1, a 1x1 conv
    save_file(net.state_dict(), str(tmp_path / "sq.safetensors"))
    model = build("torchvision", {"arch": "squeezenet1_1", "checkpoint": str(tmp_path / "sq.safetensors"),
                                  "keep_head": True}, num_classes=4)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in net.state_dict().items())


@needs_torchvision
def test_checkpoint_that_does_not_fit_names_the_file_and_the_keys(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(PluginError) as info:
        build("torchvision", {"arch": "resnet18", "checkpoint": str(path)})
    msg = str(info.value)
    assert f"checkpoint {str(path)!r} (for torchvision resnet18) does not fit the model" in msg
    assert "unexpected: layer1.2.conv1.weight" in msg and "student 'torchvision'" in msg


class _NotATensor:
    pass


@needs_torchvision
def test_checkpoint_is_read_weights_only(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": _NotATensor()}, path)
    with pytest.raises(PluginError, match=r"pickled.pth' cannot be read as weights only \(UnpicklingError"):
        build("torchvision", {"arch": "resnet18", "checkpoint": str(path)})
    with pytest.raises(PluginError, match=r"checkpoint '.*missing.pth': no such file"):
        build("torchvision", {"arch": "resnet18", "checkpoint": str(tmp_path / "missing.pth")})


@needs_torchvision
def test_torchvision_params_are_checked_against_torchvision():
    comp = COMPONENTS[("teacher", "torchvision")]
    with pytest.raises(ValidationError, match=r"unknown torchvision architecture 'resnet-18'; did you mean "
                                              r"'resnet18'"):
        comp.validate_params({"arch": "resnet-18"})
    with pytest.raises(ValidationError, match=r"resnet18 has no weights 'IMAGENET'; did you mean 'IMAGENET1K_V1'"):
        comp.validate_params({"arch": "resnet18", "weights": "IMAGENET"})
    with pytest.raises(ValidationError, match="give weights or checkpoint, not both"):
        comp.validate_params({"arch": "resnet18", "weights": "DEFAULT", "checkpoint": "x.pth"})
    with pytest.raises(ValidationError, match="kwargs.num_classes: not allowed, it comes from the data"):
        comp.validate_params({"arch": "resnet18", "kwargs": {"num_classes": 3}})


@needs_torchvision
def test_torchvision_input_too_small_is_a_clear_error():
    with pytest.raises(PluginError, match=r"torchvision vit_b_16 cannot take 3x32x32 inputs .*224x224"):
        build("torchvision", {"arch": "vit_b_16"})


# -- timm ------------------------------------------------------------------------------------------------------------


@needs_timm
def test_timm_resnet18_with_a_local_weights_file(tmp_path):
    source = _seeded(timm.create_model("resnet18"))
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    state = source.state_dict()

    model = build("timm", {"name": "resnet18", "checkpoint": str(path)}, input_shape=(1, 32, 32))
    loaded = model.state_dict()
    assert torch.equal(loaded["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    assert torch.allclose(loaded["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))  # timm's adaptation
    assert model.fc.out_features == 10
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)

    kept = build("timm", {"name": "resnet18", "checkpoint": str(path)}, num_classes=1000).state_dict()
    assert all(torch.equal(kept[k], v) for k, v in state.items())


@needs_timm
def test_timm_checkpoint_with_a_head_for_the_data_keeps_it(tmp_path):
    tuned = _seeded(timm.create_model("resnet18", num_classes=10))
    torch.save(tuned.state_dict(), tmp_path / "tuned.pth")
    model = build("timm", {"name": "resnet18", "checkpoint": str(tmp_path / "tuned.pth")}, num_classes=10)
    assert torch.equal(model.fc.weight, tuned.fc.weight)


@needs_timm
def test_timm_names_and_checkpoints_are_checked(tmp_path):
    comp = COMPONENTS[("student", "timm")]
    with pytest.raises(ValidationError, match=r"unknown timm model 'resnet-18'; did you mean 'resnet18'"):
        comp.validate_params({"name": "resnet-18"})
    with pytest.raises(ValidationError, match=r"Invalid pretrained tag \(nope\) for resnet18.*resnet18.a1_in1k"):
        comp.validate_params({"name": "resnet18.nope"})
    path = tmp_path / "other.pth"
    torch.save(timm.create_model("resnet10t").state_dict(), path)
    with pytest.raises(PluginError, match=r"checkpoint '.*other.pth' does not fit timm resnet18"):
        build("timm", {"name": "resnet18", "checkpoint": str(path)})


# -- without the vision extra ------------------------------------------------------------------------------------------


def test_missing_extra_is_a_config_error_naming_file_line_and_how_to_install(write_config, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # `import torchvision` now raises ImportError
    monkeypatch.setitem(sys.modules, "timm", None)
    cfg = tiny_digits_config(**{"teacher.name": "torchvision", "teacher.params": {"arch": "resnet18"},
                                "student.name": "timm", "student.params": {"name": "resnet18"}})
    path = write_config(cfg, "vision.yaml")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "vision.yaml: 2 problems" in err
    assert "line 8: teacher.params: expected a valid value: torchvision is not installed: pip install " \
           "'kdlab[vision]'" in err
    assert "student.params: expected a valid value: timm is not installed: pip install 'kdlab[vision]'" in err
    # the names stay known, and the CIFAR nets need neither library
    names = {c.name for c in components_of(kdlab_vision.plugin)}
    assert {"torchvision", "timm", "resnet20"} <= names
    assert build("resnet20", input_shape=(1, 8, 8)).eval()(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_loading_the_plugin_imports_neither_torchvision_nor_timm():
    code = ("import sys; from kdlab.testing import components_of; import kdlab_vision.plugin as p; "
            "components_of(p); print(sorted(m for m in ('torchvision', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


# -- resnet1d (kdlab-models) -------------------------------------------------------------------------------------------


def test_resnet1d_takes_signals_and_names_its_stages():
    comp = next(c for c in components_of(kdlab_models.plugin) if (c.kind, c.name) == ("teacher", "resnet1d"))
    model = comp.build(comp.validate_params({}), input_shape=(40,), num_classes=10)
    assert model(torch.randn(2, 40)).shape == (2, 10)
    assert [n for n, _ in model.named_children() if n.startswith("layer")] == ["layer1", "layer2", "layer3"]
    assert n_params(model) < 50_000  # small by default
    model = comp.build(comp.validate_params({"channels": [8, 8], "blocks": 2}), input_shape=(3, 40), num_classes=4)
    assert model(torch.randn(2, 3, 40)).shape == (2, 4)
    with pytest.raises(ValidationError, match="odd kernel size"):
        comp.validate_params({"kernel_size": 4})


# -- end to end ----------------------------------------------------------------------------------------------------


def test_cifar_net_teaches_on_digits_end_to_end(write_config, capsys):
    """A real `kdlab run`: resnet20 trained as the teacher on 8x8 1-channel digits, then distilled into an MLP."""
    cfg = tiny_digits_config(**{"teacher.name": "resnet20", "teacher.params": {},
                                "teacher.training": {"epochs": 2, "batch_size": 64, "optimizer": {"lr": 0.01}},
                                "training.epochs": 2})
    assert main(["run", str(write_config(cfg)), "--quiet", "--no-track"]) == 0
    metrics = dict(kv.split("=") for kv in capsys.readouterr().out.split() if "=" in kv)
    assert float(metrics["teacher_test_accuracy"]) > 0.5  # 0.87 on this machine: it learns, on 8x8 images
    assert float(metrics["teacher_params"]) == n_params(build("resnet20", input_shape=(1, 8, 8)))
