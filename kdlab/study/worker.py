"""A study worker: one process per device slot, running trials one at a time on its device.

Workers claim trials against the budget kept in the study's storage (:mod:`kdlab.study.trials`), under the study's
storage lock, so that a study runs exactly ``n_trials`` trials however many workers, processes and machines take
part. Each trial is one run of :func:`kdlab.modes.run` with a :class:`~kdlab.study.pruning.TrialObserver` watching it;
its outcome is told to Optuna, tagged on its MLflow run, and announced with ``kdlab_trial_end``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from kdlab import signals
from kdlab.contracts import is_oom
from kdlab.study import attrs
from kdlab.study.failures import free_cuda, reason_of


@dataclass
class WorkerSpec:
    """Everything a worker process needs; picklable."""

    config_path: str
    overrides: dict[str, Any]
    study_name: str
    storage_url: str
    tracking_uri: str | None
    experiment: str
    parent_run_id: str | None
    device: str
    threads: int
    index: int
    deadline: float | None = None  # time.time() after which no trial starts
    target: int = 0  # the study's n_trials, counted in the storage across every process
    heartbeat_interval: int = 30
    grace_period: int | None = 120
    workers: int = 1  # worker processes of this run of the study (stack: auto shares the budget between them)
    stack: int | str = 1  # study.stack: trials trained together as one batched model (1: one at a time)
    plugin_env: dict[str, str] = field(default_factory=dict)


class Objective:
    """Runs one trial: sample, train as a nested MLflow run, let the observer report each epoch, record."""

    def __init__(self, spec: WorkerSpec, lstudy, session):
        self.spec = spec
        self.lstudy = lstudy
        self.session = session
        self.objectives = lstudy.study.objectives

    def __call__(self, trial) -> float | tuple[float, ...]:
        import optuna

        from kdlab.errors import Pruned
        from kdlab.modes import run

        observer = self.begin(trial)
        state, metrics, chosen = "FAIL", {}, {}
        try:
            chosen, loaded = self.configure(trial)
            metrics = run(loaded, self.options(trial, observer), self.session).metrics
            values = self.values(metrics)
            state = "COMPLETE"
            trial.set_user_attr(attrs.METRICS, metrics)
            return values[0] if len(values) == 1 else tuple(values)
        except Pruned as exc:
            state = "PRUNED"
            trial.set_user_attr(attrs.FAIL, str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        except KeyboardInterrupt:
            trial.set_user_attr(attrs.FAIL, attrs.INTERRUPTED)
            raise
        except BaseException as exc:
            trial.set_user_attr(attrs.FAIL, reason_of(exc))
            if is_oom(exc):
                free_cuda()
            raise
        finally:
            self.conclude(trial, observer.run_id, state, chosen, metrics)

    # the steps of a trial, shared with stacked trials (kdlab.study.stacked)

    def begin(self, trial):
        """Mark the trial with its device and worker; the observer that will watch its run."""
        from kdlab.study.pruning import TrialObserver

        trial.set_user_attr(attrs.DEVICE, self.spec.device)
        trial.set_user_attr(attrs.WORKER, self.spec.index)
        first = self.objectives[0]
        prunable = len(self.objectives) == 1 and first.metric in ("val_accuracy", "val_loss")
        return TrialObserver(trial, first.metric if prunable else None)

    def configure(self, trial):
        """Sample the trial's params; its config with them applied: ``(chosen, loaded)``."""
        from kdlab.config import load_config
        from kdlab.study.config import sample, trial_overrides

        chosen = sample(self.lstudy, trial)
        loaded = load_config(self.lstudy.loaded.source, registry=self.lstudy.loaded.registry,
                             overrides={**self.spec.overrides, **trial_overrides(self.lstudy, chosen)})
        return chosen, loaded

    def options(self, trial, observer, stacked: bool = False):
        """How the trial's run is recorded: a nested ``trial-<n>`` run of the study's parent run."""
        from kdlab.lifecycle import RunOptions

        tags = {"kdlab.study": self.spec.study_name, "kdlab.trial_state": "RUNNING",
                "kdlab.trial_number": str(trial.number)}
        retry_of = trial.user_attrs.get(attrs.RETRY_OF)
        if retry_of is not None:
            tags["kdlab.retry_of"] = str(retry_of)
        if stacked:
            tags["kdlab.stacked"] = "true"
        return RunOptions(role="trial", parent_run_id=self.spec.parent_run_id, run_name=f"trial-{trial.number}",
                          trial_number=trial.number, device=self.spec.device, observers=[observer], log_model=False,
                          tags=tags, params={"trial_number": trial.number})

    def values(self, metrics: dict[str, float]) -> list[float]:
        """The objective values of a finished run (all finite, or the trial fails)."""
        values = [metrics[o.metric] for o in self.objectives]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"objective is not finite: {values}")
        return values

    def conclude(self, trial, run_id: str | None, state: str, chosen: dict[str, Any],
                 metrics: dict[str, float]) -> None:
        """Tag the trial's MLflow run with its outcome and announce it (``kdlab_trial_end``)."""
        from kdlab.plugins import get_plugins

        self._record(trial, run_id, state)
        get_plugins().hook.kdlab_trial_end(study=self.spec.study_name, trial_number=trial.number, state=state,
                                           params=chosen, metrics=metrics)

    def _record(self, trial, run_id: str | None, state: str) -> None:
        """Tag the trial's MLflow run with its outcome (its status was set when the run ended). A trial that failed
        before its run started (sampling, building a model) gets a run of its own with the reason, so that every
        failed trial is in MLflow."""
        tags = {"kdlab.trial_state": state}
        if state != "COMPLETE":
            tags["kdlab.fail_reason"] = trial.user_attrs.get(attrs.FAIL, "")[:5000]
        try:
            tracker = self.session.tracker(self.lstudy.loaded)
            if tracker is None:
                return
            if not run_id:
                if state == "COMPLETE":
                    return
                run = tracker.start(f"trial-{trial.number}", parent_run_id=self.spec.parent_run_id, tags={
                    "kdlab.role": "trial", "kdlab.study": self.spec.study_name,
                    "kdlab.trial_number": str(trial.number), "kdlab.status_reason": tags["kdlab.fail_reason"]})
                run.log_params({"trial_number": trial.number, **trial.params})
                run.set_tags(tags)
                run.end("KILLED" if tags["kdlab.fail_reason"] == attrs.INTERRUPTED else "FAILED")
                trial.set_user_attr(attrs.RUN_ID, run.run_id)
                return
            trial.set_user_attr(attrs.RUN_ID, run_id)
            tracker.run(run_id).set_tags(tags)
        except Exception:  # noqa: BLE001 - tracking trouble must not hide the trial's own outcome
            pass


