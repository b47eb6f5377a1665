"""The median rule across a stack's members: each member of a stack is also measured against its peers.

Optuna's median pruner compares a trial with *completed* trials only. A stack's members start together, so none of
them could be pruned before the first ones complete, and a stacked study trained every member to its last epoch where
a study of lone trials pruned its poor ones half-way (``benchmarks/results/study_stacking.md``). The members of one
stack saw the same batches for the same number of epochs: at an epoch boundary they are the fairest comparison there
is. So at every epoch past the pruner's warm-up, a member whose best value so far is worse than the median of

* the values at that epoch of the study's completed trials (what the median pruner compares with), and
* the values at that epoch of its stack's other members (running, or pruned earlier: a pruned member counts with its
  last value, so that the stack is not halved again at every epoch as its members leave),

is pruned, once there are ``n_startup_trials`` such values (at least one). It is the median stopping rule of Golovin
et al. (2017, Google Vizier) over the stack's cohort; the study's pruner still runs first, member by member.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable, Hashable, Iterable


class StackPeers:
    """The history of one stack's members and the median rule over them (the module's docstring).

    ``metric`` is the reported value (``val_accuracy`` or ``val_loss``), ``maximize`` its direction."""

    def __init__(self, metric: str, maximize: bool, n_startup_trials: int, n_warmup_steps: int):
        self.metric = metric
        self.maximize = maximize
        self.n_startup = max(1, n_startup_trials)
        self.warmup = n_warmup_steps
        self.history: dict[Hashable, list[float]] = {}  # a member's value at epochs 1, 2, ...
        self.frozen: set[Hashable] = set()  # pruned members: their last value stands for later epochs

    @classmethod
    def of(cls, study_cfg, metric: str | None) -> StackPeers | None:
        """The rule for a study whose pruner is the median pruner and whose single objective is reported each epoch
        (``metric``) and ``pruner.stack_peers`` is on; ``None`` otherwise (Hyperband's rungs already compare running
        trials)."""
        p = study_cfg.pruner
        if metric is None or p.name != "median" or not p.stack_peers:
            return None
        return cls(metric, study_cfg.objectives[0].direction == "maximize", p.n_startup_trials, p.n_warmup_steps)

    def record(self, key: Hashable, metrics: dict[str, float]) -> None:
        """A member's metrics of its next epoch (a stack reports every member once per epoch, in order)."""
        if self.metric in metrics:
            self.history.setdefault(key, []).append(metrics[self.metric])

    def left(self, key: Hashable, pruned: bool) -> None:
        """A member left the stack: a pruned one stays in the cohort with its last value; a complete one is counted
        from the storage from now on, as every completed trial is; a failed one is not counted."""
        if pruned and self.history.get(key):
            self.frozen.add(key)
        else:
            self.history.pop(key, None)

    def _at(self, key: Hashable, epoch: int) -> float | None:
        values = self.history.get(key) or []
        if len(values) >= epoch:
            return values[epoch - 1]
        return values[-1] if key in self.frozen and values else None

    def judge(self, running: Iterable[tuple[Hashable, int]],
              completed: Callable[[], list[Any]]) -> dict[Hashable, str]:
        """The members of ``running`` (``(key, epoch)`` of those still in the stack after this epoch's reports) to
        prune, each with its reason; ``completed()``: the study's completed trials (Optuna ``FrozenTrial``), read
        once and only when some member is past the warm-up."""
        out: dict[Hashable, str] = {}
        done: list[Any] | None = None
        for key, epoch in running:
            mine = self.history.get(key)
            if not mine or epoch < self.warmup or len(mine) < epoch:  # the median pruner's warm-up
                continue
            reference = [v for other in self.history if other != key
                         if (v := self._at(other, epoch)) is not None]
            if done is None:
                done = completed()
            reference += [t.intermediate_values[epoch] for t in done if epoch in t.intermediate_values]
            if len(reference) < self.n_startup:
                continue
            median = statistics.median(reference)
            best = max(mine) if self.maximize else min(mine)
            if (best < median) if self.maximize else (best > median):
                out[key] = (f"{self.metric} {mine[-1]:.4g} (best {best:.4g}) was worse than the median {median:.4g} "
                            f"of its stack's members and the completed trials at this epoch (median pruner, "
                            f"stacked; docs/studies.md)")
        return out
