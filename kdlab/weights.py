"""Model weights: a model's state dict on the CPU, a weights-only checkpoint file, and loading weights into a
model with an error that names the config key and what did not fit."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kdlab.errors import KdlabError


def state_dict_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict, detached and on the CPU (what checkpoints and caches store)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def existing_file(value: str, key: str) -> Path:
    """``value`` as a path to a file that exists, or an error naming ``key``."""
    path = Path(value).expanduser()
    if not path.is_file():
        raise KdlabError(f"{key} = {value!r}: no such file")
    return path


def load_state_dict_file(path: Path, key: str) -> dict[str, torch.Tensor]:
    """``torch.load(..., weights_only=True)``; accepts a bare state dict or ``{"state_dict": ...}``."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input, reported as such
        raise KdlabError(f"{key} = {str(path)!r}: not a loadable weights-only checkpoint ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:300] if str(exc) else ''})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise KdlabError(f"{key} = {str(path)!r}: expected a state_dict (a mapping of names to tensors)")
    return obj


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], *, key: str, value: str,
                 strict: bool = True) -> list[str]:
    """Load ``state`` into ``model``; mismatches are an error naming the key and listing what did not fit.
    Returns the names of the tensors loaded (with ``strict=False``, only those the model has)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if shape or (strict and (missing or unexpected)):
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:8])}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:8])}")
        if shape:
            parts.append(f"shape mismatch {', '.join(shape[:8])}")
        raise KdlabError(f"{key} = {value!r}: the weights do not fit the model ({'; '.join(parts)})")
    loaded = [k for k in own if k in state]
    model.load_state_dict({**own, **{k: state[k] for k in loaded}})
    return loaded
