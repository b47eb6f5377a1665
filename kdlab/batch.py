"""Model inputs as kdlab moves them: one tensor (float features, int64 token ids) or several named tensors
(``{"input_ids": ..., "attention_mask": ...}``), each with the examples along the first dimension. These functions
index, move, join and feed either form the same way, so the engine never asks which one it holds.

A dict is passed to a model as keyword arguments (``model(**x)``), as Hugging Face models take it."""

from __future__ import annotations

from typing import Any, Union

import torch
from torch import Tensor, nn

#: a batch (or a whole split) of model inputs
Inputs = Union[Tensor, dict[str, Tensor]]


def rows(x: Inputs) -> int:
    """The number of examples."""
    if isinstance(x, Tensor):
        return int(x.shape[0])
    return int(next(iter(x.values())).shape[0])


def index(x: Inputs, idx: Any) -> Inputs:
    """The examples at ``idx`` (a slice, an index tensor or a boolean mask)."""
    if isinstance(x, Tensor):
        return x[idx]
    return {k: v[idx] for k, v in x.items()}


def to(x: Inputs, device: torch.device | str, non_blocking: bool = False) -> Inputs:
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=non_blocking)
    return {k: v.to(device, non_blocking=non_blocking) for k, v in x.items()}


def cat(parts: list[Inputs]) -> Inputs:
    """The examples of ``parts`` one after another (no copy for a single part)."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], Tensor):
        return torch.cat(parts)
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def forward(model: nn.Module, x: Inputs) -> Any:
    """``model(x)``, or ``model(**x)`` for named inputs."""
    return model(x) if isinstance(x, Tensor) else model(**x)


def shapes(x: Inputs) -> dict[str, tuple[int, ...]]:
    """The shape of one example of each input (``{"x": ...}`` for a single tensor)."""
    if isinstance(x, Tensor):
        return {"x": tuple(x.shape[1:])}
    return {k: tuple(v.shape[1:]) for k, v in x.items()}


def tensors(x: Inputs) -> dict[str, Tensor]:
    """The tensors by name (``{"x": x}`` for a single tensor)."""
    return {"x": x} if isinstance(x, Tensor) else dict(x)


def equal(a: Inputs, b: Inputs) -> bool:
    ta, tb = tensors(a), tensors(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
