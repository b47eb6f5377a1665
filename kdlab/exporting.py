"""What a logged model is called with, and whether ``torch.export`` can export it (MLflow's ``pt2`` format).

One place describes a model's example inputs for MLflow (:func:`model_inputs`): a tensor of any dtype (float
signals and images, int64 token ids), several tensors, or named tensors (``kdlab.batch``: passed as keyword
arguments); the signature MLflow infers from them says the same."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

#: the rows of the example batch logged with a model (more than one, so that the batch dimension stays dynamic)
EXAMPLE_ROWS = 8


def model_inputs(example: Any, rows: int = EXAMPLE_ROWS) -> tuple[tuple[Tensor, ...], dict[str, Tensor], Any]:
    """``(args, kwargs, numpy_example)`` for an example batch: the CPU tensors the model is called with
    (``model(*args, **kwargs)``: named inputs as keyword arguments) and the same as numpy arrays, for
    ``input_example`` and the signature (one array, a list of them, or a dict by name)."""
    if isinstance(example, dict) and example and all(isinstance(t, Tensor) for t in example.values()):
        kwargs = {k: t[:rows].detach().cpu() for k, t in example.items()}
        return (), kwargs, {k: t.numpy() for k, t in kwargs.items()}
    if isinstance(example, Tensor):
        tensors = (example,)
    elif isinstance(example, (tuple, list)) and example and all(isinstance(t, Tensor) for t in example):
        tensors = tuple(example)
    else:
        raise TypeError(f"a model's example input must be a tensor, a tuple of tensors or a dict of named tensors, "
                        f"got {type(example).__name__}")
    args = tuple(t[:rows].detach().cpu() for t in tensors)
    arrays = [a.numpy() for a in args]
    return args, {}, arrays[0] if len(arrays) == 1 else arrays


def export_problem(model: nn.Module, example: Any) -> str | None:
    """Why ``torch.export`` cannot export ``model`` for ``example`` (as MLflow's ``pt2`` format does, batch
    dimension dynamic), or ``None`` when it can. Checked on a copy of the example on the CPU, in eval mode, with
    the model's mode restored: a cheap check before training, so that a model that cannot be exported is logged
    another way instead of failing after training."""
    from torch.export import Dim

    args, kwargs, _ = model_inputs(example, rows=2)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    args = tuple(a.to(device) for a in args)
    kwargs = {k: v.to(device) for k, v in kwargs.items()}
    auto = getattr(Dim, "AUTO", None)
    shapes: Any = [{0: auto} if auto is not None else None for _ in args]
    if kwargs:
        shapes = {k: {0: auto} if auto is not None else None for k in kwargs}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            torch.export.export(model, args, kwargs=kwargs or None, dynamic_shapes=shapes)
        return None
    except Exception as exc:  # noqa: BLE001 - any export failure is a reason to log the model another way
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"{type(exc).__name__}: {first[:300]}"
    finally:
        model.train(was_training)
