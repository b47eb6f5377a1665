"""The conformance kit: checks that a plugin's components honour kdlab's contracts.

Use it from a plugin's own tests::

    import pytest
    from kdlab.testing import check_component, components_of

    import kdlab_example.plugin

    @pytest.mark.parametrize("component", components_of(kdlab_example.plugin), ids=lambda c: f"{c.kind}-{c.name}")
    def test_conformance(component):
        check_component(component)

Each ``check_*`` function raises :class:`ConformanceError` (an ``AssertionError``) that names the component and the
contract it broke, and returns what it built so that a test can check more. Importing this module does not import
torch; it is also a pytest plugin (entry point ``pytest11``) that provides the ``kdlab_plugins`` fixture.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from kdlab.registry import Component

if TYPE_CHECKING:
    from torch import nn

    from kdlab.types import Data, Loss

__all__ = [
    "ConformanceError", "components_of", "check_component", "check_params", "check_data", "check_model",
    "check_loss", "write_distribution", "WRONG_VALUES",
]

#: Values of the wrong type that every params field must reject (at least one of them): a YAML string, mapping
#: and list of mappings. A field that accepts all three is typed ``Any`` and cannot catch a user's mistake.
WRONG_VALUES: tuple[Any, ...] = ("kdlab-wrong-type", {"kdlab": "wrong"}, [{"kdlab": "wrong"}])


class ConformanceError(AssertionError):
    """A component broke its contract."""


def _fail(component: Component, message: str) -> ConformanceError:
    return ConformanceError(f"{component.kind} {component.name!r} from {component.origin}: {message}")


def components_of(plugin: Any, name: str | None = None) -> list[Component]:
    """The components that ``plugin`` (a module or object with hook implementations) registers, on its own.

    The plugin is registered in a fresh plugin manager (no installed plugins), so its hook implementations are
    validated as kdlab validates them, and each component is attributed to it.
    """
    from kdlab.errors import PluginError
    from kdlab.plugins import Plugins

    plugins = Plugins()
    plugins.register(plugin, name or getattr(plugin, "__name__", type(plugin).__name__))
    registry = plugins.registry
    if registry.failures:
        raise PluginError("; ".join(f.reason for f in registry.failures))
    return registry.all()


# ----------------------------------------------------------------------------------------------------------------
# Params
# ----------------------------------------------------------------------------------------------------------------


def check_params(component: Component, example: dict[str, Any] | None = None) -> BaseModel:
    """The params model validates ``example`` (default: ``{}``, i.e. its defaults), round-trips through its JSON
    dump, rejects an unknown key, and rejects a value of the wrong type for every field."""
    model = component.params
    try:
        params = model.model_validate(example or {})
    except ValidationError as exc:
        raise _fail(component, f"params {example or {}!r} do not validate (give required params as `example`): "
                               f"{exc}") from None
    dumped = params.model_dump(mode="json")
    if model.model_validate(dumped) != params:
        raise _fail(component, f"params do not survive a JSON round trip: {dumped!r}")
    try:
        model.model_validate({**dumped, "kdlab_no_such_param": 1})
    except ValidationError:
        pass
    else:
        raise _fail(component, f"{model.__name__} accepts unknown keys, so a user's typo goes unnoticed: set "
                               "model_config = ConfigDict(extra='forbid')")
    for field in model.model_fields:
        for wrong in WRONG_VALUES:
            try:
                model.model_validate({**dumped, field: wrong})
            except ValidationError:
                break
        else:
            raise _fail(component, f"param {field!r} accepts values of any type ({WRONG_VALUES!r}): give it a type")
    return params


def _params(component: Component, example: dict[str, Any] | None) -> BaseModel:
    return check_params(component, example)


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def check_data(component: Component, example: dict[str, Any] | None = None, *, seed: int = 0) -> Data:
    """The factory builds a :class:`kdlab.Data`: labelled train/val/test splits (and an optional unlabeled
    transfer split) whose inputs are one tensor or a dict of named tensors — float32 features (finite), int64 ids,
    bool masks or uint8 bytes (raw text) — with the same form, names, per-example shapes and dtypes in every split,
    int64 labels in ``[0, num_classes)``, and the same tensors when built again with the same params and seed.

    A streamed split (inputs a map-style dataset) is checked on a few of its examples (the first, a middle one and
    the last): each a tensor or dict of tensors without the batch dimension, of the form above; its labels are a
    tensor known up front; the dataset pickles (DataLoader workers may be started by spawning)."""
    import torch

    from kdlab import batch
    from kdlab.types import Data, Split

    params = _params(component, example)
    data = component.build(params, seed=seed)
    if not isinstance(data, Data):
        raise _fail(component, f"factory returned {type(data).__name__}, expected kdlab.Data")
    if not (isinstance(data.num_classes, int) and data.num_classes >= 2):
        raise _fail(component, f"num_classes={data.num_classes!r}: expected an int >= 2")
    if not isinstance(data.metadata, dict):
        raise _fail(component, f"metadata is {type(data.metadata).__name__}, expected a dict")
    form = None
    for split_name, split in data.splits().items():
        where = f"split {split_name!r}"
        if not isinstance(split, Split):
            raise _fail(component, f"{where} is {type(split).__name__}, expected kdlab.Split")
        x = _streamed_sample(component, where, split.x) if split.streamed else split.x
        form = _check_inputs(component, where, x, form)
        if len(split) == 0:
            raise _fail(component, f"{where} is empty")
        if split_name == "transfer":
            if split.y is not None:
                raise _fail(component, "split 'transfer' must be unlabeled (y=None)")
            continue
        y = split.y
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or tuple(y.shape) != (len(split),):
            raise _fail(component, f"{where}: y must be an int64 tensor of shape ({len(split)},), got "
                                   f"{getattr(y, 'dtype', type(y))} {tuple(getattr(y, 'shape', ()))}")
        if int(y.min()) < 0 or int(y.max()) >= data.num_classes:
            raise _fail(component, f"{where}: labels span [{int(y.min())}, {int(y.max())}], expected "
                                   f"[0, {data.num_classes})")
    again = component.build(_params(component, example), seed=seed)
    for split_name, split in data.splits().items():
        other = again.splits().get(split_name)
        same = other is not None and split.streamed == other.streamed and len(split) == len(other) and (
            (split.y is None and other.y is None) or (split.y is not None and other.y is not None
                                                      and torch.equal(split.y, other.y)))
        if same and split.streamed:
            rows = _sample_rows(len(split))
            same = all(batch.equal(_as_batch(split.x[i]), _as_batch(other.x[i])) for i in rows)
        elif same:
            same = batch.equal(split.x, other.x)
        if not same:
            raise _fail(component, f"split {split_name!r} differs between two builds with seed={seed}: "
                                   "seed every random number generator you use")
    return data


def _first_rows(data: Data, n: int) -> Any:
    """The first ``n`` training rows as a batch (read from the dataset of a streamed split)."""
    from kdlab.loading import head

    return head(data.train.x, n)


def _sample_rows(n: int) -> list[int]:
    return sorted({0, n // 2, max(n - 1, 0)})


def _as_batch(example: Any) -> Any:
    return example.unsqueeze(0) if not isinstance(example, dict) else {k: v.unsqueeze(0) for k, v in example.items()}


def _streamed_sample(component: Component, where: str, x: Any) -> Any:
    """A few examples of a streamed split stacked into a batch, after checking the dataset's protocol."""
    import pickle

    import torch

    if not (hasattr(x, "__len__") and hasattr(x, "__getitem__")):
        raise _fail(component, f"{where}: x must be a tensor, a dict of named tensors, or a map-style dataset "
                               f"(len(x), x[i]), got {type(x).__name__}")
    rows = _sample_rows(len(x))
    examples = []
    for i in rows:
        try:
            ex = x[i]
        except Exception as exc:  # noqa: BLE001 - the plugin's dataset raised: say where
            raise _fail(component, f"{where}: reading example {i} raised {type(exc).__name__}: {exc}") from exc
        if not (isinstance(ex, torch.Tensor) or (isinstance(ex, dict) and ex and all(
                isinstance(v, torch.Tensor) for v in ex.values()))):
            raise _fail(component, f"{where}: example {i} is {type(ex).__name__}, expected a tensor or a dict of "
                                   "tensors (one example, without the batch dimension)")
        examples.append(ex)
    try:
        from kdlab.loading import stack

        sample = stack(examples)
    except RuntimeError as exc:
        raise _fail(component, f"{where}: examples {rows} differ in shape ({exc})") from None
    try:
        pickle.dumps(x)
    except Exception as exc:  # noqa: BLE001
        raise _fail(component, f"{where}: the dataset does not pickle ({type(exc).__name__}: {exc}); DataLoader "
                               "workers started by spawning need it to") from None
    return sample


