"""``kdlab layers FILE [--teacher|--student]``: the configured model built for the config's data, one example
batch run through it, and every module's dotted path with its output shape and parameters, so that users can pick
the layers feature-based losses name (``loss.params.student_layer: layer2``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
from torch import nn

from kdlab import batch
from kdlab.cli.run import load, overrides_of
from kdlab.errors import KdlabError
from kdlab.loading import head
from kdlab.models import build_model
from kdlab.session import Session
from kdlab.teachers.outputs import run_augment


def main(args: argparse.Namespace) -> int:
    loaded = load(args.file, overrides_of(args))
    role = "teacher" if args.teacher else "student"
    section = getattr(loaded.config, role)
    if section is None:
        raise KdlabError(f"{args.file}: no `{role}:` section to list the layers of")
    data = Session().get_data(loaded)
    model = build_model(loaded.components[role], loaded.params[role], data)
    x = head(data.train.x, 2)
    augment = run_augment(loaded, data)
    if augment is not None:
        x = augment.eval(x)
    rows = layer_table(model, x)
    if args.json:
        print(json.dumps({"role": role, "name": section.name, "input_shape": list(data.input_shape),
                          "layers": rows}, indent=2))
        return 0
    print(f"{role} {section.name!r} on {loaded.config.data.name} inputs {_shape(data.input_shape)} "
          f"(a batch of {batch.rows(x)}): {sum(p.numel() for p in model.parameters()):,} parameters")
    width = max(len(r["path"]) for r in rows) if rows else 4
    kinds = max(len(r["type"]) for r in rows) if rows else 4
    print(f"{'path':<{width}}  {'module':<{kinds}}  {'output':<22}  params")
    for r in rows:
        print(f"{r['path']:<{width}}  {r['type']:<{kinds}}  {r['output']:<22}  {r['params']:,}")
    return 0


def layer_table(model: nn.Module, x: Any) -> list[dict[str, Any]]:
    """Every named module of ``model`` (in definition order, those the forward pass did not reach included) with
    its output shape for the batch ``x`` (``-`` when not called) and its own parameters."""
    outputs: dict[str, str] = {}
    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(_record(outputs, name)))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            batch.forward(model, x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [{"path": name, "type": type(module).__name__, "output": outputs.get(name, "-"),
             "params": sum(p.numel() for p in module.parameters(recurse=False))}
            for name, module in model.named_modules() if name]


def _record(outputs: dict[str, str], name: str):
    def hook(_module, _inp, out):
        if name not in outputs:  # a module called twice keeps its first output
            outputs[name] = _describe(out)

    return hook


def _describe(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return _shape(tuple(out.shape))
    if isinstance(out, (tuple, list)):
        return "(" + ", ".join(_describe(o) for o in out) + ")"
    if isinstance(out, dict):
        return "{" + ", ".join(f"{k}: {_describe(v)}" for k, v in out.items()) + "}"
    return type(out).__name__


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"
