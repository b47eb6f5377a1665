"""``kdlab study``: prepare once (data, teacher, teacher outputs, baseline), run the trials in worker processes,
record everything in one MLflow experiment (a parent run for the study, a nested ``trial-<n>`` run per trial).

Started on several machines against one Optuna storage and one tracking server, each ``kdlab study`` joins the same
study: the parent run is found (created once, under the study's storage lock), the teacher is trained by one of
them and fetched by the others, the budget and the deadline are the study's (kept in its storage), and each runs its
own workers on its own devices."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from kdlab import store_checks as stores
from kdlab.config import load_config
from kdlab.errors import ConfigError, Problem, Terminated
from kdlab.paths import default_tracking_uri
from kdlab.plugins import get_registry
from kdlab.signals import stop_processes
from kdlab.study import attrs
from kdlab.study.config import LoadedStudy, load_study_config
from kdlab.study.devices import plan_slots
from kdlab.study.record import close_finished_runs, finalize, open_parent_run
from kdlab.study.report import StudyProgress, summarize
from kdlab.study.sampling import build_pruner, build_sampler
from kdlab.study.storage import default_storage_url, make_storage, release_storage, storage_locks, uses_heartbeat
from kdlab.study.trials import STUDY_LOCK, StaleTrials, StaleWatch, claimed_count, decide, shared_deadline, sweep
from kdlab.study.worker import WorkerSpec, end_stale_run, preimport, run_worker


@dataclass
class StudyOptions:
    overrides: dict[str, Any] = field(default_factory=dict)
    n_trials: int | None = None
    timeout: float | None = None
    workers: int | None = None
    stack: int | str | None = None  # --stack: overrides study.stack
    storage: str | None = None
    tracking_uri: str | None = None
    quiet: bool = False


def load(path: str, options: StudyOptions) -> LoadedStudy:
    """The study file with the command line's overrides; every run of the study goes to one MLflow experiment
    named after the study (the teacher, the baseline and every trial)."""
    overrides = dict(options.overrides)
    if options.tracking_uri:
        overrides["tracking.uri"] = options.tracking_uri
    registry = get_registry()
    lstudy = load_study_config(load_config(path, registry=registry, overrides=overrides))
    overrides["tracking.experiment"] = lstudy.name
    loaded = load_config(path, registry=registry, overrides=overrides)
    return LoadedStudy(loaded, lstudy.study, overrides)


def storage_url(lstudy: LoadedStudy, options: StudyOptions) -> str:
    return options.storage or lstudy.study.storage or default_storage_url()


def create_or_resume(lstudy: LoadedStudy, storage):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = [o.direction for o in lstudy.study.objectives]
    study = optuna.create_study(study_name=lstudy.name, storage=storage, directions=directions, load_if_exists=True,
                                sampler=build_sampler(lstudy.study), pruner=build_pruner(lstudy.study))
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        raise ConfigError(lstudy.loaded.name, [Problem("study.objective", f"the stored study {lstudy.name!r} has "
                          f"directions {have}; this file asks for {directions}. Rename the study (study.name) to "
                          "start a new one", directions)])
    return study


def prepare(lstudy: LoadedStudy, study, parent, device: str, session):
    """Train or load the teacher and cache its outputs once for every worker; train the `ce` baseline once.

    Fills ``session`` with the data and the teacher's outputs (reused by workers that share this process's
    memory: the in-process worker and forked ones)."""
    from kdlab.teachers import get_teacher
    from kdlab.teachers.outputs import prepare_outputs
    from kdlab.training import accuracy_of, resolve_device

    loaded = lstudy.loaded
    dev = resolve_device(device)
    if loaded.config.teacher is not None:
        data = session.get_data(loaded)
        track = loaded.config.tracking.enabled
        teacher = get_teacher(loaded, data, dev, session, track=track)
        # and the cached views, if configured; the outputs are fetched from the teacher's run when another process
        # published them there (kdlab.teachers.shared)
        outputs = prepare_outputs(loaded, teacher, data, dev, session,
                                  tracker=session.tracker(loaded) if track else None)
        tm = {"teacher_test_accuracy": accuracy_of(outputs["test"], data.test.y.to(dev)),
              "teacher_val_accuracy": accuracy_of(outputs["val"], data.val.y.to(dev))}
        study.set_user_attr(attrs.TEACHER, {**tm, "run_id": teacher.run_id, "fingerprint": teacher.fingerprint})
        parent.log_metrics(tm)
        if teacher.run_id:
            parent.set_tags({"kdlab.teacher_run_id": teacher.run_id})
    # one process trains the baseline; a process that finds another one at it goes on to the trials
    claim = session.locks.lock(f"baseline:{lstudy.name}") if session.locks is not None else None
    if lstudy.study.baseline and attrs.BASELINE not in study.user_attrs and (claim is None or claim.acquire(False)):
        try:
            if attrs.BASELINE not in study.user_attrs:
                _baseline(lstudy, study, parent, device, session)
        finally:
            if claim is not None:
                claim.release()
    return session


def _baseline(lstudy: LoadedStudy, study, parent, device: str, session) -> None:
    from kdlab.lifecycle import RunOptions
    from kdlab.modes import run

    loaded = lstudy.loaded
    tracker = session.tracker(loaded)
    if tracker is not None:
        # a baseline run left RUNNING: its process died holding the baseline's lock, which this one holds now
        for left in tracker.search_runs(f"tags.mlflow.parentRunId = '{parent.run_id}' and "
                                        "tags.kdlab.role = 'baseline' and attributes.status = 'RUNNING'"):
            orphan = tracker.run(left.info.run_id)
            orphan.set_tags({"kdlab.fail_reason": "its process died; trained again by another process"})
            orphan.end("FAILED")
    base = load_config(loaded.source, registry=loaded.registry,
                       overrides={**lstudy.overrides, "loss.name": "ce", "loss.params": {}})
    result = run(base, RunOptions(role="baseline", parent_run_id=parent.run_id, run_name="baseline-ce",
                                  device=device, log_model=False, tags={"kdlab.study": lstudy.name}), session)
    study.set_user_attr(attrs.BASELINE, {**result.metrics, "run_id": result.run_id})
    parent.log_metrics({f"baseline_{k}": v for k, v in result.metrics.items()
                        if k in ("test_accuracy", "val_accuracy")})


def run_study(path: str, options: StudyOptions, console=None) -> dict[str, Any]:
    """Run (or resume) the study in ``path``. Returns the summary (see :func:`kdlab.study.report.summarize`)."""
    import logging

    from kdlab.console import make_console, show_messages
    from kdlab.observers.progress import ProgressObserver
    from kdlab.session import Session
    from kdlab.tracking import Tracker, release_connections

    started = time.time()
    lstudy = load(path, options)
    s = lstudy.study
    url = storage_url(lstudy, options)
    cfg = lstudy.loaded.config.tracking
    stores.check_home()  # both stores are checked before any work: seconds, one clear error
    stores.check_storage_url(url)
    stores.check_tracking_uri(cfg.uri or default_tracking_uri())
    on_stale = StaleTrials()
    with stores.opening(url, "Optuna storage"):
        storage = make_storage(url, heartbeat_interval=s.heartbeat_interval, grace_period=s.grace_period,
                               on_stale=on_stale)
        study = create_or_resume(lstudy, storage)
    locks = storage_locks(url)
    study_lock = STUDY_LOCK.format(name=lstudy.name)
    target = s.budget(options.n_trials)  # the study's, counted in its storage across every process
    console = console or make_console()
    display = ProgressObserver(console, enabled=False if options.quiet else None)
    handler = show_messages(console) if display.enabled else None
    session = Session(observers=[display])
    session.locks = locks
    # the study itself is always recorded (its parent run), also when its runs are not (tracking.enabled: false)
    tracker = session.tracker(lstudy.loaded) or Tracker(cfg.uri, cfg.experiment)
    on_stale.end_run = end_stale_run(tracker)
    with locks.hold(study_lock, waiting=f"waiting for the lock of study {lstudy.name}"):
        # a process that joins a running study finds its parent run, its deadline and its stale trials
        parent = open_parent_run(study, lstudy, tracker)
        # counted from the start of the first process, preparation included; joiners keep it
        deadline = shared_deadline(study, options.timeout or s.timeout, started)
        sweep(study, storage, url, on_stale)
    study.set_user_attr(attrs.EXPERIMENT, tracker.experiment_name)
    study.set_user_attr(attrs.TRACKING, tracker.uri)
    close_finished_runs(study, tracker, parent.run_id)
    slots = plan_slots(s.devices, options.workers or s.workers)
    log = logging.getLogger("kdlab")
    status, workers_started, interrupted = "FINISHED", None, None
    try:
        import torch

        torch.set_num_threads(max(s.threads for s in slots) if slots[0].device == "cpu" else torch.get_num_threads())
        prepare(lstudy, study, parent, slots[0].device, session)
        session.observers.remove(display)  # trials show as the study's progress line, not one bar each
        remaining = max(0, target - claimed_count(study))
        if remaining == 0 and decide(study, target, url) != "done":
            remaining = 1  # one worker waits for the other processes' trials, and runs a retry if one goes stale
        n_workers = min(len(slots), remaining)
        progress = StudyProgress(study, target, lstudy, enabled=display.enabled, console=console)
        env = {k: v for k, v in os.environ.items() if k.startswith("KDLAB_") or k.startswith("MLFLOW_")}
        specs = [WorkerSpec(config_path=path, overrides=lstudy.overrides, study_name=lstudy.name, storage_url=url,
                            tracking_uri=tracker.uri, experiment=tracker.experiment_name, parent_run_id=parent.run_id,
                            device=slot.device, threads=slot.threads, index=slot.index, deadline=deadline,
                            target=target, heartbeat_interval=s.heartbeat_interval, grace_period=s.grace_period,
                            workers=n_workers, stack=options.stack or s.stack,
                            plugin_env=env) for slot in slots[:n_workers]]
        # sweeps stale trials while the workers are busy in theirs, so that a dead process's trial is failed (and
        # retried) within the grace period; started after any fork (a forked child must not inherit a thread)
        watch = StaleWatch(study, storage, url, locks, on_stale,
                           interval=s.heartbeat_interval if uses_heartbeat(url) else 5.0)
        if n_workers == 1:
            workers_started = "in-process"
            with progress, watch:
                run_worker(specs[0], on_trial=lambda st: progress.update(), session=session)
        elif n_workers > 1:
            trackers = list(session.trackers.values())
            workers_started = start_method(s.start_method, specs, trackers)
            parent.set_tags({"kdlab.worker_start": workers_started})

            def before_fork():
                for t in trackers:
                    release_connections(t)
                release_storage(storage)
                locks.close()

            _run_processes(specs, progress, workers_started, session if workers_started == "fork" else None,
                           before_fork=before_fork, watch=watch)
    except KeyboardInterrupt as exc:
        status = "KILLED"
        interrupted = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
        log.info("interrupted: run the same command again to resume the study")
    except BaseException:
        status = "FAILED"
        raise
    finally:
        try:
            finalize(study, lstudy, tracker, parent, status=status)
        finally:
            if handler is not None:
                log.removeHandler(handler)
    summary = summarize(study)
    summary["interrupted"] = interrupted or False  # "SIGINT" or "SIGTERM"
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
                   before_fork=None, watch=None) -> None:
    """Run one worker process per spec; ``session`` (fork only) is inherited by the workers, and ``before_fork``
    (fork only) closes what must not cross into them. ``watch`` (a context: the stale-trial sweeper) runs while
    they do."""
    import multiprocessing as mp

    from kdlab.study.worker import worker_entry

    if method == "fork":
        preimport()  # once here, shared by the forked workers
        if before_fork is not None:
            before_fork()
    from contextlib import nullcontext

    ctx = mp.get_context(method)
    args = (session,) if method == "fork" else ()
    procs = [ctx.Process(target=worker_entry, args=(spec, *args), name=f"kdlab-worker-{spec.index}")
             for spec in specs]
    # started before the live progress display, whose refresh thread must not be running at a fork
    for p in procs:
        p.start()
    try:
        with progress, watch or nullcontext():
            while any(p.is_alive() for p in procs):
                for p in procs:
                    p.join(timeout=1.0 / len(procs))
                progress.update()
    except KeyboardInterrupt:
        # Ctrl-C reached the workers too, SIGTERM only this process: either way each worker records its trial as
        # interrupted before it stops (a second signal is ignored), and is killed after 20 s
        stop_processes(procs)
        raise
    bad = [p for p in procs if p.exitcode not in (0, None)]
    if bad:
        from kdlab.errors import KdlabError

        raise KdlabError(f"{len(bad)} study worker(s) exited with an error (exit codes "
                         f"{[p.exitcode for p in bad]}); the trials they finished are recorded")
