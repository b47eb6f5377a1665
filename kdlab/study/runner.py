"""``kdlab study``: prepare once (data, teacher, teacher outputs, baseline), run the trials in worker processes,
record everything in one MLflow experiment (a parent run for the study, a nested ``trial-<n>`` run per trial)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from kdlab.config import LoadedConfig, flatten, load_config
from kdlab.errors import ConfigError, Problem
from kdlab.study.config import LoadedStudy, load_study_config
from kdlab.study.devices import plan_slots
from kdlab.study.storage import default_storage_url, is_local, make_storage
from kdlab.study.worker import (ATTR_FAIL, ATTR_RUN_ID, INTERRUPTED, WorkerSpec, build_pruner, build_sampler, preimport,
                                run_worker)

#: Optuna study user attrs (public: read by `kdlab study show`)
ATTR_PARENT = "mlflow_parent_run_id"
ATTR_EXPERIMENT = "mlflow_experiment"
ATTR_TRACKING = "mlflow_tracking_uri"
ATTR_BASELINE = "baseline_metrics"
ATTR_TEACHER = "teacher_metrics"
ATTR_SEARCH = "search_space"


@dataclass
class StudyOptions:
    overrides: dict[str, Any] = field(default_factory=dict)
    n_trials: int | None = None
    timeout: float | None = None
    workers: int | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    quiet: bool = False


def load(path: str, options: StudyOptions) -> tuple[LoadedStudy, dict[str, Any]]:
    overrides = dict(options.overrides)
    if options.tracking_uri:
        overrides["tracking.uri"] = options.tracking_uri
    loaded = load_config(path, overrides=overrides)
    lstudy = load_study_config(loaded)
    # one MLflow experiment per study (named after it): the teacher, the baseline and every trial go there
    overrides["tracking.experiment"] = lstudy.name
    loaded = load_config(path, overrides=overrides)
    return LoadedStudy(loaded, lstudy.study, overrides), overrides


def storage_url(lstudy: LoadedStudy, options: StudyOptions) -> str:
    return options.storage or lstudy.study.storage or default_storage_url()


def finished_count(study) -> int:
    """Trials that count against the budget: complete, pruned, or failed for a reason other than interruption."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            n += 1
        elif t.state == TrialState.FAIL and t.user_attrs.get(ATTR_FAIL) != INTERRUPTED:
            n += 1
    return n


def fail_stale_trials(study) -> list[int]:
    """Mark trials left RUNNING by an interrupted process as FAIL (reason: interrupted)."""
    from optuna.trial import TrialState

    stale = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, ATTR_FAIL, INTERRUPTED)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        stale.append(t.number)
    return stale


