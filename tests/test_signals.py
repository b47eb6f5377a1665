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
    assert all(t.state.name == "FAIL" and t.user_attrs.get("fail_reason") == "interrupted" for t in study.trials), (
        [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in study.trials], out)
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


def _student_started(db) -> bool:
    """Whether the student's run is in the MLflow store, read without MLflow: an MlflowClient here would create or
    migrate the store's tables while the kdlab process does the same, and one of them fails."""
    import sqlite3
    from contextlib import closing

    if not db.exists():
        return False
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as con:
            row = con.execute("SELECT 1 FROM tags WHERE key = 'kdlab.role' AND value = 'student'").fetchone()
            return row is not None
    except sqlite3.Error:  # not created or not migrated yet
        return False


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
    while time.time() < deadline and not _student_started(kdlab_home / "mlflow.db"):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "kdlab: terminated (SIGTERM)" in err and "Traceback" not in err, err
    _, runs = mlflow_runs(kdlab_home, "test")
    student = next(r for r in runs if r.data.tags.get("kdlab.role") == "student")
    assert student.info.status == "KILLED" and student.data.tags["kdlab.status_reason"] == "interrupted"


def test_a_signal_inside_a_journal_write_waits_for_the_write_and_its_lock(tmp_path, monkeypatch):
    """SIGTERM raised inside Optuna's journal file lock (between its rename and unlink) left the lock file behind and
    turned into a FileNotFoundError, so a worker recorded its trial with that error instead of as interrupted: the
    journal's reads and writes now finish before the signal is raised (kdlab.signals.deferred)."""
    import optuna
    import pytest
    from optuna.storages.journal import _file

    from kdlab import signals
    from kdlab.errors import Terminated
    from kdlab.study.storage import make_storage

    storage = make_storage(f"journal:{tmp_path / 'optuna.journal'}")
    study = optuna.create_study(study_name="s", storage=storage)
    rename = os.rename

    def signalled_rename(src, dst):  # the signal arrives inside the lock's release, before the rename
        if str(src).endswith(".lock"):
            os.kill(os.getpid(), signal.SIGTERM)
        return rename(src, dst)

    monkeypatch.setattr(_file.os, "rename", signalled_rename)
    restore = signals.handle_sigterm()
    try:
        with pytest.raises(Terminated):
            study.ask()  # the trial is written, the lock released, then the signal raised
    finally:
        restore()
        signals.reset()
        monkeypatch.undo()
    assert not (tmp_path / "optuna.journal.lock").exists()
    assert [t.state.name for t in optuna.load_study(study_name="s", storage=make_storage(
        f"journal:{tmp_path / 'optuna.journal'}")).trials] == ["RUNNING"]


def test_a_stop_raised_inside_a_callback_that_cannot_raise_is_delivered_again(capfd):
    """A signal handled while a ``__del__`` or a GC callback runs (SQLAlchemy has weakref callbacks) raises there,
    where Python only prints "Exception ignored": the stop was lost and ``kdlab run`` trained on. It is delivered
    again and raised in the main code."""
    import pytest

    from kdlab import signals
    from kdlab.errors import Terminated

    class SignalsOnDelete:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)  # handled inside __del__, whose exceptions are ignored
            sum(range(1000))

    restore = signals.handle_sigterm()
    try:
        with pytest.raises(Terminated):
            SignalsOnDelete()  # collected at once
            for _ in range(200):
                time.sleep(0.01)
    finally:
        restore()
        signals.reset()
    assert "Exception ignored" not in capfd.readouterr().err