def open_study(spec: WorkerSpec, lstudy, on_stale=None):
    """The study in its storage (and the storage object), with this worker's sampler and the study's pruner."""
    import optuna

    from kdlab.study.sampling import build_pruner, build_sampler
    from kdlab.study.storage import make_storage

    optuna.logging.set_verbosity(max(optuna.logging.get_verbosity(), optuna.logging.WARNING))
    storage = make_storage(spec.storage_url, heartbeat_interval=spec.heartbeat_interval,
                           grace_period=spec.grace_period, on_stale=on_stale)
    study = optuna.load_study(study_name=spec.study_name, storage=storage,
                              sampler=build_sampler(lstudy.study, spec.index), pruner=build_pruner(lstudy.study))
    return study, storage


def preimport() -> None:
    """Import what every trial needs but the first would otherwise import inside its own time: building an
    optimizer imports torch's compiler stack (about 1.3 s). A no-op once done."""
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def end_stale_run(tracker):
    """``end_run(run_id, reason)`` for :class:`~kdlab.study.trials.StaleTrials`: the MLflow run of a stale trial
    ends ``FAILED`` with the reason."""

    def end(run_id: str, reason: str) -> None:
        info = tracker.run_info(run_id)
        if info is None or info.info.status != "RUNNING":
            return
        run = tracker.run(run_id)
        run.set_tags({"kdlab.trial_state": "FAIL", "kdlab.fail_reason": reason[:5000]})
        run.end("FAILED")

    return end


def run_worker(spec: WorkerSpec, on_trial=None, session=None) -> None:
    """Claim trials against the study's budget in its storage until it is spent or the deadline has passed.

    Each claim is made under the study's storage lock: stale trials are failed (and retried), the budget is
    counted, and the trial is asked for; the lock is released once the trial has recorded its owner. When the budget
    is claimed but other processes' trials still run, the worker waits for them: one that goes stale is retried.

    ``session``: the data and teacher outputs already loaded by this process (in-process or forked workers)."""
    import os

    for k, v in spec.plugin_env.items():
        os.environ[k] = v
    import optuna
    import torch

    torch.set_num_threads(spec.threads)
    # a failed trial's reason is recorded (fail_reason); Optuna's own warning would repeat its traceback
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    from kdlab.config import load_config
    from kdlab.plugins import get_registry
    from kdlab.session import Session
    from kdlab.study.config import LoadedStudy, load_study_config
    from kdlab.study.storage import storage_locks
    from kdlab.study.trials import StaleTrials

    loaded = load_config(spec.config_path, registry=get_registry(), overrides=spec.overrides)
    lstudy = LoadedStudy(loaded, load_study_config(loaded).study, spec.overrides)
    on_stale = StaleTrials()
    study, storage = open_study(spec, lstudy, on_stale)
    session = session or Session()
    if session.locks is None:
        session.locks = storage_locks(spec.storage_url)
    tracker = session.tracker(loaded)
    if tracker is not None:
        on_stale.end_run = end_stale_run(tracker)
    preimport()  # before the first trial, so that its recorded time is the trial's
    objective = Objective(spec, lstudy, session)
    poll = max(0.5, min(5.0, spec.heartbeat_interval / 2))
    if spec.stack != 1:
        # stacks while the budget lasts; the loop below then waits for other processes' trials (and retries a stale
        # one) exactly as an unstacked worker does
        run_stacked(study, storage, spec.storage_url, session.locks, objective, spec, on_stale=on_stale,
                    on_trial=on_trial)
    run_trials(study, storage, spec.storage_url, session.locks, objective, spec.target, deadline=spec.deadline,
               on_stale=on_stale, on_trial=on_trial, poll=poll)


