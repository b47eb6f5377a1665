"""Every hook kdlab calls. Plugins implement them with ``@kdlab.hookimpl``.

Conventions (the same words in every docstring below):

* **Called** — when kdlab calls the hook.
* **Arguments** — what each argument is. kdlab calls hooks with keyword arguments, so an implementation may accept
  any subset of them, in any order. kdlab only ever *adds* hook arguments, so a plugin written today keeps working.
* **Returns** — what kdlab does with the return value.
* **firstresult** — whether kdlab stops at the first implementation that returns something other than ``None``.

Hook names start with ``kdlab_``; an implementation whose name starts with ``kdlab_`` but matches no hook below, one
that takes an argument its hook does not have, and a function named like a hook but not marked with
``@kdlab.hookimpl`` are errors that name the plugin (which is then skipped). A contribution hook that raises loses
only the components it registered in that call. The reference with examples is ``docs/plugins.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from kdlab.registry import Component
    from kdlab.types import RunInfo

hookspec = pluggy.HookspecMarker("kdlab")

Register = Callable[..., "Component"]

# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


@hookspec
def kdlab_register_data(register: Register) -> None:
    """Contribute data sources.

    **Called** once per process, when kdlab first builds its component registry.

    **Arguments**

    * ``register(name, factory, params=None, description=None)`` — call once per data source. ``factory(params, *,
      seed)`` returns a :class:`kdlab.Data` (train / val / test splits, optionally an unlabeled ``transfer`` split).
      ``params`` is a pydantic model class (its validated instance is passed to the factory); ``description`` is one
      line (defaults to the first line of the factory's docstring).

    **Returns** nothing; the return value is ignored.

    **firstresult**: no — every implementation is called.
    """


# ----------------------------------------------------------------------------------------------------------------
# Teacher
# ----------------------------------------------------------------------------------------------------------------


@hookspec
def kdlab_register_teachers(register: Register) -> None:
    """Contribute teacher architectures.

    **Called** once per process, when kdlab first builds its component registry.

    **Arguments**

    * ``register(name, factory, params=None, description=None)`` — call once per architecture.
      ``factory(params, *, input_shape, num_classes, metadata)`` (given the keywords it takes) returns a
      ``torch.nn.Module`` mapping a batch of the data's inputs (a tensor of shape ``(N, *input_shape)``, or named
      tensors as keyword arguments) to logits of shape ``(N, num_classes)``; ``metadata`` is ``Data.metadata``.

    **Returns** nothing; the return value is ignored.

    **firstresult**: no — every implementation is called.
    """


# ----------------------------------------------------------------------------------------------------------------
# Student
# ----------------------------------------------------------------------------------------------------------------


@hookspec
def kdlab_register_students(register: Register) -> None:
    """Contribute student architectures.

    **Called** once per process, when kdlab first builds its component registry.

    **Arguments**

    * ``register(name, factory, params=None, description=None)`` — as for :func:`kdlab_register_teachers`:
      ``factory(params, *, input_shape, num_classes, metadata)`` returns a ``torch.nn.Module`` producing logits.

    **Returns** nothing; the return value is ignored.

    **firstresult**: no — every implementation is called.
    """


# ----------------------------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------------------------


@hookspec
def kdlab_register_losses(register: Register) -> None:
    """Contribute distillation losses (KD methods).

    **Called** once per process, when kdlab first builds its component registry.

    **Arguments**

    * ``register(name, factory, params=None, description=None)`` — call once per loss. ``factory(params)`` returns a
      :class:`kdlab.Loss` (a ``torch.nn.Module``) whose ``forward(inputs: kdlab.LossInputs)`` returns a
      :class:`kdlab.LossOutput` (named terms and their total). Class attributes of the loss tell the engine what it
      needs: ``uses_teacher``, ``live_teacher``, ``student_layers``, ``teacher_layers``.

    **Returns** nothing; the return value is ignored.

    **firstresult**: no — every implementation is called.
    """


# ----------------------------------------------------------------------------------------------------------------
# Run lifecycle
# ----------------------------------------------------------------------------------------------------------------


@hookspec
def kdlab_run_start(run: RunInfo) -> None:
    """A training run is starting (a teacher being trained, a student, a study's baseline or trial).

    **Called** once per training run, after the models are built and before the first epoch.

    **Arguments**

    * ``run`` — :class:`kdlab.RunInfo`: ``role`` (``"teacher"``, ``"student"``, ``"baseline"``, ``"trial"``),
      the resolved ``config`` (a :class:`kdlab.config.RunConfig`), ``device``, the MLflow ``run_id`` (``None`` when
      tracking is off) and the Optuna ``trial_number`` (``None`` outside a study).

    **Returns** nothing; the return value is ignored.

    **firstresult**: no — every implementation is called.
    """


@hookspec
def kdlab_epoch_end(run: RunInfo, epoch: int, metrics: dict[str, float]) -> None:
    """An epoch has finished and been evaluated on the validation split.

    **Called** once per epoch of every training run, after validation, before the next epoch.

    **Arguments**

    * ``run`` — the :class:`kdlab.RunInfo` given to :func:`kdlab_run_start`.
    * ``epoch`` — the epoch just finished, counting from 1.
    * ``metrics`` — that epoch's metrics by name (``train_loss``, ``train_<term>`` for each loss term,
      ``val_accuracy``, ``val_loss``, ``lr``, ``epoch_time_s``). Plain floats; do not mutate.

    **Returns** nothing; the return value is ignored. Raising stops the run, which ends as failed.

    **firstresult**: no — every implementation is called.
    """


@hookspec
def kdlab_run_end(run: RunInfo, metrics: dict[str, float], status: str) -> None:
    """A training run has ended.

    **Called** once per training run that :func:`kdlab_run_start` announced, also when it failed.

    **Arguments**

    * ``run`` — the :class:`kdlab.RunInfo` given to :func:`kdlab_run_start`.
    * ``metrics`` — the final metrics (for a student: ``test_accuracy``, ``val_accuracy``, ``agreement``, ...);
      empty when the run failed before evaluation.
    * ``status`` — ``"FINISHED"``, ``"FAILED"`` or ``"KILLED"`` (interrupted or pruned).

    **Returns** nothing; the return value is ignored.

    **firstresult**: no — every implementation is called.
    """


@hookspec
def kdlab_trial_end(study: str, trial_number: int, state: str, params: dict[str, Any],
                    metrics: dict[str, float]) -> None:
    """A study trial has ended.

    **Called** once per Optuna trial of ``kdlab study`` (also a pruned or failed one), in the process that ran it,
    after its run has ended and its MLflow run is tagged with the outcome, just before Optuna stores its state.

    **Arguments**

    * ``study`` — the study name.
    * ``trial_number`` — the Optuna trial number.
    * ``state`` — ``"COMPLETE"``, ``"PRUNED"`` or ``"FAIL"``.
    * ``params`` — the sampled params, by dotted config key.
    * ``metrics`` — the trial's final metrics (empty when it failed).

    **Returns** nothing; the return value is ignored.

    **firstresult**: no — every implementation is called.
    """
