"""A study worker: one process per device slot, running trials one at a time on its device.

Workers are started with ``spawn`` (CUDA does not survive ``fork``) and share a trial counter so that a study runs
exactly its budget of trials however many workers take part.
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

#: Optuna user attrs set on every trial (public: `kdlab study show` and reviewers read them)
ATTR_METRICS = "metrics"
ATTR_RUN_ID = "mlflow_run_id"
ATTR_FAIL = "fail_reason"
ATTR_DEVICE = "device"
ATTR_WORKER = "worker"
INTERRUPTED = "interrupted"


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
    budget: int = 0
    plugin_env: dict[str, str] = field(default_factory=dict)


def build_sampler(study_cfg, index: int = 0):
    import optuna

    s = study_cfg.sampler
    seed = None if s.seed is None else s.seed + index
    multi = len(study_cfg.objectives) > 1
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.name == "grid":
        return optuna.samplers.GridSampler({k: d.grid() for k, d in study_cfg.search.items()}, seed=seed)
    if s.name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=s.n_startup_trials)
    if s.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    conditional = "loss.name" in study_cfg.search or any(d.when for d in study_cfg.search.values())
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials, multivariate=True,
                                      group=conditional and not multi, constant_liar=True)


def build_pruner(study_cfg):
    import optuna

    p = study_cfg.pruner
    if p.name == "none" or len(study_cfg.objectives) > 1:
        return optuna.pruners.NopPruner()  # Optuna cannot prune multi-objective studies
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource)
    return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)


class Objective:
    """Runs one trial: sample, train through the engine as a nested MLflow run, report per epoch, record."""

    def __init__(self, spec: WorkerSpec, lstudy, session, tracker):
        self.spec = spec
        self.lstudy = lstudy
        self.session = session
        self.tracker = tracker
        self.objectives = lstudy.study.objectives

    def __call__(self, trial) -> float | tuple[float, ...]:
        import optuna

        from kdlab.config import load_config
        from kdlab.engine import RunOptions, run
        from kdlab.plugins import get_plugins
        from kdlab.study.config import sample, trial_overrides

        chosen = sample(self.lstudy, trial)
        trial.set_user_attr(ATTR_DEVICE, self.spec.device)
        trial.set_user_attr(ATTR_WORKER, self.spec.index)
        state, metrics, run_id = "FAIL", {}, None
        try:
            loaded = load_config(self.lstudy.loaded.source,
                                 overrides={**self.spec.overrides, **trial_overrides(self.lstudy, chosen)})
            callbacks = []
            first = self.objectives[0]
            if len(self.objectives) == 1 and first.metric in ("val_accuracy", "val_loss"):
                def report(epoch: int, m: dict[str, float]) -> None:
                    trial.report(m[first.metric], epoch)
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"pruned after epoch {epoch} ({first.metric}={m[first.metric]:.4f})")

                callbacks.append(report)
            options = RunOptions(
                role="trial", tracker=self.tracker, parent_run_id=self.spec.parent_run_id,
                run_name=f"trial-{trial.number}", trial_number=trial.number, device=self.spec.device,
                tags={"kdlab.study": self.spec.study_name, "kdlab.trial_state": "RUNNING"},
                params={"trial_number": trial.number}, epoch_callbacks=callbacks, log_model=False,
            )
            result = run(loaded, options, self.session)
            run_id, metrics = result.run_id, result.metrics
            values = [metrics[o.metric] for o in self.objectives]
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"objective is not finite: {values}")
            state = "COMPLETE"
            trial.set_user_attr(ATTR_METRICS, metrics)
            return values[0] if len(values) == 1 else tuple(values)
        except optuna.TrialPruned as exc:
            state = "PRUNED"
            run_id = getattr(exc, "kdlab_run_id", run_id)
            trial.set_user_attr(ATTR_FAIL, str(exc))
            raise
        except KeyboardInterrupt as exc:
            run_id = getattr(exc, "kdlab_run_id", run_id)
            trial.set_user_attr(ATTR_FAIL, INTERRUPTED)
            raise
        except BaseException as exc:
            run_id = getattr(exc, "kdlab_run_id", run_id)
            reason = _reason(exc)
            trial.set_user_attr(ATTR_FAIL, reason)
            if _is_oom(exc):
                _free_cuda()
            raise
        finally:
            if run_id:
                trial.set_user_attr(ATTR_RUN_ID, run_id)
                tags = {"kdlab.trial_state": state}
                if state != "COMPLETE":
                    tags["kdlab.fail_reason"] = trial.user_attrs.get(ATTR_FAIL, "")[:5000]
                try:
                    from kdlab.tracking import _retry

                    for k, v in tags.items():
                        _retry(self.tracker.client.set_tag, run_id, k, v)
                except Exception:  # noqa: BLE001 - tracking trouble must not hide the trial's own outcome
                    pass
            get_plugins().hook.kdlab_trial_end(study=self.spec.study_name, trial_number=trial.number, state=state,
                                               params=chosen, metrics=metrics)


def _reason(exc: BaseException) -> str:
    from kdlab.errors import KdlabError

    if isinstance(exc, KdlabError):
        return f"{type(exc).__name__}: {exc}"
    if _is_oom(exc):
        return f"out of memory: {str(exc).splitlines()[0][:500]}"
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def open_study(spec: WorkerSpec, lstudy):
    import optuna

    from kdlab.study.storage import make_storage

    optuna.logging.set_verbosity(max(optuna.logging.get_verbosity(), optuna.logging.WARNING))
    return optuna.load_study(study_name=spec.study_name, storage=make_storage(spec.storage_url),
                             sampler=build_sampler(lstudy.study, spec.index), pruner=build_pruner(lstudy.study))


def preimport() -> None:
    """Import what every trial needs but the first would otherwise import inside its own time: building an
    optimizer imports torch's compiler stack (about 1.3 s). A no-op once done."""
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def run_worker(spec: WorkerSpec, counter=None, lock=None, on_trial=None, session=None) -> None:
    """Claim trials from the shared ``counter`` until the budget or the deadline is reached.

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
    from kdlab.engine import Session
    from kdlab.study.config import load_study_config
    from kdlab.tracking import Tracker

    loaded = load_config(spec.config_path, overrides=spec.overrides)
    lstudy = load_study_config(loaded)
    study = open_study(spec, lstudy)
    session = session or Session()
    tracker = Tracker(spec.tracking_uri, spec.experiment)
    preimport()  # before the first trial, so that its recorded time is the trial's
    objective = Objective(spec, lstudy, session, tracker)
    claimed = 0
    while True:
        if spec.deadline is not None and time.time() >= spec.deadline:
            break
        if counter is not None:
            with lock:
                if counter.value >= spec.budget:
                    break
                counter.value += 1
        elif claimed >= spec.budget:
            break
        claimed += 1
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False)
        if on_trial is not None:
            on_trial(study)


def worker_entry(spec: WorkerSpec, counter, lock, session=None) -> None:
    """Process entry point (top level, so that ``spawn`` can import it)."""
    import sys

    try:
        run_worker(spec, counter, lock, session=session)
    except KeyboardInterrupt:
        sys.exit(130)