def run_trials(study, storage, url: str, locks, objective, target: int, *, deadline: float | None = None,
               on_stale=None, on_trial=None, poll: float = 1.0) -> int:
    """The claim loop of a worker: run ``objective`` in trials of ``study`` until the study's budget of ``target``
    trials is spent (counted in the storage) or ``deadline`` has passed; returns the number of trials run here.

    Each claim is made under the study's lock in ``locks``: stale trials are failed (and retried through
    ``on_stale``), the budget is counted, the trial is asked for and records its owner, and the lock is released
    before ``objective`` runs. While the budget is claimed but other processes' trials still run, the loop polls
    every ``poll`` seconds: one that goes stale is retried here."""
    from kdlab.study.trials import DONE, RUN, STUDY_LOCK, decide, sweep, this_process

    lock = locks.lock(STUDY_LOCK.format(name=study.study_name))

    def owned(trial):
        try:
            trial.set_user_attr(attrs.OWNER, this_process())
        finally:
            lock.release()  # the trial is RUNNING in the storage, with its owner: other claims may go on
        return objective(trial)

    ran = 0
    while deadline is None or time.time() < deadline:
        stop = signals.stopping()
        if stop is not None:  # a stop signal came while a trial was being recorded: start no other
            raise stop()
        lock.acquire(waiting=f"waiting for the lock of study {study.study_name}")
        try:
            sweep(study, storage, url, on_stale)
            decision = decide(study, target, url)
            if decision == RUN:
                _optimize_one(study, owned)
                ran += 1
        finally:
            lock.release()
        if decision == DONE:
            break
        if decision == RUN:
            if on_trial is not None:
                on_trial(study)
        else:
            time.sleep(poll)
    return ran


def _optimize_one(study, objective) -> None:
    from kdlab.study.trials import finished_elsewhere

    with finished_elsewhere("a trial"):
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False)


def run_stacked(study, storage, url: str, locks, objective: Objective, spec: WorkerSpec, *, on_stale=None,
                on_trial=None) -> int:
    """The worker's stacked loop (``study.stack`` > 1, :mod:`kdlab.study.stacked`) while the budget lasts: each
    trial is claimed exactly as :func:`run_trials` claims one (under the study's lock, stale trials swept, the
    budget counted in the storage, the owner recorded) and keeps its heartbeat from its claim to its tell."""
    from kdlab.study.stacked import StackedTrials
    from kdlab.study.trials import RUN, STUDY_LOCK, decide, heartbeat, sweep, this_process

    lock = locks.lock(STUDY_LOCK.format(name=study.study_name))

    def claim():
        if (spec.deadline is not None and time.time() >= spec.deadline) or signals.stopping() is not None:
            return None
        lock.acquire(waiting=f"waiting for the lock of study {study.study_name}")
        try:
            sweep(study, storage, url, on_stale)
            if decide(study, spec.target, url) != RUN:
                return None
            trial = study.ask()
            trial.set_user_attr(attrs.OWNER, this_process())
            return trial
        finally:
            lock.release()

    return StackedTrials(objective, study, spec.stack, claim,
                         lone=lambda trial: tell_objective(study, objective, trial),
                         keepalive=lambda trial: heartbeat(trial, storage), on_trial=on_trial).run()


def tell_objective(study, objective, trial) -> None:
    """Run ``objective`` on an asked ``trial`` and tell Optuna its outcome, as ``study.optimize`` would."""
    import optuna
    from optuna.trial import TrialState

    from kdlab.study.trials import tell

    try:
        value = objective(trial)
    except optuna.TrialPruned:
        tell(study, trial, None, TrialState.PRUNED)
    except KeyboardInterrupt:
        tell(study, trial, None, TrialState.FAIL)
        raise
    except Exception:  # noqa: BLE001 - recorded on the trial (fail_reason), as study.optimize(catch=...) does
        tell(study, trial, None, TrialState.FAIL)
    else:
        tell(study, trial, value, TrialState.COMPLETE)


def worker_entry(spec: WorkerSpec, session=None) -> None:
    """Process entry point (top level, so that ``spawn`` can import it). The worker stops cleanly on SIGINT or
    SIGTERM, and gets SIGTERM when the main process dies."""
    import multiprocessing
    import sys

    from kdlab.errors import Terminated
    from kdlab.signals import worker_process

    parent = multiprocessing.parent_process()
    worker_process(parent.pid if parent is not None else None)
    try:
        run_worker(spec, session=session)
    except Terminated:
        sys.exit(143)
    except KeyboardInterrupt:
        sys.exit(130)
