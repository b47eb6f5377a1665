"""The ``torchvision`` component: any ``torchvision.models`` classification architecture, optionally pretrained.

torchvision is imported when params are validated or a model is built, never when the plugin loads.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from torch import nn

from ._extras import did_you_mean, require
from .adapt import (
    adapt_stem,
    find_head,
    fresh_head,
    head_width,
    image_shape,
    load_into,
    load_state_file,
    set_module,
)

#: builder arguments that kdlab sets itself
_RESERVED_KWARGS = {"num_classes": "comes from the data", "weights": "is the `weights` param"}


def classification_models() -> list[str]:
    tv = require("torchvision")
    return tv.models.list_models(module=tv.models)


class TorchvisionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arch: str = Field(description="a torchvision.models classification architecture, e.g. resnet18, "
                                  "mobilenet_v3_small, efficientnet_b0, vit_b_16")
    weights: str | None = Field(None, description="a member of the architecture's torchvision weights enum, e.g. "
                                                  "DEFAULT or IMAGENET1K_V1, loaded by torchvision from "
                                                  "$TORCH_HOME/hub/checkpoints (downloaded there if missing)")
    checkpoint: str | None = Field(None, description="a local state_dict file of the architecture, loaded "
                                                     "weights-only (.pth/.pt, or .safetensors)")
    keep_head: bool = Field(False, description="keep the pretrained classifier, whose width must then be the "
                                               "data's number of classes; false: a fresh one for the data's classes")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="more keyword arguments of the torchvision "
                                                                     "builder, e.g. {image_size: 32} for a ViT")

    @model_validator(mode="before")
    @classmethod
    def _torchvision_installed(cls, data: Any) -> Any:
        require("torchvision")
        return data

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        names = classification_models()
        if arch not in names:
            raise ValueError(f"unknown torchvision architecture {arch!r}{did_you_mean(arch, names)} "
                             f"(torchvision.models.list_models(module=torchvision.models) lists {len(names)})")
        return arch

    @field_validator("weights")
    @classmethod
    def _known_weights(cls, weights: str | None, info: ValidationInfo) -> str | None:
        arch = info.data.get("arch")
        if weights is None or arch is None:
            return weights
        members = list(require("torchvision").models.get_model_weights(arch).__members__)
        if weights not in members:
            raise ValueError(f"{arch} has no weights {weights!r}{did_you_mean(weights, members, n=3)} "
                             f"(known: {', '.join(members)})")
        return weights

    @model_validator(mode="after")
    def _consistent(self) -> TorchvisionParams:
        if self.weights and self.checkpoint:
            raise ValueError("give weights or checkpoint, not both")
        if self.keep_head and not (self.weights or self.checkpoint):
            raise ValueError("keep_head keeps a pretrained classifier: give weights or checkpoint")
        for key, why in _RESERVED_KWARGS.items():
            if key in self.kwargs:
                raise ValueError(f"kwargs.{key}: not allowed, it {why}")
        return self


def _drop_aux_heads(model: nn.Module) -> None:
    """googlenet and inception_v3 return (logits, aux...) in training mode while their auxiliary heads are on;
    kdlab expects one logits tensor, so the auxiliary heads go, as torchvision's own builders do without them."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for name in ("aux1", "aux2", "AuxLogits"):
            if getattr(model, name, None) is not None:
                setattr(model, name, None)


def _check_input_size(model: nn.Module, arch: str, shape: tuple[int, int, int]) -> None:
    """Below the minimum size torchvision documents for the architecture's weights, try one forward pass so that
    a model that cannot take the data fails at build time with a clear message (a ViT without a matching
    ``image_size`` does, a ResNet does not)."""
    tv = require("torchvision")
    min_h, min_w = tv.models.get_model_weights(arch).DEFAULT.meta.get("min_size", (1, 1))
    c, h, w = shape
    if h >= min_h and w >= min_w:
        return
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, c, h, w))
    except Exception as exc:  # noqa: BLE001
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ValueError(f"torchvision {arch} cannot take {c}x{h}x{w} inputs ({first}); torchvision gives "
                         f"{min_h}x{min_w} as the minimum for its weights: use larger images or another "
                         "architecture (or, for a ViT, kwargs.image_size)") from None
    finally:
        model.train(was_training)


def make_torchvision(params: TorchvisionParams, *, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Any torchvision classification architecture by name, with torchvision's pretrained weights or a local
    checkpoint; head replaced for the data's classes, stem adapted to its channels."""
    tv = require("torchvision")
    arch = params.arch
    c, h, w = image_shape(input_shape, f"torchvision {arch}")
    kwargs = dict(params.kwargs)
    if params.weights:
        weights = tv.models.get_model_weights(arch)[params.weights]
        model = tv.models.get_model(arch, weights=weights, progress=False, **kwargs)
        source = f"weights {weights}"
    elif params.checkpoint:
        state = load_state_file(params.checkpoint)
        model = tv.models.get_model(arch, **kwargs)
        name, head = find_head(model, arch)
        stored = state.get(f"{name}.weight")
        if stored is not None and stored.shape[0] != head_width(head):
            set_module(model, name, fresh_head(head, stored.shape[0]))  # a fine-tuned head loads as it is
        load_into(model, state, source=f"checkpoint {params.checkpoint!r} (for torchvision {arch})")
        source = f"checkpoint {params.checkpoint!r}"
    else:
        model = tv.models.get_model(arch, num_classes=num_classes, **kwargs)
        source = None
    _drop_aux_heads(model)
    name, head = find_head(model, arch)
    if params.keep_head:
        if head_width(head) != num_classes:
            raise ValueError(f"keep_head: the classifier {name} of {source} has {head_width(head)} outputs but the "
                             f"data has {num_classes} classes; set keep_head: false to replace it")
    elif source is not None:
        set_module(model, name, fresh_head(head, num_classes))
    if c != 3:
        adapt_stem(model, c)
    _check_input_size(model, arch, (c, h, w))
    return model
