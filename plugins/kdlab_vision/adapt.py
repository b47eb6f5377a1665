"""Fitting models to kdlab's data: the input shapes they take, weights files, and the two changes a zoo model
needs, a classifier for the data's classes and a stem for the data's channels. Plain torch."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

#: torchvision architectures whose classifier is not their last ``nn.Linear``: name -> dotted path of the head
SPECIAL_HEADS = {"squeezenet1_0": "classifier.1", "squeezenet1_1": "classifier.1"}


def image_shape(input_shape: tuple[int, ...], name: str, min_size: int = 1) -> tuple[int, int, int]:
    """``(C, H, W)`` from the data's input shape, or a ``ValueError`` naming what ``name`` accepts."""
    if len(input_shape) != 3:
        raise ValueError(f"{name} takes images of shape (C, H, W), got {tuple(input_shape)}")
    c, h, w = input_shape
    if min(h, w) < min_size:
        raise ValueError(f"{name} needs images of at least {min_size}x{min_size}, got {h}x{w}")
    return c, h, w


# ----------------------------------------------------------------------------------------------------------------
# Weights files
# ----------------------------------------------------------------------------------------------------------------


def checkpoint_path(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"checkpoint {path!r}: no such file")
    return p


def load_state_file(path: str, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The state_dict in a local file, read without running code: ``.safetensors``, or a ``torch.save`` file
    loaded with ``torch.load(..., weights_only=True)``. A dict holding the state_dict under ``state_dict`` or
    ``model`` (as training scripts such as RepDistiller's save it) is unwrapped, and a ``module.`` prefix
    (``nn.DataParallel``) is stripped."""
    p = checkpoint_path(path)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(p))
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        raise ValueError(f"checkpoint {path!r} cannot be read as weights only ({type(exc).__name__}: {first})") \
            from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {path!r} does not hold a state_dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def _some(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def load_into(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load ``state`` into ``model`` strictly; a mismatch is a ``ValueError`` naming ``source`` and the keys
    that did not fit (missing, unexpected, and those whose shapes differ)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs the model's {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{what}: {_some(keys)}" for what, keys in
                 (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if keys]
        raise ValueError(f"{source} does not fit the model ({'; '.join(parts)})")
    model.load_state_dict(state)


# ----------------------------------------------------------------------------------------------------------------
# The classifier
# ----------------------------------------------------------------------------------------------------------------


def find_head(model: nn.Module, arch: str = "") -> tuple[str, nn.Module]:
    """The classifier: a known special case, else the last ``nn.Linear`` registered in the model."""
    if arch in SPECIAL_HEADS:
        return SPECIAL_HEADS[arch], model.get_submodule(SPECIAL_HEADS[arch])
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"cannot find the classifier of {arch or type(model).__name__}: it has no nn.Linear")
    return linears[-1]


def head_width(head: nn.Module) -> int:
    return head.out_features if isinstance(head, nn.Linear) else head.out_channels


def fresh_head(head: nn.Module, num_classes: int) -> nn.Module:
    """A newly initialised classifier like ``head`` with ``num_classes`` outputs (a 1x1 conv for squeezenet)."""
    if isinstance(head, nn.Linear):
        return nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
    conv = nn.Conv2d(head.in_channels, num_classes, kernel_size=1)
    nn.init.normal_(conv.weight, 0.0, 0.01)  # torchvision's initialisation of squeezenet's final conv
    nn.init.zeros_(conv.bias)
    return conv


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


# ----------------------------------------------------------------------------------------------------------------
# The stem
# ----------------------------------------------------------------------------------------------------------------


def adapt_conv_weight(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Weights of a conv over 3 input channels turned into weights over ``in_chans``, by the rule timm uses for
    pretrained stems: one channel gets the sum over the three, so a grey image gives the response the RGB weights
    gave it; other counts get the three repeated cyclically and scaled by ``3 / in_chans``, which keeps the
    response to a grey image exactly for multiples of three and on average otherwise."""
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeat = math.ceil(in_chans / weight.shape[1])
    return weight.repeat(1, repeat, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


def adapt_stem(model: nn.Module, in_chans: int) -> str:
    """Replace the first ``nn.Conv2d`` over 3 channels by one over ``in_chans`` with adapted weights (see
    :func:`adapt_conv_weight`); returns its dotted name."""
    for name, conv in model.named_modules():  # noqa: B007 - the match is used after the loop
        if isinstance(conv, nn.Conv2d) and conv.in_channels == 3 and conv.groups == 1:
            break
    else:
        raise ValueError(f"cannot adapt {type(model).__name__} to {in_chans} input channels: it has no Conv2d over "
                         "3 channels")
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    bias=conv.bias is not None, padding_mode=conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(adapt_conv_weight(conv.weight, in_chans))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    set_module(model, name, new)
    if getattr(model, "transform_input", False):
        # googlenet / inception_v3 with ImageNet weights re-normalise 3 RGB channels in forward
        model.transform_input = False
    return name
