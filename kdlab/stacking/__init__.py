"""Stacked trials: K trials that differ only in scalars, trained together as one batched model.

A *member* is one trial: its own initial weights (its init seed), its own loss module (its temperature, alpha, ...:
tensor buffers of a :attr:`kdlab.Loss.stackable` loss), its own optimizer hyperparameters and learning-rate schedule,
its own batch order (its ``seed``, as :func:`kdlab.training.fit` draws it) and its own number of epochs. The stack
keeps every member's parameters along a leading member axis and runs one forward, one backward and one update per
batch for all of them (``torch.func.vmap`` over the model and the loss called with stacked tensors, or the
batched-matmul kernel of :mod:`kdlab.stacking.mlp` for plain MLPs). The training rows, labels and cached teacher
outputs are shared: never copied per member.

Equivalence: a member trains exactly as ``fit`` trains it alone, up to float rounding (batched matmuls sum in another
order): the same batches in the same order, the same schedule, the same optimizer kernel. ``tests/test_stacking.py``
checks it, also for members pruned, failed or added mid-way. Where randomness enters the step (dropout), a member
draws its own masks, from another stream than a lone run's: equivalent in distribution, not per step.

The study integration calls :func:`fit_stacked` with :class:`Member`\\ s and two callbacks; at each epoch boundary it
can :meth:`StackControl.prune` a member and :meth:`StackControl.add` a new one (which then trains for its own epochs,
with its own epoch counter and batch order, beside members that are further along).
"""

from kdlab.stacking.loop import fit_stacked
from kdlab.stacking.members import EpochReport, Member, MemberResult, can_stack
from kdlab.stacking.state import StackControl

__all__ = ["fit_stacked", "Member", "EpochReport", "MemberResult", "StackControl", "can_stack"]
