"""Public types that plugins touch: data splits, loss inputs and outputs, the loss base class, run info."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from kdlab import batch
from kdlab.batch import Inputs

if TYPE_CHECKING:
    from kdlab.config import RunConfig

#: Label value of an unlabeled example (rows of a transfer split mixed into a training batch).
UNLABELED = -1


@dataclass
class Split:
    """One split of a dataset: inputs ``x`` — one tensor of shape ``(N, *input_shape)`` (float32 features, or
    int64 token ids) or a dict of named tensors with ``N`` rows each (``{"input_ids": ..., "attention_mask": ...}``,
    passed to models as keyword arguments; uint8 for bytes such as raw text, bool for masks) — and labels ``y`` of
    shape ``(N,)`` (int64, in ``[0, num_classes)``), or ``y=None`` for an unlabeled split.

    For data that does not fit in memory, ``x`` may instead be a map-style dataset (``len(x)``, ``x[i]`` -> the
    inputs of example ``i`` without the batch dimension: a tensor or a dict of named tensors; optionally
    ``x.__getitems__(indices)`` -> a list of them), read lazily through a DataLoader; its labels ``y`` are still
    one tensor, known up front. Such a split is *streamed*."""

    x: Inputs | Any
    y: Tensor | None = None

    @property
    def streamed(self) -> bool:
        """Whether ``x`` is a dataset read lazily rather than tensors."""
        return not isinstance(self.x, (Tensor, dict))

    def __len__(self) -> int:
        return len(self.x) if self.streamed else batch.rows(self.x)

    def to(self, device: torch.device | str) -> Split:
        """A copy on ``device`` (a streamed split's dataset stays where it is; its labels move)."""
        x = self.x if self.streamed else batch.to(self.x, device)
        return Split(x, None if self.y is None else self.y.to(device))


@dataclass
class Data:
    """What a data plugin's factory returns.

    Contract: ``train``, ``val`` and ``test`` are labelled; ``transfer`` (optional) is unlabeled and only ever
    seen through the teacher's outputs. All splits have inputs of the same form (one tensor, or dicts with the same
    names) and per-example shapes and dtypes (float32 features, int64 ids, bool masks or uint8 bytes); labels are
    int64 in ``[0, num_classes)``. The same params and seed give the same tensors. ``tasks`` (optional) partitions
    the classes for continual-learning runs, e.g. ``[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]``. ``metadata`` is what model
    factories should not have to be told again (``vocab_size``, ``pad_id``, ``tokenizer``, ...): it reaches them
    as the keyword argument ``metadata``.
    """

    train: Split
    val: Split
    test: Split
    num_classes: int
    transfer: Split | None = None
    class_names: list[str] | None = None
    tasks: list[list[int]] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example's input (of the first named input, for dict inputs)."""
        if not self.train.streamed:
            return next(iter(batch.shapes(self.train.x).values()))
        example = self.train.x[0]
        return tuple((example if isinstance(example, Tensor) else next(iter(example.values()))).shape)

    @property
    def streamed(self) -> bool:
        """Whether any split is streamed (read lazily through a DataLoader)."""
        return any(s.streamed for s in self.splits().values())

    def splits(self) -> dict[str, Split]:
        out = {"train": self.train, "val": self.val, "test": self.test}
        if self.transfer is not None:
            out["transfer"] = self.transfer
        return out


@dataclass
class LossInputs:
    """What the engine passes to ``Loss.forward`` for one batch.

    ``labels`` holds :data:`UNLABELED` (-1) for rows without a label (transfer rows); ``teacher_logits`` is ``None``
    when the loss declares ``uses_teacher = False``. Feature dicts hold the outputs of the modules named in the
    loss's ``student_layers`` / ``teacher_layers``, by the same dotted names. ``index`` holds each row's position in
    the training rows (int64; train rows first, then transfer rows; stable across epochs), for losses that keep
    per-example state such as a memory bank; ``None`` where the caller has no such positions.
    """

    x: Inputs
    labels: Tensor
    student_logits: Tensor
    teacher_logits: Tensor | None = None
    student_features: dict[str, Tensor] = field(default_factory=dict)
    teacher_features: dict[str, Tensor] = field(default_factory=dict)
    epoch: int = 1
    epochs: int = 1
    #: int64 position of each row in the run's training rows (train rows first, then transfer rows), the same
    #: for an example in every epoch: for losses that keep per-example state (a memory bank); ``None`` outside fit
    index: Tensor | None = None
    #: float32 ``(N, num_classes)`` target distributions of the labelled rows when ``data.augment`` mixes examples
    #: (mixup, cutmix), else ``None``; losses that read labels pass it to ``masked_cross_entropy(soft_labels=...)``
    soft_labels: Tensor | None = None

    @property
    def labeled(self) -> Tensor:
        """Boolean mask of the rows that have a label."""
        return self.labels != UNLABELED


@dataclass
class LossOutput:
    """Named loss terms (scalars, e.g. ``{"ce": ..., "kd": ...}``) and the ``total`` that is back-propagated."""

    total: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class LossSetup:
    """What :meth:`Loss.setup` receives, once, before training: the models, shapes, device and a model builder."""

    student: nn.Module
    teacher: nn.Module | None
    input_shape: tuple[int, ...]
    num_classes: int
    device: torch.device
    #: ``build_model(kind, name, params)`` builds a registered teacher/student architecture (for online peers).
    build_model: Callable[[str, str, dict[str, Any]], nn.Module]
    student_config: dict[str, Any] = field(default_factory=dict)
    #: one example batch of training inputs, to infer adapter shapes by a forward pass
    example_x: Inputs | None = None
    #: ``build_teacher(spec)`` gives another frozen teacher in eval mode, for multi-teacher losses: ``spec`` is a
    #: ``teacher:`` section (``{name, params, checkpoint | mlflow_uri | training}``); it is loaded, or trained and
    #: tracked once and reused, exactly as the configured teacher is.
    build_teacher: Callable[[dict[str, Any]], nn.Module] | None = None
    #: the number of training rows (train + transfer), the range of :attr:`LossInputs.index`
    num_examples: int = 0


class Loss(nn.Module):
    """Base class of distillation losses. Subclasses implement :meth:`forward`.

    Class attributes tell the engine what the loss needs:

    * ``uses_teacher`` — the loss reads ``teacher_logits``/``teacher_features`` (``False`` for ``ce``).
    * ``live_teacher`` — teacher outputs must be computed every step (online methods); otherwise they are computed
      once over the training data and cached (under random ``data.augment``: live or replayed views, as
      ``teacher.mode`` says).
    * ``student_layers`` / ``teacher_layers`` — dotted module paths whose outputs are captured with forward hooks.
      Set them on the instance (from params) in ``__init__``.
    * ``uses_soft_labels`` — the loss reads ``LossInputs.soft_labels`` where it reads labels, so it may train under
      mixup/cutmix (a loss that does not would learn the unmixed labels, so kdlab refuses that combination).
    * ``stackable`` — trials that differ only in this loss's hyperparameters (and the optimizer's, and the seeds)
      may be trained together as one batched model (:mod:`kdlab.stacking`), ``forward`` then runs under
      ``torch.func.vmap`` with each member's tensors. Declare it only when (1) every hyperparameter that may differ
      between trials is a tensor buffer (``register_buffer``; float64 keeps a Python float's value), not a Python
      number, (2) ``forward`` has no Python control flow on tensor values (no ``if t > 0``, ``.item()``,
      ``float(t)``, boolean-mask indexing; use ``torch.where``, ``gather``, ``clamp``) and (3) it uses
      ``inputs.epoch`` / ``inputs.epochs`` only in arithmetic (a stack passes them as tensors). Anything else on the
      instance (layer names, extra teachers) is taken from the stack's first member.

    Parameters of the loss (adapters, peer networks) are trained with the student.
    """

    uses_teacher: ClassVar[bool] = True
    live_teacher: ClassVar[bool] = False
    uses_soft_labels: ClassVar[bool] = False
    stackable: ClassVar[bool] = False
    student_layers: tuple[str, ...] = ()
    teacher_layers: tuple[str, ...] = ()

    def setup(self, ctx: LossSetup) -> None:
        """Called once before training; create adapters or peers here. Default: nothing."""

    def forward(self, inputs: LossInputs) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class RunInfo:
    """Passed to the run lifecycle hooks: one training run (a teacher, a student, a study's baseline or trial, an
    assistant stage, a continual-learning run)."""

    role: str
    config: RunConfig
    device: str
    run_id: str | None = None
    trial_number: int | None = None
    #: the run's name (its MLflow run name, e.g. ``trial-3``, ``teacher-cnn1d-1a2b3c4d``)
    name: str = ""
    #: the number of epochs the run will train (all tasks of a continual run together)
    epochs: int = 0
