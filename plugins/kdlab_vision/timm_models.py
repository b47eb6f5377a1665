"""The ``timm`` component: any ``timm.create_model`` name, optionally pretrained.

timm builds the classifier for the data's classes and the stem for its channels itself (``num_classes``,
``in_chans``), adapting pretrained weights as it always does. timm is imported when params are validated or a model
is built, never when the plugin loads.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from ._extras import did_you_mean, require
from .adapt import checkpoint_path, image_shape, load_state_file

#: create_model arguments that kdlab sets itself
_RESERVED_KWARGS = {"num_classes": "comes from the data", "in_chans": "comes from the data",
                    "pretrained": "is the `pretrained` param", "pretrained_cfg_overlay": "is set by `checkpoint`"}


class TimmParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="a timm.create_model name, e.g. resnet18, convnext_atto, vit_tiny_patch16_224, "
                                  "optionally with a pretrained tag: resnet18.a1_in1k")
    pretrained: bool = Field(False, description="load timm's pretrained weights for the name (from the Hugging "
                                                "Face hub cache, downloaded there if missing)")
    checkpoint: str | None = Field(None, description="a local weights file for the architecture (.safetensors, "
                                                     ".pth, .bin), loaded weights-only as timm's pretrained file")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="more keyword arguments of timm.create_model, "
                                                                     "e.g. {drop_rate: 0.1} or {img_size: 32}")

    @model_validator(mode="before")
    @classmethod
    def _timm_installed(cls, data: Any) -> Any:
        require("timm")
        return data

    @field_validator("name")
    @classmethod
    def _known_name(cls, name: str) -> str:
        timm = require("timm")
        if not timm.is_model(name):
            arch = name.split(".")[0]
            raise ValueError(f"unknown timm model {name!r}{did_you_mean(arch, timm.list_models())} "
                             "(timm.list_models() lists them)")
        if "." in name:
            try:
                timm.models.get_pretrained_cfg(name)
            except RuntimeError as exc:
                tags = timm.list_pretrained(f"{name.split('.')[0]}.*")
                raise ValueError(f"{exc} Known: {', '.join(tags) or 'none'}") from None
        return name

    @model_validator(mode="after")
    def _reserved(self) -> TimmParams:
        for key, why in _RESERVED_KWARGS.items():
            if key in self.kwargs:
                raise ValueError(f"kwargs.{key}: not allowed, it {why}")
        return self


def _overlay(name: str, path: str) -> dict[str, Any]:
    """timm's ``pretrained_cfg_overlay`` for a local file. The file is first read here weights-only (whatever
    timm release loads it after), and the width of its classifier becomes the overlay's ``num_classes``: timm then
    keeps a classifier that already fits the data and replaces one that does not."""
    timm = require("timm")
    state = load_state_file(path, mmap=True)
    overlay: dict[str, Any] = {"file": str(checkpoint_path(path))}
    cfg = timm.models.get_pretrained_cfg(name)
    classifier = cfg.classifier if cfg is not None else None
    if isinstance(classifier, (list, tuple)):
        classifier = classifier[0] if classifier else None
    if classifier and f"{classifier}.weight" in state:
        overlay["num_classes"] = int(state[f"{classifier}.weight"].shape[0])
    return overlay


def make_timm(params: TimmParams, *, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Any timm model by name, with timm's pretrained weights or a local file; num_classes and in_chans from the
    data."""
    timm = require("timm")
    c, _, _ = image_shape(input_shape, f"timm {params.name}")
    kwargs = dict(params.kwargs)
    pretrained = params.pretrained
    if params.checkpoint:
        kwargs["pretrained_cfg_overlay"] = _overlay(params.name, params.checkpoint)
        pretrained = True
    try:
        return timm.create_model(params.name, pretrained=pretrained, num_classes=num_classes, in_chans=c, **kwargs)
    except RuntimeError as exc:
        if params.checkpoint and "state_dict" in str(exc):
            detail = " ".join(str(exc).split())[:600]
            raise ValueError(f"checkpoint {params.checkpoint!r} does not fit timm {params.name} ({detail})") \
                from None
        raise
