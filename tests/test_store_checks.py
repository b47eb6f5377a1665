"""The tracking store and the Optuna storage are checked before any work: one clear error in seconds, passwords
masked, no in-memory store; first use is safe when processes start together; transient errors are retried with a
bound; runs left RUNNING by a dead process are ended KILLED by the next command."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import tiny_digits_config
from kdlab import store_checks as stores
from kdlab.cli import main
from kdlab.tracking import Tracker, TrackingError, _retry


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(capsys, *argv) -> tuple[int, str, float]:
    start = time.monotonic()
    code = main(list(argv))
    return code, capsys.readouterr().err, time.monotonic() - start


@pytest.fixture
def run_file(write_config):
    cfg = tiny_digits_config()
    cfg.pop("teacher")
    cfg["loss"] = {"name": "ce"}
    return str(write_config(cfg))


@pytest.mark.parametrize("uri, expected", [
    ("sqlite://", "in-memory database: everything recorded would be lost"),
    ("sqlite:///:memory:", "in-memory database"),
    ("sqlite:////", "/ is a folder; give a database file inside it"),
    ("sqlite:///.", "is a folder; give a database file inside it"),
    ("plain words", "is a folder path, not a tracking URI"),
    ("file:///tmp/mlruns", "is a folder path, not a tracking URI"),
    ("foo://bar", "unknown scheme 'foo://'"),
    ("mysql://user:pw@db.example/kd", "needs the database driver"),
    ("mssql://user:pw@db.example/kd", "needs the database driver"),
])
def test_bad_tracking_uris_are_one_clear_error_before_any_work(capsys, run_file, kdlab_home, uri, expected):
    code, err, took = run_cli(capsys, "run", run_file, "-q", "--tracking-uri", uri)
    assert code == 1 and expected in err, err
    assert "Traceback" not in err and "pw@" not in err and err.count("\n") == 1
    assert took < 10
    assert not (kdlab_home / "cache" / "data").exists() or not any((kdlab_home / "cache" / "data").iterdir())


def test_postgresql_without_a_driver_names_the_extra_and_masks_the_password(capsys, run_file):
    pytest.importorskip("sqlalchemy")
    try:
        import psycopg  # noqa: F401

        pytest.skip("psycopg is installed here")  # the --all set-up installs the postgres extra
    except ImportError:
        pass
    code, err, _ = run_cli(capsys, "run", run_file, "--tracking-uri", "postgresql://kd:s3cret@127.0.0.1:1/kd")
    assert code == 1 and "pip install 'kdlab[postgres]'" in err and "s3cret" not in err and "kd:***@" in err


def test_an_unreachable_server_fails_within_seconds_for_a_run_and_a_study(capsys, run_file, write_config):
    from test_study import study_config

    uri = f"http://127.0.0.1:{closed_port()}"
    code, err, took = run_cli(capsys, "run", run_file, "--tracking-uri", uri)
    assert code == 1 and "no MLflow server answers at 127.0.0.1" in err and "mlflow server --host" in err
    assert took < 10
    path = write_config(study_config(), "study.yaml")
    code, err, took = run_cli(capsys, "study", str(path), "-q", "--tracking-uri", uri)
    assert code == 1 and "no MLflow server answers" in err and took < 10


@pytest.mark.parametrize("storage, expected", [
    ("sqlite://", "in-memory database"),
    ("redis://localhost", "unknown scheme 'redis://'"),
    ("journal:{afile}/optuna.journal", "is a file, so"),
    ("{home}", "is a folder; give a journal file path"),
])
def test_bad_optuna_storages_are_one_clear_error(capsys, write_config, tmp_path, kdlab_home, storage, expected):
    from test_study import study_config

    (tmp_path / "afile").write_text("")
    kdlab_home.mkdir(parents=True, exist_ok=True)
    path = write_config(study_config(), "study.yaml")
    storage = storage.format(afile=tmp_path / "afile", home=kdlab_home)
    code, err, took = run_cli(capsys, "study", str(path), "-q", "--storage", storage)
    assert code == 1 and expected in err and "Traceback" not in err, err
    assert took < 10


def test_a_read_only_database_and_folder_are_named(tmp_path, monkeypatch):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"")
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(db) else real(p, mode))
    with pytest.raises(stores.StoreError, match="is read-only; make it writable"):
        stores.check_tracking_uri(f"sqlite:///{db}")
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real(p, mode))
    with pytest.raises(stores.StoreError, match="is not writable"):
        stores.check_tracking_uri(f"sqlite:///{db}")


def test_a_file_that_is_not_a_database_is_named(tmp_path):
    db = tmp_path / "notes.db"
    db.write_text("my notes")
    with pytest.raises(stores.StoreError, match="is not an SQLite database"):
        stores.check_tracking_uri(f"sqlite:///{db}")


def test_a_half_created_store_says_what_to_do(tmp_path):
    import sqlite3

    db = tmp_path / "half.db"
    with sqlite3.connect(db) as conn:  # what a store cut short by a file-size limit leaves
        conn.execute("create table datasets (x int)")
    with pytest.raises(stores.StoreError, match="creation was cut short .*: move the file away and run again"):
        Tracker(f"sqlite:///{db}", "x")


def test_a_home_that_is_a_file_is_a_clear_error(capsys, run_file, tmp_path, monkeypatch):
    home = tmp_path / "home-file"
    home.write_text("")
    monkeypatch.setenv("KDLAB_HOME", str(home))
    code, err, _ = run_cli(capsys, "run", run_file, "--no-track")
    assert code == 1 and "is a file, not a folder: point KDLAB_HOME at a writable folder" in err


def test_a_read_only_home_is_a_clear_error(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    real = os.access
    monkeypatch.setenv("KDLAB_HOME", str(home))
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(home) else real(p, mode))
    with pytest.raises(stores.StoreError, match="is not writable: point KDLAB_HOME at a writable folder"):
        stores.check_home()


def _open_store(uri: str, queue) -> None:
    try:
        tracker = Tracker(uri, "race")
        tracker.start("run").end()
        queue.put("ok")
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        queue.put(f"{type(exc).__name__}: {exc}")


def test_processes_that_create_a_new_store_together_all_succeed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_open_store, args=(uri, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert results == ["ok"] * 3


def _log_dataset_together(uri: str, digest: str, barrier, queue) -> None:
    try:
        run = Tracker(uri, "datasets").start("trial")
        barrier.wait(timeout=60)
        run.log_dataset("digits", digest, "kdlab digits")
        run.end()
        queue.put(run.run_id)
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        queue.put(f"{type(exc).__name__}: {exc}")


def runs_logging_a_new_dataset_together(uri: str, rounds: int = 3) -> None:
    """Two processes log the same new dataset on their runs at the same moment (a study's first trials: MLflow looks
    the dataset up, then inserts it, so both insert it), ``rounds`` times: every run ends with the dataset linked."""
    import uuid

    from mlflow import MlflowClient

    ctx = multiprocessing.get_context("fork")
    for _ in range(rounds):
        digest = uuid.uuid4().hex[:16]
        barrier, queue = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_log_dataset_together, args=(uri, digest, barrier, queue)) for _ in range(2)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        assert all(len(r) == 32 for r in results), results  # run ids, not errors
        for run_id in results:
            inputs = MlflowClient(uri).get_run(run_id).inputs.dataset_inputs
            assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("digits", digest)]


def test_runs_that_log_a_new_dataset_together_all_get_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Tracker(uri, "datasets")  # the store and the experiment exist, as in a study
    runs_logging_a_new_dataset_together(uri)


def test_transient_errors_are_retried_and_lasting_ones_named():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "done"

    assert _retry(flaky) == "done" and len(calls) == 3

    def broken():
        raise OSError("disk full")

    with pytest.raises(TrackingError, match="broken failed: OSError: disk full"):
        _retry(broken)


def test_runs_left_running_by_a_dead_process_are_ended_killed(kdlab_home):
    uri = f"sqlite:///{kdlab_home / 'mlflow.db'}"
    tracker = Tracker(uri, "orphans")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          timeout=60).stdout.strip()
    orphan = tracker.start("teacher-mlp-1234", tags={"kdlab.pid": dead, "kdlab.trial_state": "RUNNING"})
    alive = tracker.start("mine")
    Tracker(uri, "another experiment")  # the next command, on any experiment of the store
    run = tracker.client.get_run(orphan.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["kdlab.status_reason"].startswith(f"interrupted: its process {dead} on ")
    assert run.data.tags["kdlab.trial_state"] == "FAIL" and run.data.tags["kdlab.fail_reason"] == "interrupted"
    assert tracker.client.get_run(alive.run_id).info.status == "RUNNING"


def test_mask_hides_only_the_password():
    assert stores.mask("postgresql+psycopg://kd:pa:ss@db:5432/x") == "postgresql+psycopg://kd:***@db:5432/x"
    assert stores.mask("http://host:5000/") == "http://host:5000/"
