"""SIGTERM is handled like Ctrl-C (exit 143, trials recorded as interrupted, runs KILLED); study workers die with
their main process, and the next command ends the runs a killed process left RUNNING (docs/faults.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from test_study import load_study, mlflow_runs, study_config
from test_study_workers import start_driver


def wait_for_trials(proc, log, n: int, timeout: float = 120) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count("trial") >= n:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()
    time.sleep(1.0)  # inside their trials
    return [int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("trial")]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def long_study(write_config, name: str):
    cfg = study_config(n_trials=8, workers=2, baseline=False, search={
        "optimizer.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}})
    del cfg["teacher"]  # no teacher to train first: the trials start at once
    cfg["loss"] = {"name": "ce"}
    cfg["training"]["epochs"] = 400  # trials that are still running when the signal comes
    return write_config(cfg, f"{name}.yaml")


def test_sigterm_to_the_main_process_stops_the_study_like_ctrl_c(tmp_path, write_config, kdlab_home):
    proc, log = start_driver(tmp_path, kdlab_home, long_study(write_config, "termed"))
    workers = wait_for_trials(proc, log, 2)
    proc.send_signal(signal.SIGTERM)  # the main process only, as a scheduler or `docker stop` does
    t0 = time.time()
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 143, out
    assert time.time() - t0 < 40
    assert "Traceback" not in out
    assert not any(alive(pid) for pid in workers)
    study = load_study(kdlab_home, "termed")
    assert len(study.trials) == 2, [(t.number, t.state.name, t.user_attrs) for t in study.trials]
    assert all(t.state.name == "FAIL" and t.user_attrs.get("fail_reason") == "interrupted" for t in study.trials), [
        (t.number, t.state.name, t.user_attrs) for t in study.trials]
    _, runs = mlflow_runs(kdlab_home, "termed")
    assert next(r for r in runs if r.data.tags.get("kdlab.role") == "study").info.status == "KILLED"
    trials = [r for r in runs if r.data.tags.get("kdlab.role") == "trial"]
    assert len(trials) == 2 and all(r.info.status == "KILLED" for r in trials)


def test_workers_die_with_a_killed_main_process_and_the_next_command_ends_its_runs(tmp_path, write_config,
                                                                                    kdlab_home):
    from kdlab.tracking import Tracker

    proc, log = start_driver(tmp_path, kdlab_home, long_study(write_config, "killed"))
    workers = wait_for_trials(proc, log, 2)
    os.kill(proc.pid, signal.SIGKILL)  # no clean-up at all in the main process
    proc.communicate(timeout=30)
    deadline = time.time() + 40  # each worker records its trial as interrupted, then exits
    while time.time() < deadline and any(alive(pid) for pid in workers):
        time.sleep(0.2)
    assert not any(alive(pid) for pid in workers)
    Tracker(f"sqlite:///{kdlab_home / 'mlflow.db'}", "next-command")  # what any next command does first
    _, runs = mlflow_runs(kdlab_home, "killed")
    assert runs and all(r.info.status != "RUNNING" for r in runs)
    parent = next(r for r in runs if r.data.tags.get("kdlab.role") == "study")
    assert parent.info.status == "KILLED" and parent.data.tags["kdlab.status_reason"].startswith("interrupted")


def test_sigterm_during_kdlab_run_ends_the_run_killed(tmp_path, write_config, kdlab_home):
    from conftest import tiny_digits_config

    cfg = tiny_digits_config(loss={"name": "ce"})
    del cfg["teacher"]
    cfg["training"]["epochs"] = 2000
    path = write_config(cfg)
    env = {**os.environ, "KDLAB_HOME": str(kdlab_home)}
    proc = subprocess.Popen([sys.executable, "-m", "kdlab", "run", str(path), "-q"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    runs = []
    while time.time() < deadline and not any(r.data.tags.get("kdlab.role") == "student" for r in runs):
        time.sleep(0.5)
        try:
            _, runs = mlflow_runs(kdlab_home, "test")
        except Exception:  # noqa: BLE001 - the store or experiment is not there yet
            runs = []
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "kdlab: terminated (SIGTERM)" in err and "Traceback" not in err, err
    _, runs = mlflow_runs(kdlab_home, "test")
    student = next(r for r in runs if r.data.tags.get("kdlab.role") == "student")
    assert student.info.status == "KILLED" and student.data.tags["kdlab.status_reason"] == "interrupted"
