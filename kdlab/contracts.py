"""Run-time contracts of components, checked once where kdlab first meets each one (``docs/plugins.md``, "Component
contracts"; ``docs/faults.md``).

* :func:`check_data` — a data component's splits: shapes, label dtype and range, finite inputs (streamed splits: by
  their length, labels and first example).
* :func:`check_logits` — a model's output for ``rows`` inputs is a float tensor ``(rows, num_classes)``: a
  student or teacher with the wrong number of logits is caught before it trains, and a teacher's before its outputs
  are cached.
* :func:`watch` — around training: the student's (and a trained teacher's) first forward pass and the loss's first
  call are checked (a :class:`kdlab.LossOutput` with a scalar, finite ``total`` that reaches the student), and an
  exception raised inside a component's ``forward`` is reported as that component's error, with its plugin and
  distribution. Running out of memory is a :class:`~kdlab.errors.TrainingError` saying what to lower.

Every breach is a :class:`~kdlab.errors.PluginError` (exit code 3) naming the component, its plugin and version,
what was expected and what came. The checks look at what a model *returns*, whatever its inputs are (a tensor, or a
mapping of named tensors).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.errors import KdlabError, PluginError, Pruned, TrainingError, shorten
from kdlab.registry import Component
from kdlab.types import Data, LossOutput


def who(role: str, comp: Component | None) -> str:
    """``student 'mlp' from plugin 'kdlab-models' (kdlab 0.1.0)``."""
    if comp is None:
        return role
    return f"{role} {comp.name!r} from {comp.origin}"


def rows_of(x: Any) -> int | None:
    """The number of examples in a batch: a tensor's first dimension, or that of a mapping's first tensor."""
    if isinstance(x, Tensor):
        return int(x.shape[0]) if x.dim() else None
    if isinstance(x, Mapping):
        for v in x.values():
            if isinstance(v, Tensor) and v.dim():
                return int(v.shape[0])
    return None


def _shape(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


# -- data --------------------------------------------------------------------------------------------------------


def check_data(data: Data, comp: Component | None) -> None:
    """The data contract: labelled train/val/test splits with rows, one input shape, int64 labels of shape ``(N,)``
    in ``[0, num_classes)``, finite float inputs. A streamed split (a map-style dataset) is checked by its length,
    its labels and its first example (the rest is read as training reads it)."""
    name = who("data", comp)
    k = data.num_classes
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise PluginError(f"{name} returned num_classes={k!r}; expected a positive int")
    shapes: dict[str, tuple[int, ...]] = {}
    for split_name, split in data.splits().items():
        where = f"{name}: split {split_name!r}"
        x = split.x
        if split.streamed:  # a map-style dataset: its length and its first example (the rest is read as trained)
            n = _streamed_rows(x, where)
            if n and split_name != "transfer":
                first = _example(x, where)
                if isinstance(first, Tensor):
                    shapes[split_name] = tuple(first.shape)
        else:
            n = rows_of(x)
        if n is None:
            raise PluginError(f"{where} has inputs x of {_shape(x)}; expected a tensor (N, *input_shape)")
        if n == 0 and split_name != "transfer":
            raise PluginError(f"{where} has no rows")
        if isinstance(x, Tensor):
            shapes[split_name] = tuple(x.shape[1:])
            if x.is_floating_point() and n and not bool(torch.isfinite(x).all()):
                raise PluginError(f"{where} has non-finite inputs (NaN or infinity); expected finite values")
        if split_name == "transfer":
            continue
        y = split.y
        if not isinstance(y, Tensor) or y.dim() != 1 or int(y.shape[0]) != n:
            raise PluginError(f"{where} has labels y of {_shape(y)}; expected int64 labels of shape ({n},), one "
                              "per row of x")
        if y.dtype != torch.int64:
            raise PluginError(f"{where} has labels of dtype {str(y.dtype).removeprefix('torch.')}; expected int64")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= k:
            raise PluginError(f"{where} has labels in [{lo}, {hi}]; expected labels in [0, {k - 1}] for its "
                              f"num_classes={k}")
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{s} {v}" for s, v in shapes.items())
        raise PluginError(f"{name}: the splits' inputs have different shapes ({listing}); expected one input shape")


def _streamed_rows(x: Any, where: str) -> int:
    try:
        n = len(x)
    except Exception as exc:  # noqa: BLE001 - the plugin's dataset: say which
        raise PluginError(f"{where} has inputs x of {_shape(x)} whose len() raised {type(exc).__name__}: "
                          f"{shorten(str(exc), 300)}; expected a tensor (N, *input_shape), a dict of named tensors "
                          "or a map-style dataset (len(x), x[i])") from exc
    if not isinstance(n, int) or not hasattr(x, "__getitem__"):
        raise PluginError(f"{where} has inputs x of {_shape(x)}; expected a tensor (N, *input_shape), a dict of "
                          "named tensors or a map-style dataset (len(x), x[i])")
    return n


def _example(x: Any, where: str) -> Any:
    """Example 0 of a streamed split: a tensor or a dict of tensors (one example, without the batch dimension)."""
    try:
        ex = x[0]
    except Exception as exc:  # noqa: BLE001
        raise PluginError(f"{where}: reading example 0 raised {type(exc).__name__}: {shorten(str(exc), 300)}") from exc
    if not (isinstance(ex, Tensor) or (isinstance(ex, Mapping) and ex
                                       and all(isinstance(v, Tensor) for v in ex.values()))):
        raise PluginError(f"{where}: example 0 is {_shape(ex)}; expected a tensor or a dict of tensors (one example, "
                          "without the batch dimension)")
    return ex


# -- models and losses -------------------------------------------------------------------------------------------


def check_logits(out: Any, rows: int | None, num_classes: int, name: str, when: str) -> None:
    """``out`` is a float tensor of shape ``(rows, num_classes)``; otherwise a :class:`PluginError`."""
    expected = f"({rows if rows is not None else 'N'}, {num_classes})"
    if not isinstance(out, Tensor):
        raise PluginError(f"{name} returned {_shape(out)} {when}; expected logits: a float tensor of shape {expected}")
    if not out.is_floating_point() or out.dim() != 2 or out.shape[1] != num_classes or \
            (rows is not None and out.shape[0] != rows):
        raise PluginError(f"{name} returned {_shape(out)} {when}; expected logits of shape {expected}: one row per "
                          f"example and one column per class of the data ({num_classes})")


def check_loss_output(out: Any, name: str, student_trains: bool) -> None:
    """A :class:`LossOutput` whose ``total`` is a finite scalar tensor (with a gradient when the student trains)
    and whose ``terms`` map names to scalar tensors."""
    if not isinstance(out, LossOutput):
        extra = ""
        if isinstance(out, Mapping):
            extra = f" (a mapping with keys {sorted(map(str, out))[:8]}: wrap it as kdlab.LossOutput(total, terms))"
        raise PluginError(f"{name} returned {_shape(out)}{extra}; expected a kdlab.LossOutput(total, terms)")
    total = out.total
    if not isinstance(total, Tensor) or total.numel() != 1:
        raise PluginError(f"{name} returned a total of {_shape(total)}; expected a scalar tensor (reduce it, e.g. "
                          "with .mean())")
    if not bool(torch.isfinite(total.detach()).all()):
        raise PluginError(f"{name} returned a total of {float(total.detach().reshape(()))} on the first batch; "
                          "expected a finite number")
    if student_trains and not total.requires_grad:
        raise PluginError(f"{name} returned a total that does not depend on the student (no gradient): it must be "
                          "computed from inputs.student_logits or the student's features")
    if not isinstance(out.terms, Mapping):
        raise PluginError(f"{name} returned terms of {_shape(out.terms)}; expected a dict of named scalar tensors")
    for key, term in out.terms.items():
        if not isinstance(key, str) or not isinstance(term, Tensor) or term.numel() != 1:
            raise PluginError(f"{name} returned the term {key!r} as {_shape(term)}; expected a scalar tensor")


@dataclass
class Part:
    """A component taking part in training: its module, role (``student``, ``teacher``, ``loss``) and registry
    entry (``None`` for kdlab's own, e.g. the teacher's cross-entropy)."""

    module: nn.Module
    role: str
    comp: Component | None = None

    @property
    def name(self) -> str:
        return who(self.role, self.comp)


@contextmanager
def watch(parts: list[Part], num_classes: int, *, check_first_call: bool = True) -> Iterator[None]:
    """Training under the contracts: the first forward pass of each model part and the first call of the loss part
    are checked (with ``check_first_call``), and an exception raised inside a part's ``forward`` becomes a
    :class:`PluginError` naming it (the original exception chained)."""
    handles: list[Any] = []
    if check_first_call:
        student_trains = any(p.role == "student" and any(q.requires_grad for q in p.module.parameters())
                             for p in parts)
        for part in parts:
            holder: list[Any] = []
            holder.append(part.module.register_forward_hook(
                _first_call_check(part, num_classes, student_trains, holder), with_kwargs=True))
            handles += holder
    try:
        yield
    except (KdlabError, KeyboardInterrupt, Pruned):
        raise
    except Exception as exc:  # noqa: BLE001 - named after the component it came from, if any
        found = blame(exc, parts)
        if _is_oom(exc):
            where = f" in the {found[1]} of {found[0].name}" if found else ""
            raise TrainingError(f"out of memory while training{where} ({shorten(str(exc).splitlines()[0], 300)}): "
                                "lower training.batch_size (or eval_batch_size), or use a smaller model") from exc
        if found is None:
            raise
        culprit, function = found
        raise PluginError(f"{culprit.name} raised in {function}: {type(exc).__name__}: "
                          f"{shorten(str(exc), 500)} (--debug shows the traceback)") from exc
    finally:
        for h in handles:
            h.remove()


def _first_call_check(part: Part, num_classes: int, student_trains: bool, handle: list[Any]):
    """A forward hook that checks the first call and then removes itself (later steps pay nothing)."""

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        for h in handle:
            h.remove()
        if part.role == "loss":
            check_loss_output(output, part.name, student_trains)
        else:  # named inputs arrive as keywords: model(**x)
            rows = rows_of(args[0]) if args else rows_of(kwargs)
            check_logits(output, rows, num_classes, part.name, "for the first training batch")

    return hook


def blame(exc: BaseException, parts: list[Part]) -> tuple[Part, str] | None:
    """The part whose method (``forward``, ``setup``, or a submodule's) was running when ``exc`` was raised, the
    innermost one on the traceback, and the name of that method."""
    by_id = {id(p.module): p for p in parts}
    found = None
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        owner = frame.f_locals.get("self")
        if owner is not None and id(owner) in by_id:
            name = frame.f_code.co_name
            found = (by_id[id(owner)], "forward" if name in ("_call_impl", "_wrapped_call_impl", "__call__") else name)
        tb = tb.tb_next
    return found


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or isinstance(exc, MemoryError) or \
        "out of memory" in str(exc).lower()


@contextmanager
def forward_of(part: Part) -> Iterator[None]:
    """A part's forward passes outside training (a teacher's outputs, evaluation): an exception raised inside is
    reported as its error, and running out of memory as a :class:`TrainingError`."""
    with watch([part], 0, check_first_call=False):
        yield