def _check_inputs(component: Component, where: str, x: Any, form: Any) -> Any:
    """One split's inputs against the contract and against the form (names, shapes, dtypes) of the splits before."""
    import torch

    dtypes = (torch.float32, torch.int64, torch.bool, torch.uint8)  # the contract's

    if isinstance(x, torch.Tensor):
        named = {"x": x}
    elif isinstance(x, dict) and x and all(isinstance(k, str) for k in x):
        named = dict(x)
    else:
        raise _fail(component, f"{where}: x must be a tensor or a dict of named tensors, got {type(x).__name__}")
    n = None
    for name, t in named.items():
        what = f"{where}: x" if name == "x" and isinstance(x, torch.Tensor) else f"{where}: x[{name!r}]"
        if not isinstance(t, torch.Tensor) or t.ndim < 1 or t.dtype not in dtypes:
            raise _fail(component, f"{what} must be a float32 (features), bool (masks), uint8 (bytes) or int64 "
                                   f"(ids) tensor with the examples along dim 0, got {getattr(t, 'dtype', type(t))} "
                                   f"{tuple(getattr(t, 'shape', ()))}")
        if t.dtype == torch.float32 and (t.ndim < 2 and isinstance(x, torch.Tensor)):
            raise _fail(component, f"{what} must have shape (N, *input_shape), got {tuple(t.shape)}")
        if n is None:
            n = t.shape[0]
        elif t.shape[0] != n:
            raise _fail(component, f"{what} has {t.shape[0]} rows where the other inputs have {n}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise _fail(component, f"{what} holds NaN or infinite values")
    this = {name: (tuple(t.shape[1:]), t.dtype) for name, t in named.items()}
    if form is not None and this != form:
        raise _fail(component, f"{where}: inputs {_describe(this)} differ from train's {_describe(form)}")
    return this


def _describe(form: dict[str, Any]) -> str:
    return ", ".join(f"{k} {str(dtype).removeprefix('torch.')} {shape}" for k, (shape, dtype) in form.items())


# ----------------------------------------------------------------------------------------------------------------
# Teacher and student models
# ----------------------------------------------------------------------------------------------------------------


def check_model(component: Component, example: dict[str, Any] | None = None, *,
                input_shape: tuple[int, ...] = (1, 8, 8), num_classes: int = 10, batch_size: int = 4,
                data: Data | None = None) -> nn.Module:
    """The factory builds a ``torch.nn.Module`` that maps a batch ``(N, *input_shape)`` to finite logits
    ``(N, num_classes)``, in training and in eval mode, and whose parameters receive gradients.

    With ``data`` (e.g. what :func:`check_data` returned), the shapes are the data's and the batch is the first
    rows of its training split; otherwise the batch is standard normal noise."""
    import torch
    from torch import nn

    from kdlab import batch

    metadata: dict[str, Any] = {}
    if data is not None:
        input_shape, num_classes, metadata = data.input_shape, data.num_classes, data.metadata
        batch_size = min(batch_size, len(data.train))
    params = _params(component, example)
    model = component.build(params, input_shape=tuple(input_shape), num_classes=num_classes, metadata=metadata)
    if not isinstance(model, nn.Module):
        raise _fail(component, f"factory returned {type(model).__name__}, expected a torch.nn.Module")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise _fail(component, "the model has no trainable parameters")
    x = _first_rows(data, batch_size) if data is not None else \
        torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(0))
    model.train()
    out = batch.forward(model, x)
    expected = (batch_size, num_classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        got = tuple(getattr(out, "shape", ())) or type(out).__name__
        raise _fail(component, f"input {_describe({k: (tuple(v.shape), v.dtype) for k, v in batch.tensors(x).items()})}"
                               f" gave {got}, expected logits of shape {expected}")
    if not torch.isfinite(out).all():
        raise _fail(component, "logits hold NaN or infinite values")
    out.float().logsumexp(1).sum().backward()
    if not any(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable):
        raise _fail(component, "no parameter received a finite gradient from the logits")
    model.eval()
    with torch.no_grad():
        out = batch.forward(model, batch.index(x, slice(0, 1)))
    if tuple(out.shape) != (1, num_classes):
        raise _fail(component, f"in eval mode a batch of 1 gave {tuple(out.shape)}, expected {(1, num_classes)}")
    model.zero_grad(set_to_none=True)
    return model


# ----------------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------------


def _tiny_net(example: Any, num_classes: int, width: int = 16, vocab: int = 0) -> nn.Module:
    """A student/teacher stand-in named as kdlab's first-party models are (``blocks.0``, ``blocks.1``, ``head``),
    for inputs like ``example``: float tensors are flattened, integer ids (int64, uint8 bytes, bool) embedded and
    averaged (``vocab`` ids), named inputs (``model(**x)``) joined."""
    import torch
    from torch import nn

    from kdlab import batch

    shapes = {k: (tuple(t.shape[1:]), t.is_floating_point()) for k, t in batch.tensors(example).items()}

    class TinyNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.ModuleDict({k: nn.Embedding(max(vocab, 2), 8) for k, (_, fl) in shapes.items() if not fl})
            dim = sum(math.prod(shape) if fl else 8 for shape, fl in shapes.values())
            self.blocks = nn.Sequential(
                nn.Sequential(nn.Linear(dim, width), nn.ReLU()),
                nn.Sequential(nn.Linear(width, width), nn.ReLU()),
            )
            self.head = nn.Linear(width, num_classes)

        def forward(self, *args, **named):
            inputs = {"x": args[0]} if args else named
            feats = [self.embed[k](t.long().clamp(0, self.embed[k].num_embeddings - 1)).flatten(1, -2).mean(1)
                     if k in self.embed else t.flatten(1).float() for k, t in inputs.items()]
            return self.head(self.blocks(torch.cat(feats, 1)))

    return TinyNet()


def check_loss(component: Component, example: dict[str, Any] | None = None, *,
               student: nn.Module | None = None, teacher: nn.Module | None = None,
               input_shape: tuple[int, ...] = (1, 8, 8), num_classes: int = 10, batch_size: int = 8,
               data: Data | None = None) -> Loss:
    """The factory builds a :class:`kdlab.Loss`; after ``setup``, ``forward`` returns a :class:`kdlab.LossOutput`
    with finite scalar named terms and a finite scalar total whose gradient reaches the student, also for a batch
    whose rows are partly unlabeled (label :data:`kdlab.UNLABELED`).

    The batch is standard normal noise of ``input_shape``, or with ``data`` (e.g. what :func:`check_data` returned)
    the first rows of its training split: int64 ids and named inputs (``model(**x)``) included.
    ``student``/``teacher`` default to small networks whose modules are named ``blocks.0``, ``blocks.1`` and
    ``head`` like kdlab's own models; pass your own when the loss's layers are named otherwise.
    """
    import torch

    from kdlab import batch
    from kdlab.capture import FeatureCapture
    from kdlab.types import UNLABELED, Loss, LossInputs, LossOutput, LossSetup

    params = _params(component, example)
    loss = component.build(params)
    if not isinstance(loss, Loss):
        raise _fail(component, f"factory returned {type(loss).__name__}, expected a kdlab.Loss")
    torch.manual_seed(0)
    vocab = 0
    if data is not None:
        input_shape, num_classes = data.input_shape, data.num_classes
        batch_size = min(batch_size, len(data.train))
        x = _first_rows(data, batch_size)
        ids = [t for t in batch.tensors(x).values() if not t.is_floating_point()]
        vocab = int(data.metadata.get("vocab_size") or (max(int(t.max()) for t in ids) + 1 if ids else 0))
    else:
        x = torch.randn(batch_size, *input_shape)
    student = student if student is not None else _tiny_net(x, num_classes, vocab=vocab)
    teacher = teacher if teacher is not None else _tiny_net(x, num_classes, width=32, vocab=vocab)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def build_model(kind: str, name: str, model_params: dict[str, Any]) -> nn.Module:
        return _tiny_net(x, num_classes, vocab=vocab)

    def build_teacher(spec: dict[str, Any]) -> nn.Module:
        extra = _tiny_net(x, num_classes, width=24, vocab=vocab).eval()
        return extra.requires_grad_(False)

    loss.setup(LossSetup(student=student, teacher=teacher if loss.uses_teacher else None, input_shape=input_shape,
                         num_classes=num_classes, device=torch.device("cpu"), build_model=build_model,
                         student_config={"name": "kdlab-testing-tiny", "params": {}}, example_x=x,
                         build_teacher=build_teacher, num_examples=batch_size))
    labels = (data.train.y[:batch_size] if data is not None else torch.arange(batch_size) % num_classes)
    for name, y in (("labelled", labels), ("partly unlabeled", torch.where(torch.arange(batch_size) % 2 == 0, labels,
                                                                           UNLABELED))):
        student.zero_grad(set_to_none=True)
        s_cap = FeatureCapture(student, loss.student_layers, key="student_layers", owner="the student")
        t_cap = FeatureCapture(teacher, loss.teacher_layers, key="teacher_layers", owner="the teacher")
        try:
            s_logits = batch.forward(student, x)
            with torch.no_grad():
                t_logits = batch.forward(teacher, x) if loss.uses_teacher else None
            inputs = LossInputs(x=x, labels=y, student_logits=s_logits, teacher_logits=t_logits,
                                student_features=s_cap.take(), teacher_features=t_cap.take(), epoch=1, epochs=2,
                                index=torch.arange(batch_size))
        finally:
            s_cap.close()
            t_cap.close()
        out = loss(inputs)
        if not isinstance(out, LossOutput):
            raise _fail(component, f"forward returned {type(out).__name__}, expected kdlab.LossOutput")
        if not out.terms:
            raise _fail(component, "LossOutput.terms is empty: name at least one term (kdlab logs each one)")
        for term, value in {**out.terms, "total": out.total}.items():
            if not isinstance(term, str) or not term:
                raise _fail(component, f"term name {term!r} is not a non-empty string")
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise _fail(component, f"term {term!r} is {type(value).__name__} "
                                       f"{tuple(getattr(value, 'shape', ()))}, expected a scalar tensor")
            if not torch.isfinite(value).all():
                raise _fail(component, f"term {term!r} is {float(value)} on a {name} batch")
        out.total.backward()
        if not any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters()):
            raise _fail(component, f"the total's gradient does not reach the student on a {name} batch")
    return loss


