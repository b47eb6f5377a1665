"""The optimizer of a stack of trials: per-member learning-rate schedules and one update over stacked parameters.

A stacked parameter holds every member's copy of one parameter along a leading member axis ``(K, *shape)``.
Members differ in their hyperparameters (lr, weight decay, momentum, betas) and in their step counts (a member added
to a running stack starts at step 0), so the update runs once per member on that member's rows (views, no copies),
through the same fused kernel ``torch.optim.Adam/AdamW/SGD(fused=True)`` runs for a lone trial: a member's update is
the lone update, bit for bit, given the same gradients. Measured on one CPU thread for the 40-100-100-10 MLP at K=16
(``benchmarks/stacking.py``), one fused call per member costs about as much as a single fused call over all K rows
plus 10 µs per member; the same update written as ~10 broadcast tensor ops over a flat ``(K, P)`` buffer with
``(K, 1)`` hyperparameter tensors was 4x slower (each op reads and writes the whole buffer).

Schedules are precomputed per member by running torch's own scheduler (:func:`kdlab.training.build_scheduler`) on
a one-parameter optimizer of the member's config, so a member sees the lone trial's exact learning rates (and, for
``onecycle``, its cycled momentum / beta1) and the step loop reads them from a list: no scheduler call and no host
sync per step.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from kdlab.config import OptimizerConfig
from kdlab.training import build_optimizer, build_scheduler

#: torch's defaults, which the lone ``fit`` uses (OptimizerConfig has no betas or eps)
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass
class Hyper:
    """One member's optimizer hyperparameters at one step."""

    lr: float
    momentum: float  # SGD's momentum, or Adam's beta1


class Schedule:
    """A member's learning rate (and momentum / beta1) at each step of each epoch, and the ``lr`` metric after each
    epoch, exactly as the lone trial's optimizer and scheduler produce them."""

    def __init__(self, cfg: OptimizerConfig, epochs: int, steps_per_epoch: int,
                 betas: tuple[float, float] = ADAM_BETAS):
        p = torch.zeros(1, requires_grad=True)
        opt = build_optimizer([p], cfg)
        group = opt.param_groups[0]
        if cfg.name != "sgd":
            group["betas"] = tuple(betas)
        sched = build_scheduler(opt, cfg, epochs, steps_per_epoch)
        self.per_step = cfg.scheduler == "onecycle"
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch

        def now() -> tuple[float, float]:
            mom = group["momentum"] if cfg.name == "sgd" else group["betas"][0]
            return float(group["lr"]), float(mom)

        opt.step()  # no gradient: updates nothing; tells the scheduler the optimizer has stepped
        #: per epoch (from 1): the values of each step (onecycle) or one value for the whole epoch
        self._steps: list[list[tuple[float, float]]] = [[]]
        self.lr_after: list[float] = [float("nan")]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(epochs):
                if self.per_step:
                    values = []
                    for _ in range(steps_per_epoch):
                        values.append(now())
                        sched.step()
                else:
                    values = [now()]
                    if sched is not None:
                        sched.step()
                self._steps.append(values)
                self.lr_after.append(float(group["lr"]))

    def at(self, epoch: int, step: int) -> tuple[float, float]:
        """(lr, momentum or beta1) used at ``step`` (from 0) of ``epoch`` (from 1)."""
        values = self._steps[epoch]
        return values[step] if self.per_step else values[0]