def create_or_resume(lstudy: LoadedStudy, url: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = [o.direction for o in lstudy.study.objectives]
    study = optuna.create_study(study_name=lstudy.name, storage=make_storage(url), directions=directions,
                                load_if_exists=True, sampler=build_sampler(lstudy.study), pruner=build_pruner(lstudy.study))
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        raise ConfigError(lstudy.loaded.name, [Problem("study.objective", f"the stored study {lstudy.name!r} has "
                          f"directions {have}; this file asks for {directions}. Rename the study (study.name) to "
                          "start a new one", directions)])
    return study


def _parent_run(study, lstudy: LoadedStudy, tracker) -> str:
    from kdlab.tracking import _retry

    client = tracker.client
    run_id = study.user_attrs.get(ATTR_PARENT)
    if run_id:
        try:
            run = client.get_run(run_id)
            if run.info.experiment_id == tracker.experiment_id:
                _retry(client.update_run, run_id, status="RUNNING")
                return run_id
        except Exception:  # noqa: BLE001 - a parent run from another tracking store: start a new one
            pass
    tracked = tracker.start(f"study-{lstudy.name}", tags={"kdlab.role": "study", "kdlab.study": lstudy.name})
    s = lstudy.study
    space = {k: d.model_dump(exclude_none=True) for k, d in s.search.items()}
    params = flatten({k: v for k, v in lstudy.loaded.config.resolved_dict().items() if k not in ("study", "tracking")})
    params.update({f"search.{k}": json.dumps(v) for k, v in space.items()})
    params.update({"study.sampler": s.sampler.name, "study.pruner": s.pruner.name,
                   "study.objective": json.dumps([o.model_dump() for o in s.objectives])})
    tracked.log_params(params)
    import yaml

    tracked.log_text(yaml.safe_dump({"search": space}, sort_keys=False), "search_space.yaml")
    tracked.log_text(yaml.safe_dump(lstudy.loaded.source.data, sort_keys=False), "study.yaml")
    study.set_user_attr(ATTR_PARENT, tracked.run_id)
    study.set_user_attr(ATTR_SEARCH, space)
    return tracked.run_id


def _fail_stale_runs(tracker, parent_run_id: str) -> None:
    from kdlab.tracking import _retry

    runs = _retry(tracker.client.search_runs, [tracker.experiment_id],
                  filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'")
    for r in runs:
        _retry(tracker.client.set_tag, r.info.run_id, "kdlab.trial_state", "FAIL")
        _retry(tracker.client.set_tag, r.info.run_id, "kdlab.fail_reason", INTERRUPTED)
        _retry(tracker.client.set_terminated, r.info.run_id, "FAILED")


def prepare(lstudy: LoadedStudy, study, tracker, parent_run_id: str, device: str, reporter):
    """Train or load the teacher and cache its outputs once for every worker; train the `ce` baseline once.

    Returns the session holding the data and the teacher's outputs (reused by workers that share this process's
    memory: the in-process worker and forked ones)."""
    from kdlab.engine import RunOptions, Session, get_teacher, run
    from kdlab.teacher import teacher_outputs
    from kdlab.training import resolve_device

    loaded = lstudy.loaded
    session = Session()
    dev = resolve_device(device)
    if loaded.config.teacher is not None:
        data = session.get_data(loaded)
        teacher = get_teacher(loaded, data, dev, session, track=loaded.config.tracking.enabled, reporter=reporter)
        outputs = session.outputs[(teacher.fingerprint, str(dev))] = teacher_outputs(teacher, data, dev)
        y = {k: s.y.to(dev) for k, s in data.splits().items() if s.y is not None}
        tm = {"teacher_test_accuracy": float((outputs["test"].argmax(1) == y["test"]).float().mean()),
              "teacher_val_accuracy": float((outputs["val"].argmax(1) == y["val"]).float().mean())}
        study.set_user_attr(ATTR_TEACHER, {**tm, "run_id": teacher.run_id, "fingerprint": teacher.fingerprint})
        tracker.client.log_batch(parent_run_id, metrics=_metrics(tm))
        if teacher.run_id:
            from mlflow.entities import RunTag

            tracker.client.log_batch(parent_run_id, tags=[RunTag("kdlab.teacher_run_id", teacher.run_id)])
    if lstudy.study.baseline and ATTR_BASELINE not in study.user_attrs:
        base = load_config(loaded.source, overrides={**lstudy.overrides, "loss.name": "ce", "loss.params": {}})
        result = run(base, RunOptions(role="baseline", tracker=tracker, parent_run_id=parent_run_id,
                                      run_name="baseline-ce", device=device, reporter=reporter, log_model=False,
                                      tags={"kdlab.study": lstudy.name}), session)
        bm = {k: v for k, v in result.metrics.items()}
        study.set_user_attr(ATTR_BASELINE, {**bm, "run_id": result.run_id})
        tracker.client.log_batch(parent_run_id, metrics=_metrics({f"baseline_{k}": v for k, v in bm.items()
                                                                  if k in ("test_accuracy", "val_accuracy")}))
    return session


def _metrics(d: dict[str, float], step: int = 0):
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    return [Metric(k, float(v), ts, step) for k, v in d.items()]


def run_study(path: str, options: StudyOptions, console=None) -> dict[str, Any]:
    """Run (or resume) the study in ``path``. Returns the summary (see :func:`kdlab.study.report.summarize`)."""
    from kdlab.console import RichReporter
    from kdlab.study.report import StudyProgress, finalize, summarize
    from kdlab.tracking import Tracker, _retry, release_connections

    started = time.time()
    lstudy, overrides = load(path, options)
    s = lstudy.study
    url = storage_url(lstudy, options)
    study = create_or_resume(lstudy, url)
    stale = fail_stale_trials(study) if is_local(url) else []
    target = options.n_trials or s.n_trials
    remaining = max(0, target - finished_count(study))
    tracker = Tracker(lstudy.loaded.config.tracking.uri, lstudy.loaded.config.tracking.experiment)
    parent = _parent_run(study, lstudy, tracker)
    study.set_user_attr(ATTR_EXPERIMENT, tracker.experiment_name)
    study.set_user_attr(ATTR_TRACKING, tracker.uri)
    _fail_stale_runs(tracker, parent)
    slots = plan_slots(s.devices, options.workers or s.workers)
    reporter = RichReporter(quiet=options.quiet, console=console)
    if stale:
        reporter.message(f"resuming {lstudy.name}: trials {stale} were interrupted and are marked failed")
    status, workers_started = "FINISHED", None
    try:
        import torch

        torch.set_num_threads(max(s.threads for s in slots) if slots[0].device == "cpu" else torch.get_num_threads())
        session = prepare(lstudy, study, tracker, parent, slots[0].device, reporter)
        timeout = options.timeout or s.timeout
        deadline = started + timeout if timeout else None  # counted from the start, preparation included
        n_workers = min(len(slots), remaining)
        progress = StudyProgress(study, target, lstudy, enabled=reporter.enabled, console=reporter.console)
        env = {k: v for k, v in os.environ.items() if k.startswith("KDLAB_") or k.startswith("MLFLOW_")}
        specs = [WorkerSpec(config_path=path, overrides=overrides, study_name=lstudy.name, storage_url=url,
                            tracking_uri=tracker.uri, experiment=tracker.experiment_name, parent_run_id=parent,
                            device=slot.device, threads=slot.threads, index=slot.index, deadline=deadline,
                            budget=remaining, plugin_env=env) for slot in slots[:n_workers]]
        if n_workers == 1:
            workers_started = "in-process"
            with progress:
                run_worker(specs[0], on_trial=lambda st: progress.update(), session=session)
        elif n_workers > 1:
            trackers = [tracker, *session.trackers.values()]
            workers_started = start_method(s.start_method, specs, trackers)
            _retry(tracker.client.set_tag, parent, "kdlab.worker_start", workers_started)
            _run_processes(specs, progress, workers_started, session if workers_started == "fork" else None,
                           before_fork=lambda: [release_connections(t) for t in trackers])
    except KeyboardInterrupt:
        status = "KILLED"
        reporter.message("interrupted: run the same command again to resume the study")
    except BaseException:
        status = "FAILED"
        raise
    finally:
        try:
            finalize(study, lstudy, tracker, parent, status=status)
        finally:
            reporter.done()
    summary = summarize(study)
    summary["interrupted"] = status == "KILLED"
    summary["worker_start"] = workers_started
    return summary


def start_method(asked: str, specs: list[WorkerSpec], trackers: list) -> str:
    """``fork`` where it is safe and `spawn` otherwise.

    A forked worker starts at once: it shares the imports, the data and the teacher's outputs of this process
    (copy-on-write) instead of loading them again (seconds per worker). It is safe only when:

    * the platform is Linux (macOS system libraries do not survive fork);
    * every worker trains on the CPU with one thread. CUDA cannot be used after fork, and OpenMP's thread pool
      deadlocks in a child that runs multi-threaded after its parent did;
    * CUDA is not initialised here, and this process runs no other thread;
    * the database connections of every tracking store in ``trackers`` can be closed first, so that none is shared
      with a child.
    """
    import sys
    import threading

    import torch

    if asked == "spawn" or sys.platform != "linux":
        return "spawn"
    if any(spec.device != "cpu" or spec.threads != 1 for spec in specs):
        return "spawn"
    if torch.cuda.is_initialized() or threading.active_count() > 1:
        return "spawn"
    from kdlab.tracking import can_release_connections

    return "fork" if all(can_release_connections(t) for t in trackers) else "spawn"


def _run_processes(specs: list[WorkerSpec], progress, method: str = "spawn", session=None,
                   before_fork=None) -> None:
    """Run one worker process per spec; ``session`` (fork only) is inherited by the workers, and ``before_fork``
    (fork only) closes what must not cross into them."""
    import multiprocessing as mp

    from kdlab.study.worker import worker_entry

    if method == "fork":
        preimport()  # once here, shared by the forked workers
        if before_fork is not None:
            before_fork()
    ctx = mp.get_context(method)
    counter, lock = ctx.Value("i", 0), ctx.Lock()
    args = (counter, lock, session) if method == "fork" else (counter, lock)
    procs = [ctx.Process(target=worker_entry, args=(spec, *args), name=f"kdlab-worker-{spec.index}")
             for spec in specs]
    # started before the live progress display, whose refresh thread must not be running at a fork
    for p in procs:
        p.start()
    try:
        with progress:
            while any(p.is_alive() for p in procs):
                for p in procs:
                    p.join(timeout=1.0 / len(procs))
                progress.update()
    except KeyboardInterrupt:
        # the workers got the same SIGINT: give them time to record their trials as failed, then stop them
        deadline = time.time() + 20
        for p in procs:
            p.join(timeout=max(0.1, deadline - time.time()))
        for p in procs:
            if p.is_alive():
                p.terminate()
        raise
    bad = [p for p in procs if p.exitcode not in (0, None)]
    if bad:
        from kdlab.errors import KdlabError

        raise KdlabError(f"{len(bad)} study worker(s) exited with an error (exit codes "
                         f"{[p.exitcode for p in bad]}); the trials they finished are recorded")
