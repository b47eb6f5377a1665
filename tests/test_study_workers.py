"""How study workers start: forked CPU workers that share the prepared session, spawn everywhere else, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest
from test_study import load_study, mlflow_runs, study_config

from kdlab.study.runner import StudyOptions, run_study, start_method
from kdlab.tracking import Tracker, can_release_connections, release_connections


def specs(*slots: tuple[str, int]):
    return [SimpleNamespace(device=d, threads=t) for d, t in slots]


@pytest.fixture
def tracker(kdlab_home):
    return Tracker(f"sqlite:///{kdlab_home / 'mlflow.db'}", "workers")


@pytest.fixture
def lone_thread(monkeypatch):
    """The decision as in a fresh `kdlab study` process (pytest-xdist runs helper threads in this one)."""
    import threading

    monkeypatch.setattr(threading, "active_count", lambda: 1)
    monkeypatch.setattr(sys, "platform", "linux")


@pytest.mark.parametrize(("asked", "slots", "expected"), [
    ("auto", [("cpu", 1), ("cpu", 1)], "fork"),
    ("spawn", [("cpu", 1), ("cpu", 1)], "spawn"),
    ("auto", [("cpu", 2), ("cpu", 2)], "spawn"),  # OpenMP's pool deadlocks in a multi-threaded child
    ("auto", [("cuda:0", 1), ("cuda:1", 1)], "spawn"),  # CUDA does not survive fork
    ("auto", [("cpu", 1), ("cuda:0", 1)], "spawn"),
])
def test_start_method_forks_only_single_threaded_cpu_workers(lone_thread, tracker, asked, slots, expected):
    assert start_method(asked, specs(*slots), [tracker]) == expected


def test_start_method_spawns_when_fork_is_unsafe(lone_thread, tracker, monkeypatch):
    cpu = specs(("cpu", 1), ("cpu", 1))
    assert start_method("auto", cpu, [tracker]) == "fork"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert start_method("auto", cpu, [tracker]) == "spawn"
    monkeypatch.setattr(sys, "platform", "linux")
    import threading

    monkeypatch.setattr(threading, "active_count", lambda: 2)  # a running thread's locks would be copied held
    assert start_method("auto", cpu, [tracker]) == "spawn"
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    # a store whose connections cannot be reached (MLflow internals changed): never fork
    opaque = SimpleNamespace(client=SimpleNamespace())
    assert not can_release_connections(opaque)
    assert start_method("auto", cpu, [tracker, opaque]) == "spawn"


def test_released_connections_reopen(tracker):
    run = tracker.start("before")
    release_connections(tracker)
    assert tracker.client.get_run(run.run_id).info.run_name == "before"
    tracker.start("after")


def test_spawned_workers_run_exactly_n_trials(write_config, kdlab_home):
    path = write_config(study_config(n_trials=4, workers=2, baseline=False, start_method="spawn"), "spawned.yaml")
    summary = run_study(str(path), StudyOptions(quiet=True))
    assert summary["worker_start"] == "spawn"
    assert summary["states"] == {"COMPLETE": 4}
    _, runs = mlflow_runs(kdlab_home, "spawned")
    parent = next(r for r in runs if r.data.tags.get("kdlab.role") == "study")
    assert parent.data.tags["kdlab.worker_start"] == "spawn"
    assert sorted(r.info.run_name for r in runs if r.data.tags.get("kdlab.role") == "trial") == [
        f"trial-{i}" for i in range(4)]


#: runs `kdlab study` in a fresh process, logging which process builds data and which runs trials
DRIVER = textwrap.dedent("""
    import os, sys
    from kdlab import session
    from kdlab.study import worker

    log = sys.argv[1]
    get_data = session.Session.get_data

    def logged_get_data(self, loaded):
        if session.data_fingerprint(loaded) not in self.data:
            with open(log, "a") as f:
                f.write(f"data {os.getpid()}\\n")
        return get_data(self, loaded)

    call = worker.Objective.__call__

    def logged_call(self, trial):
        with open(log, "a") as f:
            f.write(f"trial {os.getpid()}\\n")
        return call(self, trial)

    session.Session.get_data = logged_get_data
    worker.Objective.__call__ = logged_call
    from kdlab.cli import main

    print(f"main {os.getpid()}", flush=True)
    sys.exit(main(sys.argv[2:]))
""")


def start_driver(tmp_path, kdlab_home, config_path, *args):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    log = tmp_path / "pids.log"
    env = {**os.environ, "KDLAB_HOME": str(kdlab_home), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(driver), str(log), "study", str(config_path), "-q", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    return proc, log


def test_forked_workers_reuse_the_prepared_data_and_record_every_trial(tmp_path, write_config, kdlab_home):
    path = write_config(study_config(n_trials=6, workers=2, baseline=False), "forked.yaml")
    proc, log = start_driver(tmp_path, kdlab_home, path)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    main_pid = int(out.split("main ", 1)[1].split()[0])
    lines = [line.split() for line in log.read_text().splitlines()]
    # the data is built once, by the main process; the forked workers inherit it
    assert [pid for kind, pid in lines if kind == "data"] == [str(main_pid)]
    trial_pids = {pid for kind, pid in lines if kind == "trial"}
    assert len(trial_pids) == 2 and str(main_pid) not in trial_pids
    study = load_study(kdlab_home, "forked")
    assert sorted(t.number for t in study.trials) == list(range(6))
    assert {t.state.name for t in study.trials} == {"COMPLETE"}
    assert {t.user_attrs["worker"] for t in study.trials} == {0, 1}
    _, runs = mlflow_runs(kdlab_home, "forked")
    parent = next(r for r in runs if r.data.tags.get("kdlab.role") == "study")
    assert parent.data.tags["kdlab.worker_start"] == "fork" and parent.info.status == "FINISHED"
    trials = [r for r in runs if r.data.tags.get("kdlab.role") == "trial"]
    assert sorted(r.info.run_name for r in trials) == [f"trial-{i}" for i in range(6)]
    # learned something (chance is 0.1); exact accuracies: a trial may score exactly 108/360 = 0.3
    assert all(r.info.status == "FINISHED" and r.data.metrics["test_accuracy"] >= 0.3 for r in trials)


def test_ctrl_c_stops_forked_workers_and_records_the_interrupted_trials(tmp_path, write_config, kdlab_home):
    cfg = study_config(n_trials=8, workers=2, baseline=False)
    cfg["training"]["epochs"] = 400  # trials that are still running when Ctrl-C comes
    path = write_config(cfg, "stopped.yaml")
    proc, log = start_driver(tmp_path, kdlab_home, path)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count("trial") >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()
    time.sleep(1.0)  # both workers inside a trial
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    t0 = time.time()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert time.time() - t0 < 30
    study = load_study(kdlab_home, "stopped")
    assert len(study.trials) == 2
    assert all(t.state.name == "FAIL" and t.user_attrs["fail_reason"] == "interrupted" for t in study.trials)
    _, runs = mlflow_runs(kdlab_home, "stopped")
    parent = next(r for r in runs if r.data.tags.get("kdlab.role") == "study")
    assert parent.info.status == "KILLED"
    trials = [r for r in runs if r.data.tags.get("kdlab.role") == "trial"]
    assert len(trials) == 2 and all(r.info.status == "KILLED" for r in trials)
    assert {r.data.tags["kdlab.trial_state"] for r in trials} == {"FAIL"}
