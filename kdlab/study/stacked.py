"""Stacked trials in a study worker: K trials claimed at once, trained together as one batched model
(:func:`kdlab.stacking.fit_stacked`), each still its own Optuna trial and its own ``trial-<n>`` MLflow run.

A worker with ``study.stack`` > 1 claims trials until its stack is full (each claim counted against the study's budget,
as a lone trial's is), samples each, and prepares each exactly as a lone trial's run would be prepared
(:func:`kdlab.distill.prepare`: the member's seed builds its initial weights, its loss params its loss). Trials whose
configs agree on everything but the scalars a stack may vary (:func:`stack_key`) train together; a trial that cannot
stack, or differs in shape, waits for the stack to drain and starts the next group (a trial that cannot stack at all
runs alone, as an unstacked worker would run it). At every epoch boundary each member reports to its trial through
its run's lifecycle (the trial's pruner may stop it: the member leaves the stack), members that finished are
evaluated, recorded and told to Optuna, and freed slots are refilled with newly claimed trials while the study's
budget lasts.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import torch
from optuna.trial import TrialState

from kdlab import signals
from kdlab.contracts import watch
from kdlab.distill import build_loss, finish, opened, prepare
from kdlab.errors import NonFiniteLoss, Pruned
from kdlab.stacking import Member, can_stack, fit_stacked
from kdlab.study import attrs
from kdlab.study.failures import reason_of
from kdlab.study.peers import StackPeers
from kdlab.study.trials import tell
from kdlab.training import count_params

#: what ``study.stack: auto`` gives a CPU worker: measured on 2 cores (benchmarks/stacking.py), the time per member
#: step of a small MLP falls until about 16 members and flattens after
CPU_AUTO = 16
#: the most members ``auto`` stacks on one GPU
GPU_AUTO = 64
#: ``auto`` on the CPU stacks only students up to this many parameters (larger ones keep a core busy alone)
CPU_AUTO_MAX_PARAMS = 2_000_000


def stack_key(loaded, loss, streamed: bool) -> tuple[str | None, str]:
    """What trials must share to train in one stack (a JSON string), or ``None`` and why this trial cannot stack.

    Members may differ in the loss's float params (tensor buffers of a :attr:`kdlab.Loss.stackable` loss), in the
    whole ``optimizer:`` section but its ``name``, and in ``training.seed`` and ``training.epochs``; everything else
    (the student's params, the loss's other params, the data, the teacher, the batch size, precision) is the key.
    """

    cfg = loaded.config
    ok, why = can_stack(loss, loaded.components["student"])
    if not ok:
        return None, why
    tcfg = cfg.training
    for cond, reason in (
        (cfg.continual is not None or cfg.assistant is not None or cfg.born_again is not None,
         "the run is a chain of runs (continual, assistant or born_again)"),
        (tcfg.compile, "training.compile is on"),
        (tcfg.channels_last, "training.channels_last is on"),
        (tcfg.precision not in ("fp32", "bf16"), f"training.precision is {tcfg.precision} (stacks train fp32 or bf16)"),
        (bool(cfg.data.augment), "data.augment is set (stacks train on fixed rows and cached teacher outputs)"),
        (streamed, "the data is streamed (stacks hold the training rows in memory)"),
    ):
        if cond:
            return None, reason
    d = cfg.resolved_dict()
    for section in ("study", "compare", "tracking"):
        d.pop(section, None)
    d["optimizer"] = {"name": cfg.optimizer.name}
    d["training"] = {k: v for k, v in d["training"].items() if k not in ("seed", "epochs")}
    params = loaded.params["loss"].model_dump(mode="json") if hasattr(loaded.params["loss"], "model_dump") else {}
    d["loss"] = {"name": cfg.loss.name, "params": {k: v for k, v in params.items() if not isinstance(v, float)}}
    return json.dumps(d, sort_keys=True, default=str), ""


def auto_capacity(n_params: int, device: str, batch_size: int, budget: int, workers: int) -> int:
    """``study.stack: auto``: on the CPU 16 members for students up to 2M parameters (1 above); on a GPU as many as
    fit in a quarter of its free memory (parameters, gradients and Adam's two moments: 16 bytes per parameter per
    member, plus the activations' share), at most 64. Never more than this worker's share of the budget."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        per_member = 16 * n_params + 4 * batch_size * 4096  # a generous guess at a small student's activations
        k = max(1, min(GPU_AUTO, int(free // 4 // per_member)))
    else:
        k = CPU_AUTO if n_params <= CPU_AUTO_MAX_PARAMS else 1
    share = max(1, math.ceil(budget / max(1, workers)))
    return max(1, min(k, share))


@dataclass
class Claimed:
    """A trial claimed for this worker, sampled, its config loaded and (when it can stack) its run prepared."""

    trial: Any
    chosen: dict[str, Any]
    loaded: Any = None
    prep: Any = None
    observer: Any = None
    key: str | None = None
    why: str = ""
    told: bool = False  # Optuna has its result
    alive: contextlib.ExitStack | None = None  # the trial's keepalive (heartbeat), closed once it is told


@dataclass
class _Live:
    """A member training in the stack: its claim and its open run."""

    claim: Claimed
    exits: contextlib.ExitStack
    live: Any
    #: why the member was stopped at an epoch boundary (the pruner's :class:`~kdlab.errors.Pruned`, or an error)
    stopped: BaseException | None = None


class StackedTrials:
    """The stacked claim loop of one worker (see the module's docstring).

    ``claim()`` returns a new Optuna trial counted against the budget, or ``None`` when no trial may start now;
    ``keepalive(trial)`` (a context manager: the storage's heartbeat, on RDB storages) is held from a trial's claim to
    its tell, while it waits, trains or is recorded; ``lone(trial)`` runs a trial that cannot stack the way an
    unstacked worker runs it (and tells Optuna)."""

    def __init__(self, objective, study, capacity: int | str, claim: Callable[[], Any], lone: Callable[[Any], None],
                 keepalive: Callable[[Any], Any] | None = None, on_trial: Callable[[Any], None] | None = None):
        self.objective = objective
        self.study = study
        self.capacity_setting = capacity
        self.claim = claim
        self.lone = lone
        self.keepalive = keepalive
        self.on_trial = on_trial
        self.pending: deque[Claimed] = deque()
        self.stacks = 0
        self.ran = 0
        self.exhausted = False

    # -- claiming ------------------------------------------------------------------------------------------------

    def _claim(self) -> Claimed | None:
        """The next claimed trial, sampled and prepared; a trial that fails to sample or prepare fails alone."""
        while True:
            if self.pending:
                return self.pending.popleft()
            if self.exhausted or signals.stopping() is not None:
                return None
            trial = self.claim()
            if trial is None:
                self.exhausted = True
                return None
            alive = contextlib.ExitStack()
            if self.keepalive is not None:
                alive.enter_context(self.keepalive(trial))
            claimed = self._prepare(trial, alive)
            if claimed is not None:
                return claimed

    def _prepare(self, trial, alive: contextlib.ExitStack) -> Claimed | None:
        obj = self.objective
        observer = obj.begin(trial)
        chosen: dict[str, Any] = {}
        try:
            chosen, loaded = obj.configure(trial)
            c = Claimed(trial, chosen, loaded, observer=observer, alive=alive)
            data = obj.session.get_data(loaded)
            loss = build_loss(loaded)
            c.key, c.why = stack_key(loaded, loss, bool(getattr(data, "streamed", False)))
            if c.key is None:
                return c
            c.prep = prepare(loaded, obj.options(trial, observer, stacked=True), obj.session, loss=loss)
            return c
        except KeyboardInterrupt:
            self._tell(Claimed(trial, chosen, observer=observer, alive=alive), "FAIL", {}, attrs.INTERRUPTED)
            raise
        except Exception as exc:  # noqa: BLE001 - this trial fails alone, with its reason
            self._tell(Claimed(trial, chosen, observer=observer, alive=alive), "FAIL", {}, reason_of(exc))
            return None

    def _capacity(self, first: Claimed) -> int:
        if self.capacity_setting != "auto":
            return int(self.capacity_setting)
        spec = self.objective.spec
        return auto_capacity(count_params(first.prep.student), spec.device, first.loaded.config.training.batch_size,
                             spec.target, spec.workers)

    # -- the loop ------------------------------------------------------------------------------------------------

    def run(self) -> int:
        """Run stacks until no trial can be claimed; returns the number of trials run here."""
        while True:
            first = self._claim()
            if first is None:
                return self.ran
            if first.prep is None:  # cannot stack: run it as an unstacked worker would
                first.trial.set_user_attr(attrs.STACK, f"alone: {first.why}")
                try:
                    self.lone(first.trial)
                finally:
                    first.alive.close()
                self._ran_one()
                continue
            self._run_stack(first)

    def _ran_one(self) -> None:
        self.ran += 1
        if self.on_trial is not None:
            self.on_trial(self.study)

    def _fill(self, key: str, want: int) -> list[Claimed]:
        """Up to ``want`` more claims of stack ``key``; a claim of another key is kept for the next stack and stops
        the filling (this stack drains, then that one starts)."""
        out: list[Claimed] = []
        while len(out) < want and not self.pending:
            c = self._claim()
            if c is None:
                break
            if c.key != key or c.prep is None:
                self.pending.append(c)
                break
            out.append(c)
        return out

    def _run_stack(self, first: Claimed) -> None:
        capacity = self._capacity(first)
        self.stacks += 1
        stack_id = f"{self.objective.spec.index}.{self.stacks}"
        held = [first, *self._fill(first.key, capacity - 1)]  # every claim of this stack, entered or not
        members: dict[int, _Live] = {}
        peers = StackPeers.of(self.objective.lstudy.study, first.observer.metric)

        def enter(c: Claimed):
            exits = contextlib.ExitStack()
            live = exits.enter_context(opened(c.prep))
            members[c.trial.number] = _Live(c, exits, live)
            c.trial.set_user_attr(attrs.STACK, stack_id)
            if live.tracked:
                live.tracked.set_tags({"kdlab.stack": stack_id})
            return _member(c)

        def on_epoch(control, reports) -> None:
            for r in reports:
                m = members[r.key]
                try:
                    m.live.epoch(r.epoch, r.metrics)
                except Exception as exc:  # noqa: BLE001 - the pruner (Pruned) or an observer's error: this member only
                    m.stopped = exc
                    control.prune(r.key, str(exc))
            if peers is not None:  # then the members against each other, with every member's value of this epoch
                for r in reports:
                    peers.record(r.key, r.metrics)
                running = {r.key: r.epoch for r in reports if not r.last and members[r.key].stopped is None}
                for key, why in peers.judge(running.items(), self._completed).items():
                    m = members[key]
                    m.stopped = Pruned(f"stopped after epoch {running[key]} of {m.claim.prep.cfg.training.epochs}: "
                                       f"{why}")
                    control.prune(key, str(m.stopped))

        def on_result(control, result) -> None:
            self._conclude(members.pop(result.key), result, peers)
            free = control.free or 0
            if free > 0 and signals.stopping() is None:
                fresh = self._fill(first.key, free)
                held.extend(fresh)
                for c in fresh:
                    control.add(enter(c))

        prep = first.prep
        tcfg = prep.cfg.training
        try:
            entered = [enter(c) for c in held]
            fit_stacked(entered, prep.train, prep.data.val.to(prep.device), batch_size=tcfg.batch_size,
                        device=prep.device, precision=tcfg.precision, eval_batch_size=tcfg.eval_batch_size,
                        on_epoch=on_epoch, on_result=on_result, capacity=capacity)
        except BaseException as exc:
            # the stack itself broke (a signal, or an error no single member owns): every member still in it ends
            # with that reason; a stop signal goes on up, any other error fails these trials and the worker goes on
            interrupted = isinstance(exc, KeyboardInterrupt)
            reason = attrs.INTERRUPTED if interrupted else reason_of(exc)
            for m in members.values():
                with contextlib.suppress(BaseException):
                    m.exits.__exit__(type(exc), exc, exc.__traceback__)
            members.clear()
            for c in held:
                if not c.told:
                    self._tell(c, "FAIL", {}, reason)
            if interrupted:
                raise

    def _completed(self) -> list:
        return self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    def _conclude(self, m: _Live, result, peers: StackPeers | None) -> None:
        """Record a member that left the stack, end its run with the lone run's status, and tell its trial."""
        if peers is not None:
            peers.left(result.key, result.status == "pruned" and isinstance(m.stopped, Pruned))
        c = m.claim
        prep = c.prep
        metrics: dict[str, float] = {}
        if result.status == "pruned":
            exc = m.stopped if m.stopped is not None else Pruned(result.reason or "pruned")
            state = "PRUNED" if isinstance(exc, Pruned) else "FAIL"
            with contextlib.suppress(BaseException):
                m.exits.__exit__(type(exc), exc, exc.__traceback__)
            self._tell(c, state, {}, str(exc) if state == "PRUNED" else reason_of(exc))
            return
        if result.status == "failed":
            exc = NonFiniteLoss(result.reason or "the training loss is not finite")
            with contextlib.suppress(BaseException):
                m.exits.__exit__(type(exc), exc, None)
            self._tell(c, "FAIL", {}, reason_of(exc))
            return
        try:
            with watch(prep.parts, prep.data.num_classes, check_first_call=False):
                metrics = finish(prep, m.live, result.fit_result())
            values = self.objective.values(metrics)
        except Exception as exc:  # noqa: BLE001 - this member fails alone
            with contextlib.suppress(BaseException):
                m.exits.__exit__(type(exc), exc, exc.__traceback__)
            self._tell(c, "FAIL", metrics, reason_of(exc))
            return
        m.exits.__exit__(None, None, None)
        c.trial.set_user_attr(attrs.METRICS, metrics)
        self._tell(c, "COMPLETE", metrics, None, values)

    def _tell(self, c: Claimed, state: str, metrics: dict[str, float], reason: str | None,
              values: list[float] | None = None) -> None:
        trial = c.trial
        if reason is not None:
            trial.set_user_attr(attrs.FAIL, reason)
        kind = TrialState[state]  # COMPLETE, PRUNED or FAIL
        run_id = c.observer.run_id if c.observer is not None else None
        c.told = True
        try:  # recorded while the trial is still running (a finished trial takes no user attrs), as optimize does
            self.objective.conclude(trial, run_id, state, c.chosen, metrics)
        finally:
            try:
                tell(self.study, trial, values if state == "COMPLETE" else None, kind)
            finally:
                if c.alive is not None:
                    c.alive.close()
                self._ran_one()


def _member(c: Claimed):
    """The stacking package's member for a prepared trial: its seeded student and set-up loss, its optimizer, epochs
    and batch-order seed (the lone run's ``training.seed``)."""
    cfg = c.prep.cfg
    return Member(key=c.trial.number, model=c.prep.student, loss=c.prep.loss, optimizer=cfg.optimizer,
                  epochs=cfg.training.epochs, seed=cfg.training.seed, keep_best=cfg.training.keep_best)
