"""Training a stack: one forward, one backward and one update per batch for every member, epochs, members
leaving and joining between them."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Hashable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import vmap

from kdlab.capture import FeatureCapture
from kdlab.errors import KdlabError
from kdlab.stacking.members import (
    EpochCallback,
    EpochReport,
    Member,
    MemberResult,
    ResultCallback,
    _check_members,
    _signature,
)
from kdlab.stacking.optim import Schedule, StackedOptimizer
from kdlab.stacking.state import StackControl, _Slot, _Stacked
from kdlab.training import TrainSet
from kdlab.types import LossInputs, Split

# -- the loop -------------------------------------------------------------------------------------------------------


class _Stack:
    """The stacked models, losses and optimizer of the live members, and one epoch of training them."""

    def __init__(self, members: list[Member], train: TrainSet, val: Split, *, batch_size: int,
                 device: torch.device, precision: str, eval_batch_size: int, kernel: str):
        self.train, self.val = train, val
        self.batch_size, self.device = batch_size, device
        self.eval_batch_size = eval_batch_size
        self.n = len(train)
        self.steps_per_epoch = (self.n + batch_size - 1) // batch_size
        self.optimizer_name = members[0].optimizer.name
        self.bf16 = precision == "bf16"
        self.autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if self.bf16
                         else contextlib.nullcontext())
        self.kernel_choice = kernel
        self.slots: list[_Slot] = []
        self._signature = (_signature(members[0].model), _signature(members[0].loss), type(members[0].loss))
        self._build([], members)

    # state

    def _new_slot(self, m: Member) -> _Slot:
        if (_signature(m.model), _signature(m.loss), type(m.loss)) != self._signature:
            raise KdlabError(f"member {m.key!r} differs in structure from the stack's first member (model or loss "
                             "modules, parameter names, shapes or dtypes): only scalars may differ")
        m.model.to(self.device)
        m.loss.to(self.device)
        return _Slot(m, Schedule(m.optimizer, m.epochs, self.steps_per_epoch, m.betas),
                     torch.Generator().manual_seed(m.seed))

    def _build(self, keep: list[int], new: list[Member]) -> None:
        """Keep the slots ``keep`` (indices) and add ``new`` members: rows of every stacked tensor are selected and
        appended, the optimizer state of kept members carried over."""
        _check_members(new, self.optimizer_name)
        new_slots = [self._new_slot(m) for m in new]
        if not hasattr(self, "models"):
            self.models = _Stacked([m.model for m in new])
            self.losses = _Stacked([m.loss for m in new])
            self.slots = new_slots
            self.opt = StackedOptimizer(self.optimizer_name, self._trainable(),
                                        weight_decay=[m.optimizer.weight_decay for m in new],
                                        betas=[m.betas for m in new])
        else:
            self.models.select(keep, [m.model for m in new])
            self.losses.select(keep, [m.loss for m in new])
            self.slots = [self.slots[i] for i in keep] + new_slots
            if self.slots:
                self.opt.select(self._trainable(), keep, [(m.optimizer.weight_decay, m.betas) for m in new])
        if self.slots:
            # run the stack through a module still in it (a departed member's module belongs to its result)
            self.models.set_base(self.slots[0].member.model)
            self.losses.set_base(self.slots[0].member.loss)
            self._compile()

    def _trainable(self) -> list[Tensor]:
        return self.models.trainable() + self.losses.trainable()

    def _compile(self) -> None:
        """The batched step function for the current members."""
        from kdlab.stacking.mlp import StackedMLP

        loss0 = self.slots[0].member.loss
        self.close()
        self.s_capture = (FeatureCapture(self.models.base, loss0.student_layers, key="loss.params",
                                         owner="the student") if loss0.student_layers else None)
        self.mlp = None
        if self.kernel_choice != "vmap" and not loss0.student_layers and not self.bf16:
            if not hasattr(self, "_mlp_structure"):  # the same for every member: traced once per stack
                self._mlp_structure = StackedMLP.structure(self.models.base)
            if self._mlp_structure is not None:
                self.mlp = StackedMLP.match(self.models.base, self.models.params, self.models.buffers,
                                            self._mlp_structure)
            if self.mlp is None and self.kernel_choice == "mlp":
                raise KdlabError("kernel='mlp': the members' model is not a plain MLP (Linear and activation layers)")
        if self.mlp is not None:
            for name, t in self.models.params.items():  # the kernel writes the gradients there, every step
                t.grad = self.mlp.grads[name]
            self.step_leaves = self.losses.trainable()
        else:
            self.step_leaves = self._trainable()

    def close(self) -> None:
        if getattr(self, "s_capture", None):
            self.s_capture.close()

    # one epoch

    def train_epoch(self) -> list[EpochReport]:
        """One epoch of every member, then the one host read of the epoch: each member's metrics, its best epoch
        and kept weights, and its status (``failed`` on a non-finite training loss, ``complete`` after its last
        epoch). Returns the reports of the members that did not fail."""
        t0 = time.perf_counter()
        values = self.epoch()
        table = torch.stack([v.float() for v in values], 1).tolist()  # (K, 1 + terms + 2)
        share = (time.perf_counter() - t0) / len(self.slots)
        reports = []
        for k, (slot, row) in enumerate(zip(self.slots, table)):
            slot.time_s += share
            train_loss = row[0] / self.n
            if not math.isfinite(train_loss):  # fit raises NonFiniteLoss with this message
                slot.status = "failed"
                slot.reason = f"the training loss became {train_loss} in epoch {slot.epoch}"
                continue
            metrics = {"train_loss": train_loss}
            metrics.update({f"train_{name}": v / self.n for name, v in zip(self._term_names, row[1:-2])})
            metrics["val_accuracy"], metrics["val_loss"] = row[-2], row[-1]
            metrics["lr"] = slot.schedule.lr_after[slot.epoch]
            metrics["epoch_time_s"] = share
            slot.history.append(metrics)
            last = slot.epoch >= slot.member.epochs
            if metrics["val_accuracy"] > slot.best_acc:
                slot.best_acc, slot.best_epoch = metrics["val_accuracy"], slot.epoch
                if slot.member.keep_best and not last:
                    slot.best_state = {n: t.detach().clone() for n, t in self.models.member_state(k).items()}
                elif slot.member.keep_best:
                    slot.best_state = None  # the final weights are the best
            if last:
                slot.status = "complete"
            reports.append(EpochReport(slot.member.key, slot.epoch, metrics, last))
        return reports

    def leave(self, prune: dict[Hashable, str]) -> tuple[list[MemberResult], list[int]]:
        """The results of the members that leave now (complete, failed, or pruned: ``prune`` maps their keys to a
        reason), and the indices of those that stay."""
        for slot in self.slots:
            if slot.member.key in prune and slot.status is None:
                slot.status, slot.reason = "pruned", prune[slot.member.key]
        finished = [_finish(self, k) for k, s in enumerate(self.slots) if s.status is not None]
        return finished, [k for k, s in enumerate(self.slots) if s.status is None]

    def epoch(self) -> list[Tensor]:
        """Train every member for one epoch (each its own next epoch); returns the per-member metric tensors (one
        host read for all of them happens in the caller)."""
        slots, B, n = self.slots, self.batch_size, self.n
        for s in slots:
            s.epoch += 1
        dev = self.device
        epoch_t = torch.tensor([s.epoch for s in slots], device=dev)
        epochs_t = torch.tensor([s.member.epochs for s in slots], device=dev)
        # every member draws its permutation from its own generator, as fit does; members with the same seed and
        # epoch share it (and then the whole batch: the first layer becomes one matmul for all members)
        perms: dict[tuple[int, int], Tensor] = {}
        for s in slots:
            perm = torch.randperm(n, generator=s.gen)
            perms.setdefault((s.member.seed, s.epoch), perm)
        shared = len(perms) == 1
        tr = self.train
        tl = tr.teacher_logits
        if shared:
            perm = next(iter(perms.values())).to(dev)
            xs, ys = tr.x[perm], tr.y[perm]
            ts = tl[perm] if tl is not None else None
            tf = {k: v[perm] for k, v in tr.teacher_features.items()}
        else:
            index = torch.stack([perms[(s.member.seed, s.epoch)] for s in slots]).to(dev)  # (K, n)
        self.models.base.train()
        self.losses.base.train()
        totals: list[Tensor] = []
        terms: dict[str, list[Tensor]] = {}
        leaves = self.step_leaves  # gradients autograd sets (the MLP kernel writes its own in place)
        forward = self._forward_fn(shared)
        # (lr, momentum) of every member: one list for the epoch unless a schedule changes them every step
        hypers = None if any(s.schedule.per_step for s in slots) else [s.schedule.at(s.epoch, 0) for s in slots]
        for step, i in enumerate(range(0, n, B)):
            if shared:
                xb, yb = xs[i: i + B], ys[i: i + B]
                tb = ts[i: i + B] if ts is not None else None
                tfb = {k: v[i: i + B] for k, v in tf.items()}
            else:
                rows = index[:, i: i + B]  # (K, b): each member's rows, gathered per step (no K copies of the set)
                xb, yb = tr.x[rows], tr.y[rows]
                tb = tl[rows] if tl is not None else None
                tfb = {k: v[rows] for k, v in tr.teacher_features.items()}
            with self.autocast:
                total, step_terms = forward(epoch_t, epochs_t, xb, yb, tb, tfb)
            for p in leaves:
                p.grad = None
            total.sum().backward()
            if self.mlp is not None:
                self.mlp.backward(self._logits.grad)
            self.opt.step(hypers or [s.schedule.at(s.epoch, step) for s in slots])
            totals.append(total.detach())
            for name, t in step_terms.items():
                terms.setdefault(name, []).append(t.detach())
        starts = range(0, n, B)
        weights = torch.tensor([min(B, n - i) for i in starts], dtype=torch.float32, device=dev)
        sums = [weights @ torch.stack(totals).float()]  # (K,): sum over steps of batch mean * rows
        sums += [weights @ torch.stack(v).float() for v in terms.values()]
        self._term_names = list(terms)
        acc, vloss = self._validate()
        return [*sums, acc, vloss]

    def _forward_fn(self, shared: bool):
        """``f(epoch, epochs, x, y, t, tfeat) -> (totals (K,), {term: (K,)})`` for the current members."""
        models, losses, capture = self.models, self.losses, self.s_capture
        K, d = len(self.slots), None if shared else 0
        names: list[str] = []  # the loss's term names, in the order of the flat outputs

        def loss_of(lt, logits, epoch, epochs, x, y, t, tfeat, sfeat):
            out = losses.call(lt, LossInputs(x=x, labels=y, student_logits=logits, teacher_logits=t,
                                             student_features=sfeat, teacher_features=tfeat, epoch=epoch,
                                             epochs=epochs))
            if not names:
                names.extend(out.terms)
            return (out.total, *[out.terms[n] for n in names])

        def call(fn, first: list, first_dims: list, x, y, t, tfeat):
            """``fn(*first, x, y, t, tfeat, lt)`` for every member, through :func:`_batched` with flat arguments."""
            lt = losses.tensors()
            fk = list(tfeat)
            n0, nf = len(first), len(fk)
            args = [*first, x, y, t, *tfeat.values(), *lt]
            dims = [*first_dims, d, d, None if t is None else d, *[d] * nf, *[0] * len(lt)]

            def flat(*a):
                return fn(*a[:n0], a[n0], a[n0 + 1], a[n0 + 2], dict(zip(fk, a[n0 + 3: n0 + 3 + nf])),
                          list(a[n0 + 3 + nf:]))

            outs = _batched(flat, K, args, dims)
            return outs[0], dict(zip(names, outs[1:]))

        if self.mlp is not None:
            mlp = self.mlp

            def loss_only(epoch, epochs, logits, x, y, t, tfeat, lt):
                return loss_of(lt, logits, epoch, epochs, x, y, t, tfeat, {})

            def run(epoch, epochs, x, y, t, tfeat):
                # the kernel's logits come transposed (K, C, B); the loss gets them contiguous (a softmax over a
                # strided dim is several times slower) as a leaf whose gradient the kernel's backward starts from
                self._logits = mlp.forward(x, shared).transpose(1, 2).contiguous().requires_grad_()
                return call(loss_only, [epoch, epochs, self._logits], [0, 0, 0], x, y, t, tfeat)

            return run

        n_m = len(models.tensors())

        def member(epoch, epochs, *rest):
            mt, (x, y, t, tfeat, lt) = list(rest[:n_m]), rest[n_m:]
            logits = models.call(mt, x)
            sfeat = capture.take() if capture else {}
            return loss_of(lt, logits.float(), epoch, epochs, x, y, t, tfeat, sfeat)

        def run(epoch, epochs, x, y, t, tfeat):
            return call(member, [epoch, epochs, *models.tensors()], [0, 0, *[0] * n_m], x, y, t, tfeat)

        return run

    @torch.inference_mode()
    def _validate(self) -> tuple[Tensor, Tensor]:
        """Per-member validation accuracy and cross-entropy ``(K,)``, in eval mode, in chunks (as ``predict``)."""
        models = self.models
        base = models.base
        was = base.training
        base.eval()
        try:
            outs = []
            for i in range(0, len(self.val), self.eval_batch_size):
                xb = self.val.x[i: i + self.eval_batch_size]
                if self.mlp is not None:
                    outs.append(self.mlp.forward(xb, True, train=False).transpose(1, 2).float())
                else:
                    mt = models.tensors()
                    outs.append(_batched(lambda *t, xb=xb: (models.call(list(t), xb),), len(self.slots), mt,
                                         [0] * len(mt))[0].float())
                if self.s_capture:
                    self.s_capture.take()
        finally:
            base.train(was)
        logits = torch.cat(outs, 1)  # (K, N, C)
        y = self.val.y
        acc = (logits.argmax(2) == y).float().mean(1)
        K, N, C = logits.shape
        vloss = F.cross_entropy(logits.reshape(K * N, C), y.repeat(K), reduction="none").view(K, N).mean(1)
        return acc, vloss


def _batched(fn: Callable[..., tuple], k: int, args: list, in_dims: list) -> list[Tensor]:
    """``torch.func.vmap(fn, in_dims, randomness="different")(*args)`` for flat arguments and a flat tuple of tensor
    outputs (stacked along dim 0), without vmap's pytree handling of arguments and outputs: that costs ~0.5 ms a
    call in Python, every step, as much as a K=16 MLP's whole forward. Falls back to ``vmap`` where torch's
    functorch internals differ."""
    if _add_batch_dim is None:  # pragma: no cover - other torch versions
        return list(vmap(fn, in_dims=tuple(in_dims), randomness="different")(*args))
    if not _vmap_ready:
        # vmap registers its Python batching rules (nll_loss, ...) on its first call: without them those ops run
        # once per member
        vmap(torch.neg)(torch.zeros(1))
        _vmap_ready.append(True)
    with _vmap_nesting(k, "different") as level:
        out = fn(*[a if dim is None else _add_batch_dim(a, dim, level) for a, dim in zip(args, in_dims)])
        return [_remove_batch_dim(o, level, k, 0) for o in out]


try:  # the pieces of torch.func.vmap (torch >= 2.1), used by _batched
    from torch._C._functorch import _add_batch_dim, _remove_batch_dim
    from torch._functorch.vmap import vmap_increment_nesting as _vmap_nesting
except ImportError:  # pragma: no cover
    _add_batch_dim = _remove_batch_dim = _vmap_nesting = None
_vmap_ready: list[bool] = []


def fit_stacked(
    members: Sequence[Member],
    train: TrainSet,
    val: Split,
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    eval_batch_size: int = 4096,
    on_epoch: EpochCallback | None = None,
    on_result: ResultCallback | None = None,
    capacity: int | None = None,
    kernel: Literal["auto", "mlp", "vmap"] = "auto",
) -> list[MemberResult]:
    """Train ``members`` together, each as :func:`kdlab.training.fit` would train it alone; return their results
    in the order they left the stack.

    ``train`` (rows, labels with -1 for unlabeled rows, the cached teacher logits and features) and ``val`` are shared
    by every member. After each epoch, ``on_epoch(control, reports)`` gets one :class:`EpochReport` per member that
    trained in it (a member whose training loss became NaN or infinite is not reported: it fails alone, with a
    reason, like ``fit``'s :class:`~kdlab.errors.NonFiniteLoss`); it may :meth:`StackControl.prune` members and
    :meth:`StackControl.add` new ones (up to ``capacity``). Then every member that left (complete, pruned, failed)
    goes to ``on_result(control, result)``, which may add members too. Training ends when the stack is empty.

    ``kernel``: ``mlp`` runs a plain MLP's layers as batched matmuls (:mod:`kdlab.stacking.mlp`), ``vmap`` runs any
    model through ``torch.func.vmap``; ``auto`` takes ``mlp`` where the model is one. One host read per epoch, none
    per step.
    """
    device = torch.device(device)
    members = list(members)
    if not members:
        return []
    _check_members(members, members[0].optimizer.name)
    if capacity is not None and len(members) > capacity:
        raise KdlabError(f"{len(members)} members for a stack of capacity {capacity}")
    keys = [m.key for m in members]
    if len(set(keys)) != len(keys):
        raise KdlabError(f"member keys must be unique, got {keys}")
    stack = _Stack(members, train, val, batch_size=batch_size, device=device, precision=precision,
                   eval_batch_size=eval_batch_size, kernel=kernel)
    control = StackControl(capacity)
    results: list[MemberResult] = []
    try:
        while stack.slots:
            reports = stack.train_epoch()
            control._keys = [s.member.key for s in stack.slots if s.status != "failed"]
            control._prune, control._add = {}, []
            if on_epoch is not None and reports:
                on_epoch(control, reports)
            finished, keep = stack.leave(control._prune)
            control._keys = [stack.slots[k].member.key for k in keep]  # adds of on_epoch stay in control._add
            for result in finished:
                results.append(result)
                if on_result is not None:
                    on_result(control, result)
            if finished or control._add:
                stack._build(keep, control._add)
                control._add = []
    finally:
        stack.close()
    return results


def _finish(stack: _Stack, k: int) -> MemberResult:
    """Member ``k``'s result: its rows written into its own modules, then the kept (best) weights loaded."""
    slot = stack.slots[k]
    m = slot.member
    stack.models.write_back(k, m.model)
    stack.losses.write_back(k, m.loss)
    if slot.status == "complete" and m.keep_best and slot.best_state is not None:
        m.model.load_state_dict(slot.best_state)
    m.model.eval()
    return MemberResult(m.key, slot.status, m.model, m.loss, slot.history, slot.best_epoch, slot.best_acc,
                        slot.time_s, slot.reason)

