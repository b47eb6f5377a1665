"""What a stack is made of: its members (one trial each), what the callbacks get, what a member leaves with, and
which losses and models may stack."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Hashable, Literal, Sequence

from torch import nn

from kdlab.config import OptimizerConfig
from kdlab.errors import KdlabError
from kdlab.registry import Component
from kdlab.stacking.optim import ADAM_BETAS
from kdlab.training import FitResult
from kdlab.types import Loss

if TYPE_CHECKING:
    from kdlab.stacking.state import StackControl  # noqa: F401 - named in the callback types

Status = Literal["complete", "pruned", "failed"]


@dataclass
class Member:
    """One trial of a stack.

    ``model`` holds the member's initial weights (build it after seeding with the member's init seed, as the engine
    does: :meth:`from_factory`); ``loss`` is built from the member's loss params (its ``setup`` already called) and
    must be :func:`stackable <can_stack>`. ``optimizer`` gives the member's lr, weight_decay, momentum and schedule;
    its ``name`` must be the stack's. ``seed`` is the lone trial's ``training.seed``: it draws the batch order.
    """

    key: Hashable
    model: nn.Module
    loss: Loss
    optimizer: OptimizerConfig
    epochs: int
    seed: int = 0
    keep_best: bool = True
    betas: tuple[float, float] = ADAM_BETAS

    @classmethod
    def from_factory(cls, key: Hashable, factory: Callable[[], nn.Module], init_seed: int, **kwargs: Any) -> Member:
        """A member whose model is ``factory()`` built right after :func:`kdlab.training.seed_everything`
        ``(init_seed)``, the weights a lone run with that seed starts from."""
        from kdlab.training import seed_everything

        seed_everything(init_seed)
        return cls(key=key, model=factory(), **kwargs)


@dataclass
class EpochReport:
    """What the epoch callback receives for one member: its own epoch number (from 1), the metrics ``fit`` gives
    its callbacks (``train_loss``, ``train_<term>``, ``val_accuracy``, ``val_loss``, ``lr``, ``epoch_time_s``) and
    whether this was the member's last epoch."""

    key: Hashable
    epoch: int
    metrics: dict[str, float]
    last: bool


@dataclass
class MemberResult:
    """A member that left the stack: ``complete`` (all its epochs), ``pruned`` (by the callback) or ``failed`` (its
    training loss became NaN or infinite; ``reason`` says so; the others went on).

    ``model`` is the member's own module holding the kept weights (the best epoch's when ``keep_best``, as ``fit``
    leaves them; a pruned or failed member's last weights), in eval mode; ``loss`` its loss module. ``train_time_s``
    is the member's share of the stack's time: each epoch's wall time divided by the members that trained in it.
    """

    key: Hashable
    status: Status
    model: nn.Module
    loss: Loss
    history: list[dict[str, float]]
    best_epoch: int
    best_val_accuracy: float
    train_time_s: float
    reason: str | None = None

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    def fit_result(self) -> FitResult:
        """The :class:`~kdlab.training.FitResult` a lone ``fit`` would have returned."""
        return FitResult(self.epochs_run, self.best_epoch, self.best_val_accuracy, self.history, self.train_time_s)


EpochCallback = Callable[["StackControl", list[EpochReport]], None]
ResultCallback = Callable[["StackControl", MemberResult], None]


# -- what stacks ----------------------------------------------------------------------------------------------------


def can_stack(loss: type[Loss] | Loss, component: Component | None = None) -> tuple[bool, str]:
    """Whether trials of ``loss`` (a class or an instance) with the student ``component`` can be stacked, and if
    not, why. A loss declares it with ``stackable = True`` (:class:`kdlab.Loss`), a model component with
    ``register(name, factory, params, stackable=True)``; a live teacher (computed every step) does not stack."""
    cls = loss if isinstance(loss, type) else type(loss)
    if not getattr(cls, "stackable", False):
        return False, f"loss {cls.__name__} does not declare stackable = True"
    if getattr(cls, "live_teacher", False):
        return False, f"loss {cls.__name__} needs a live teacher (computed every step): stacks use cached outputs"
    if component is not None and not component.extra.get("stackable", False):
        return False, (f"{component.kind} {component.name!r} from {component.origin} does not declare "
                       "stackable=True when it registers")
    return True, ""


def _check_members(members: Sequence[Member], optimizer_name: str | None) -> None:
    for m in members:
        ok, why = can_stack(m.loss)
        if not ok:
            raise KdlabError(f"member {m.key!r} cannot be stacked: {why}")
        if optimizer_name is not None and m.optimizer.name != optimizer_name:
            raise KdlabError(f"member {m.key!r} uses optimizer {m.optimizer.name!r}; this stack uses "
                             f"{optimizer_name!r} (the optimizer kind is shared by a stack)")
        if m.epochs <= 0:
            raise KdlabError(f"member {m.key!r}: epochs must be > 0, got {m.epochs}")


def _signature(module: nn.Module) -> tuple:
    """What members must share: the module classes, tensor names, shapes and dtypes (values may differ)."""
    return (tuple(type(m).__name__ for m in module.modules()),
            tuple((n, tuple(t.shape), t.dtype, t.requires_grad) for n, t in module.named_parameters()),
            tuple((n, tuple(t.shape), t.dtype) for n, t in module.named_buffers()))