# ----------------------------------------------------------------------------------------------------------------
# Any component
# ----------------------------------------------------------------------------------------------------------------


def check_component(component: Component, example: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """Run the check for the component's kind: :func:`check_data`, :func:`check_model` (teacher and student)
    or :func:`check_loss`. Keyword arguments go to that check."""
    if component.kind == "data":
        return check_data(component, example, **kwargs)
    if component.kind in ("teacher", "student"):
        return check_model(component, example, **kwargs)
    if component.kind == "loss":
        return check_loss(component, example, **kwargs)
    raise ValueError(f"unknown component kind {component.kind!r}")


# ----------------------------------------------------------------------------------------------------------------
# Installing a plugin the way pip does
# ----------------------------------------------------------------------------------------------------------------


def write_distribution(folder: str | os.PathLike, distribution: str, version: str,
                       entry_points: dict[str, str], files: dict[str, str] | None = None) -> Path:
    """Write what ``pip install`` leaves in site-packages: ``files`` (relative path -> text) and a
    ``<name>-<version>.dist-info`` folder with ``METADATA`` and ``entry_points.txt`` listing ``entry_points``
    (name -> ``module`` or ``module:object``) in the ``kdlab`` group. Put ``folder`` on ``sys.path`` (or
    ``PYTHONPATH``) and call :func:`kdlab.plugins.reset_plugins`: kdlab then discovers the plugin as if installed.
    Returns the dist-info folder."""
    root = Path(folder)
    for rel, text in (files or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    info = root / f"{re.sub(r'[-_.]+', '_', distribution)}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(
        "[kdlab]\n" + "".join(f"{name} = {target}\n" for name, target in entry_points.items()))
    return info


# ----------------------------------------------------------------------------------------------------------------
# pytest plugin (entry point ``pytest11``)
# ----------------------------------------------------------------------------------------------------------------


try:
    import pytest
except ImportError:  # pragma: no cover - the checks work without pytest; only the fixture needs it
    pytest = None


def kdlab_plugins():
    """kdlab's process-wide plugin manager; plugins a test registers with ``kdlab_plugins.register(obj, name)``
    are unregistered after the test."""
    from kdlab.plugins import get_plugins

    plugins = get_plugins()
    before = set(plugins.info)
    yield plugins
    for name in set(plugins.info) - before:
        plugins.unregister(name)


if pytest is not None:
    kdlab_plugins = pytest.fixture(kdlab_plugins)