class StackedOptimizer:
    """Adam, AdamW or SGD over stacked parameters, one update per member with its own hyperparameters and step.

    ``params`` are the stacked leaves (``(K, *shape)``); state tensors are stacked the same way, so that removing or
    adding members is a row selection (:meth:`select`). ``fused`` uses torch's fused kernels directly (CPU, CUDA); the
    fallback is torch's functional single-tensor implementation, per member.
    """

    def __init__(self, name: str, params: list[Tensor], *, weight_decay: list[float], betas: list[tuple[float, float]],
                 fused: bool | None = None):
        self.name = name
        self.params = params
        k = params[0].shape[0] if params else 0
        self.weight_decay = list(weight_decay)
        self.beta2 = [b[1] for b in betas]
        if name == "sgd":
            self.bufs = [torch.zeros_like(p) for p in params]
            self.first = [True] * k
        else:
            self.exp_avg = [torch.zeros_like(p) for p in params]
            self.exp_avg_sq = [torch.zeros_like(p) for p in params]
            # one float32 step per member and parameter, as torch keeps them (the fused kernel reads the step, the
            # caller increments it; the fallback increments it itself)
            self.steps = torch.zeros(k, len(params), dtype=torch.float32, device=params[0].device if params else None)
        self.fused = _fused_available(params) if fused is None else fused
        self._views()

    def _views(self) -> None:
        """Per-member views of the stacked tensors (rebuilt whenever rows change)."""
        def rows(tensors: list[Tensor]) -> list[list[Tensor]]:
            return [list(r) for r in zip(*[t.unbind(0) for t in tensors])] if tensors else []

        self._p = rows(self.params)
        self._g_src: list[Tensor | None] = []  # the gradient tensors whose per-member views _g_rows holds
        self._g_rows: list[list[Tensor]] = []
        if self.name == "sgd":
            self._buf = rows(self.bufs)
        else:
            self._m, self._v = rows(self.exp_avg), rows(self.exp_avg_sq)
            self._s = [list(r.unbind(0)) for r in self.steps.unbind(0)]

    def select(self, params: list[Tensor], keep: list[int], new: list[tuple[float, tuple[float, float]]]) -> None:
        """The members ``keep`` (row indices, in order) followed by ``len(new)`` fresh ones (weight decay, betas);
        ``params`` are the new stacked leaves with the rows in that order."""
        dev = params[0].device
        idx = torch.tensor(keep, dtype=torch.long, device=dev)
        n_new = len(new)

        def regrow(t: Tensor, p: Tensor) -> Tensor:
            fresh = torch.zeros((n_new, *p.shape[1:]), dtype=t.dtype, device=dev)
            return torch.cat([t.index_select(0, idx), fresh]) if n_new else t.index_select(0, idx)

        self.params = params
        self.weight_decay = [self.weight_decay[i] for i in keep] + [wd for wd, _ in new]
        self.beta2 = [self.beta2[i] for i in keep] + [b[1] for _, b in new]
        if self.name == "sgd":
            self.bufs = [regrow(t, p) for t, p in zip(self.bufs, params)]
            self.first = [self.first[i] for i in keep] + [True] * n_new
        else:
            self.exp_avg = [regrow(t, p) for t, p in zip(self.exp_avg, params)]
            self.exp_avg_sq = [regrow(t, p) for t, p in zip(self.exp_avg_sq, params)]
            self.steps = regrow(self.steps, self.steps)
        self._views()

    @torch.no_grad()
    def step(self, hypers: list[tuple[float, float]]) -> None:
        """One update of every member; ``hypers[k]`` is member k's (lr, momentum or beta1) for this step."""
        grads = [p.grad for p in self.params]
        if len(grads) == len(self._g_src) and all(g is c for g, c in zip(grads, self._g_src)):
            g_rows = self._g_rows  # gradients written in place into the same tensors (the MLP kernel's)
        else:
            g_rows = [list(r) for r in zip(*[g.unbind(0) for g in grads if g is not None])]
            self._g_src, self._g_rows = grads, g_rows
        pick = None
        if any(g is None for g in grads):
            # a parameter outside the graph: torch's optimizers skip it; so do we, for every member alike
            live = [j for j, g in enumerate(grads) if g is not None]
            pick = lambda xs: [xs[j] for j in live]  # noqa: E731
        if self.name == "sgd":
            self._sgd(hypers, g_rows, pick)
        else:
            self._adam(hypers, g_rows, pick)

    def _adam(self, hypers, g_rows, pick) -> None:
        adamw = self.name == "adamw"
        if self.fused:
            self.steps.add_(1)  # every member's step counters in one op (torch increments before the kernel)
            kernel = torch._fused_adamw_ if adamw else torch._fused_adam_
        for k, (lr, beta1) in enumerate(hypers):
            p, m, v, s = self._p[k], self._m[k], self._v[k], self._s[k]
            if pick is not None:
                p, m, v, s = pick(p), pick(m), pick(v), pick(s)
            if self.fused:
                kernel(p, g_rows[k], m, v, [], s, lr=lr, beta1=beta1, beta2=self.beta2[k],
                       weight_decay=self.weight_decay[k], eps=ADAM_EPS, amsgrad=False, maximize=False)
            else:
                torch.optim.adam.adam(p, g_rows[k], m, v, [], s, foreach=False, fused=False, amsgrad=False,
                                      beta1=beta1, beta2=self.beta2[k], lr=lr, weight_decay=self.weight_decay[k],
                                      eps=ADAM_EPS, maximize=False, decoupled_weight_decay=adamw)

    def _sgd(self, hypers, g_rows, pick) -> None:
        for k, (lr, momentum) in enumerate(hypers):
            p, buf = self._p[k], self._buf[k]
            if pick is not None:
                p, buf = pick(p), pick(buf)
            if self.fused:
                torch._fused_sgd_(p, g_rows[k], buf if momentum else [], weight_decay=self.weight_decay[k],
                                  momentum=momentum, lr=lr, dampening=0.0, nesterov=False, maximize=False,
                                  is_first_step=self.first[k] and bool(momentum))
            else:
                # torch's single-tensor SGD: a None buffer on the first step is initialised from the gradient
                bufs: list[Tensor | None] = [None if self.first[k] else b for b in buf]
                torch.optim.sgd.sgd(p, g_rows[k], bufs, foreach=False, fused=False, weight_decay=self.weight_decay[k],
                                    momentum=momentum, lr=lr, dampening=0.0, nesterov=False, maximize=False)
                if momentum:
                    for target, b in zip(buf, bufs):
                        target.copy_(b)
            if momentum:
                self.first[k] = False


def _fused_available(params: list[Tensor]) -> bool:
    """Whether torch has fused optimizer kernels for these tensors (as :func:`kdlab.training.build_optimizer` finds
    out: by asking torch to build one)."""
    if not params or not all(p.is_floating_point() for p in params):
        return False
    try:
        torch.optim.Adam([torch.zeros(1, device=params[0].device, dtype=params[0].dtype, requires_grad=True)],
                         fused=True)
        return True
    except (RuntimeError, ValueError, TypeError):
        return False
