"""One study across processes and machines: storage locks, trial owners, the budget counted in the storage, stale
trials failed by heartbeat and retried, and whole `kdlab study` processes with separate KDLAB_HOMEs (no shared disk)
joining one study on a real PostgreSQL server and a real MLflow tracking server (tests/servers.py; 127.0.0.1 only).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from test_study import study_config

from kdlab.study.storage import make_storage, storage_locks
from kdlab.study.trials import StaleTrials, counts, owner_alive, this_process
from kdlab.study.worker import run_trials

#: every subprocess of these tests ends within this many seconds, or the test fails
LIMIT = 420


def _popen(args: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            **kw)


def _finish(proc: subprocess.Popen, timeout: float = LIMIT) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"process did not end within {timeout:.0f} s:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    return out


# --- locks and owners -----------------------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from kdlab.study.storage import storage_locks
    lock = storage_locks(sys.argv[1]).lock("study:held")
    lock.acquire()
    print("held", flush=True)
    time.sleep(300)
""")


def _check_lock_dies_with_its_holder(url: str) -> None:
    holder = _popen(["-c", HOLDER, url])
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = storage_locks(url).lock("study:held")
        assert not lock.acquire(blocking=False)  # another process holds it
        other = storage_locks(url).lock("study:other")
        assert other.acquire(blocking=False)  # other keys are independent
        other.release()
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=60)
        # released with its holder: the kernel drops the flock, the server ends the session
        assert lock.acquire(timeout=30)
        lock.release()
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
        holder.communicate(timeout=60)


def test_file_locks_exclude_processes_and_threads_and_die_with_their_holder(tmp_path):
    url = f"journal:{tmp_path / 'optuna.journal'}"
    locks = storage_locks(url)
    first, second = locks.lock("study:x"), locks.lock("study:x")
    assert first.acquire(blocking=False)
    got: list[bool] = []
    thread = threading.Thread(target=lambda: got.append(second.acquire(blocking=False)))
    thread.start()
    thread.join()
    assert got == [False]  # exclusive between threads of one process too (the stale-trial sweeper)
    first.release()
    assert second.acquire(blocking=False)
    second.release()
    _check_lock_dies_with_its_holder(url)


def test_postgres_locks_exclude_and_die_with_their_holder(postgres_url):
    locks = storage_locks(postgres_url)
    first, second = locks.lock("study:x"), locks.lock("study:x")
    assert first.acquire(blocking=False) and not second.acquire(blocking=False)
    first.release()
    assert second.acquire(blocking=False)
    second.release()
    _check_lock_dies_with_its_holder(postgres_url)


def test_owner_alive_tells_live_dead_and_unknown():
    me = this_process()
    assert owner_alive(me) is True
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           timeout=60)
    assert owner_alive({**me, "pid": int(child.stdout)}) is False  # exited
    assert owner_alive({**me, "start": "1"}) is False  # its pid now belongs to another process
    assert owner_alive({**me, "host": "another-machine"}) is None  # cannot tell: never failed for it
    assert owner_alive(None) is None


def test_storage_urls_drivers_and_locks(tmp_path):
    from kdlab.study.storage import driver_url

    assert driver_url("postgresql://u:p@h:5432/db") == "postgresql+psycopg://u:p@h:5432/db"
    assert driver_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert driver_url("mysql://u@h/db") == "mysql+pymysql://u@h/db"
    assert driver_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"  # a driver named: kept
    assert storage_locks(f"journal:{tmp_path / 'j'}").exclusive
    assert storage_locks(f"sqlite:///{tmp_path / 'o.db'}").exclusive
    assert storage_locks("mysql://u@h/db").backend.kind == "mysql"
    assert not storage_locks("grpc://h:1234").exclusive  # cannot lock: the documented bound applies


def test_grace_period_must_span_two_heartbeats(write_config):
    from kdlab.errors import ConfigError
    from kdlab.study.config import load_study_config
    from kdlab_test_helpers import load_config

    path = write_config(study_config(heartbeat_interval=10, grace_period=15))
    with pytest.raises(ConfigError, match="grace_period .15. must be at least twice heartbeat_interval"):
        load_study_config(load_config(path))


# --- the budget in the storage ----------------------------------------------------------------------------------

CLAIMER = textwrap.dedent("""
    import sys, time, optuna
    from kdlab.study.storage import make_storage, storage_locks
    from kdlab.study.trials import StaleTrials
    from kdlab.study.worker import run_trials

    url, name, target, sleep = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    on_stale = StaleTrials()
    storage = make_storage(url, heartbeat_interval=1, grace_period=4, on_stale=on_stale)
    study = optuna.load_study(study_name=name, storage=storage)
    print("ready", flush=True)

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        time.sleep(sleep)
        return x

    print("ran", run_trials(study, storage, url, storage_locks(url), objective, target, on_stale=on_stale,
                            poll=0.2), flush=True)
""")


@pytest.fixture(params=["journal", "postgresql"])
def any_storage(request, tmp_path):
    if request.param == "journal":
        return f"journal:{tmp_path / 'optuna.journal'}"
    return request.getfixturevalue("postgres_url")


def test_n_processes_run_exactly_n_trials(any_storage):
    optuna.create_study(study_name="budget", storage=make_storage(any_storage))
    procs = [_popen(["-c", CLAIMER, any_storage, "budget", "10", "0.3"]) for _ in range(3)]
    outs = [_finish(p) for p in procs]
    ran = [int(out.split("ran ")[1].split()[0]) for out in outs]
    study = optuna.load_study(study_name="budget", storage=make_storage(any_storage))
    assert len(study.trials) == 10 and sum(ran) == 10
    assert {t.state.name for t in study.trials} == {"COMPLETE"}
    assert len({t.user_attrs["owner"]["pid"] for t in study.trials}) >= 2  # the processes shared the work


def test_status_counts_trials_by_machine_and_device(tmp_path):
    from kdlab.study.report import render_status, status

    url = f"journal:{tmp_path / 'optuna.journal'}"
    storage = make_storage(url)
    study = optuna.create_study(study_name="st", storage=storage)

    def objective(trial):
        trial.set_user_attr("device", "cpu")
        return trial.suggest_float("x", 0, 1)

    assert run_trials(study, storage, url, storage_locks(url), objective, 3) == 3
    live = study.ask()
    live.set_user_attr("owner", this_process())
    live.set_user_attr("device", "cuda:1")
    st = status(study, 4)
    assert st["states"] == {"COMPLETE": 3, "RUNNING": 1} and st["finished"] == 3
    host = this_process()["host"]
    assert {(r["host"], r["device"]): r["states"] for r in st["by_place"]} == {
        (host, "cpu"): {"COMPLETE": 3}, (host, "cuda:1"): {"RUNNING": 1}}
    assert [r["number"] for r in st["running"]] == [live.number]
    from rich.console import Console

    console = Console(record=True, width=160)
    render_status(st, console)
    text = console.export_text()
    assert "3 complete, 1 running (3 of 4 counted trials done)" in text and f"running: trial {live.number}" in text


def test_dead_processs_trial_is_failed_by_heartbeat_and_retried_once(postgres_url):
    """A process is SIGKILLed inside a trial: its heartbeat stops, and after the grace period the trial is failed
    and retried once, with the same params, by a process that is still at work."""
    grace = 4
    optuna.create_study(study_name="beat", storage=make_storage(postgres_url))
    victim = _popen(["-c", CLAIMER, postgres_url, "beat", "1", "300"])
    on_stale = StaleTrials()
    storage = make_storage(postgres_url, heartbeat_interval=1, grace_period=grace, on_stale=on_stale)
    study = optuna.load_study(study_name="beat", storage=storage)
    try:
        deadline = time.time() + 120
        while not study.get_trials(states=(optuna.trial.TrialState.RUNNING,)) and time.time() < deadline:
            time.sleep(0.2)
        running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
        assert len(running) == 1, victim.stdout.read() if victim.poll() is not None else "no trial started"
        time.sleep(1.5)  # a heartbeat or two
    finally:
        os.killpg(victim.pid, signal.SIGKILL)
        victim.communicate(timeout=60)
    killed = time.time()
    # the budget (1 trial) is claimed by the dead process's trial: this process waits, and runs its retry
    ran = run_trials(study, storage, postgres_url, storage_locks(postgres_url), lambda t: t.suggest_float("x", 0, 1),
                     1, on_stale=on_stale, poll=0.2)
    failed, retry = study.trials
    assert ran == 1
    assert failed.state.name == "FAIL" and not counts(failed)
    assert failed.datetime_complete.timestamp() - killed < grace + 2 + 10  # within the grace period (+ slack)
    assert retry.state.name == "COMPLETE" and retry.user_attrs["retry_of"] == failed.number
    assert retry.params == failed.params  # the same trial again
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == failed.number


# --- whole `kdlab study` processes on PostgreSQL and an MLflow server ---------------------------------------------


def _study_file(tmp_path: Path, name: str, n_trials: int, epochs: int, **study) -> Path:
    cfg = study_config(n_trials=n_trials, **{"baseline": True, **study})
    cfg["study"]["name"] = name
    cfg["training"]["epochs"] = epochs
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


#: `kdlab study` whose trials numbered FIRST_HELD or more stop after their first epoch until the file GATE exists:
#: the test decides when they go on (or kills the process there), instead of guessing how long start-ups take
GATED = textwrap.dedent("""
    import os, sys, time
    import kdlab
    from kdlab.plugins import get_plugins

    gate, first_held = sys.argv[1], int(sys.argv[2])

    class Gate:
        @kdlab.hookimpl
        def kdlab_epoch_end(self, run, epoch, metrics):
            if run.role == "trial" and run.trial_number is not None and run.trial_number >= first_held:
                deadline = time.time() + 300
                while not os.path.exists(gate) and time.time() < deadline:
                    time.sleep(0.1)

    get_plugins().register(Gate(), "test-gate")
    from kdlab.cli import main

    sys.exit(main(sys.argv[3:]))
""")


def _kdlab_study(path: Path, home: Path, storage: str, tracking: str, *extra: str,
                 gate: tuple[Path, int] | None = None) -> subprocess.Popen:
    """`kdlab study` as a machine of its own would run it: its own KDLAB_HOME (no shared disk)."""
    args = ["study", str(path), "-q", "--storage", storage, "--tracking-uri", tracking, *extra]
    start = ["-c", GATED, str(gate[0]), str(gate[1])] if gate else ["-m", "kdlab"]
    return _popen([*start, *args], env={"KDLAB_HOME": str(home)})


def _wait_for(study_name: str, url: str, test, what: str, procs, timeout: float = 240):
    storage = make_storage(url)
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"a kdlab study ended early ({p.returncode}) while waiting for {what}:\n"
                            f"{p.stdout.read()[-3000:]}")
        try:
            trials = optuna.load_study(study_name=study_name, storage=storage).get_trials()
        except KeyError:
            trials = []
        if test(trials):
            return trials
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def _runs(tracking: str, experiment: str):
    import mlflow

    client = mlflow.MlflowClient(tracking)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def test_two_machines_join_one_study(tmp_path, postgres_url, mlflow_server):
    """A second `kdlab study`, started while the first has trials running, joins the study: exactly n_trials
    trials, none of the first's live trials failed, one teacher run (trained once, downloaded by the second), one
    parent run, every trial a nested run."""
    n, gate = 6, tmp_path / "go"
    path = _study_file(tmp_path, "joined", n, epochs=8)
    homes = [tmp_path / "machine-a", tmp_path / "machine-b"]
    # the first process's two forked workers hold their trials 2 and 3 until the second process runs one of its own
    first = _kdlab_study(path, homes[0], postgres_url, mlflow_server.uri, "--workers", "2", gate=(gate, 2))
    running = _wait_for("joined", postgres_url, lambda ts: sum(t.state.name == "RUNNING" for t in ts) == 2,
                        "the first process's trials", [first])
    second = _kdlab_study(path, homes[1], postgres_url, mlflow_server.uri, "--workers", "1")
    _wait_for("joined", postgres_url,
              lambda ts: any(t.user_attrs.get("owner", {}).get("pid") == second.pid for t in ts),
              "a trial of the second process", [first, second])
    gate.touch()
    out_first, out_second = _finish(first), _finish(second)
    study = optuna.load_study(study_name="joined", storage=make_storage(postgres_url))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * n, (out_first[-2000:], out_second[-2000:])
    first_running = {t.number for t in running if t.state.name == "RUNNING"}
    assert all(study.trials[i].state.name == "COMPLETE" for i in first_running)
    pids = {t.user_attrs["owner"]["pid"] for t in study.trials}
    assert second.pid in pids and len(pids) >= 2  # the joiner ran trials of its own
    client, runs = _runs(mlflow_server.uri, "joined")
    roles = {}
    for r in runs:
        roles.setdefault(r.data.tags.get("kdlab.role"), []).append(r)
    assert len(roles["study"]) == 1 and len(roles["teacher"]) == 1 and len(roles["baseline"]) == 1
    parent, teacher = roles["study"][0], roles["teacher"][0]
    trials = roles["trial"]
    assert sorted(int(r.data.tags["kdlab.trial_number"]) for r in trials) == list(range(n))
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trials)
    assert {r.data.tags["kdlab.teacher_run_id"] for r in trials} == {teacher.info.run_id}
    assert all(r.info.status == "FINISHED" for r in runs)
    # the second machine downloaded the teacher and its outputs instead of training them
    fp = teacher.data.tags["kdlab.teacher_fingerprint"]
    meta = json.loads((homes[1] / "cache" / "teachers" / fp / "meta.json").read_text())
    assert meta["run_id"] == teacher.info.run_id and meta["tracking_uri"] == mlflow_server.uri
    # the outputs with their checksum file, as the local cache keeps them (a damaged download is computed again)
    assert (homes[1] / "cache" / "outputs" / f"{fp}.pt").exists()
    assert json.loads((homes[1] / "cache" / "outputs" / f"{fp}.json").read_text())["teacher"] == fp
    arts = {a.path for a in client.list_artifacts(teacher.info.run_id, "teacher_outputs")}
    assert arts == {f"teacher_outputs/{fp}.pt", f"teacher_outputs/{fp}.json"}
    # `kdlab study status` reads the progress of both machines from the storage
    status = subprocess.run([sys.executable, "-m", "kdlab", "study", "status", str(path), "--storage", postgres_url],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert status.returncode == 0, status.stderr
    assert f"{n} complete" in status.stdout and "trials by machine and device" in status.stdout
    assert "best: trial" in status.stdout


def test_a_killed_machines_trial_is_failed_by_heartbeat_and_retried(tmp_path, postgres_url, mlflow_server):
    """SIGKILL one `kdlab study` mid-trial: its trial becomes FAIL by heartbeat within the grace period and is
    retried (a new trial and a new MLflow run tagged with the trial it retries); the study still ends with exactly
    n_trials COMPLETE + PRUNED, and nothing is left RUNNING in Optuna or MLflow."""
    n, grace = 3, 5
    path = _study_file(tmp_path, "killed", n, epochs=10, heartbeat_interval=1, grace_period=grace, baseline=False)
    # the first process stops inside its second trial (its MLflow run started), where it is killed
    victim = _kdlab_study(path, tmp_path / "machine-a", postgres_url, mlflow_server.uri, "--workers", "1",
                          gate=(tmp_path / "never", 1))
    _wait_for("killed", postgres_url, lambda ts: any(t.state.name == "RUNNING" for t in ts), "a trial", [victim])
    survivor = _kdlab_study(path, tmp_path / "machine-b", postgres_url, mlflow_server.uri, "--workers", "1")
    try:
        trials = _wait_for(
            "killed", postgres_url,
            lambda ts: any(t.user_attrs.get("owner", {}).get("pid") == survivor.pid for t in ts) and
            any(t.state.name == "RUNNING" and t.user_attrs.get("owner", {}).get("pid") == victim.pid for t in ts),
            "both processes at their trials", [victim, survivor])
    finally:
        os.killpg(victim.pid, signal.SIGKILL)
        victim.communicate(timeout=60)
    killed = time.time()
    lost = next(t.number for t in trials if t.state.name == "RUNNING" and t.user_attrs["owner"]["pid"] == victim.pid)
    out = _finish(survivor)
    study = optuna.load_study(study_name="killed", storage=make_storage(postgres_url))
    states = [t.state.name for t in study.trials]
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == n, out[-3000:]
    assert "RUNNING" not in states and "WAITING" not in states
    failed = study.trials[lost]
    assert failed.state.name == "FAIL"
    assert failed.datetime_complete.timestamp() - killed < grace + 2 + 15  # by heartbeat, within the grace period
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == lost)
    assert retry.state.name in ("COMPLETE", "PRUNED") and retry.params == failed.params
    _, runs = _runs(mlflow_server.uri, "killed")
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    by_trial = {r.data.tags["kdlab.trial_number"]: r for r in runs if r.data.tags.get("kdlab.role") == "trial"}
    assert by_trial[str(lost)].info.status == "FAILED"
    assert by_trial[str(lost)].data.tags["kdlab.fail_reason"].startswith("stale:")
    assert by_trial[str(retry.number)].data.tags["kdlab.retry_of"] == str(lost)
    assert len([r for r in runs if r.data.tags.get("kdlab.role") == "study"]) == 1


def test_a_baseline_left_running_by_a_dead_process_is_closed(write_config, kdlab_home):
    from test_study import load_study, mlflow_runs

    from kdlab.study.runner import StudyOptions, run_study
    from kdlab.tracking import Tracker

    path = write_config(study_config(n_trials=1, baseline=False), "orphan.yaml")
    run_study(str(path), StudyOptions(quiet=True))
    parent = load_study(kdlab_home, "orphan").user_attrs["mlflow_parent_run_id"]
    tracker = Tracker(f"sqlite:///{kdlab_home / 'mlflow.db'}", "orphan")
    left = tracker.start("baseline-ce", tags={"kdlab.role": "baseline"}, parent_run_id=parent)  # its process died
    path = write_config(study_config(n_trials=1, baseline=True), "orphan.yaml")
    run_study(str(path), StudyOptions(quiet=True))
    _, runs = mlflow_runs(kdlab_home, "orphan")
    baselines = {r.info.run_id: r for r in runs if r.data.tags.get("kdlab.role") == "baseline"}
    assert len(baselines) == 2 and baselines[left.run_id].info.status == "FAILED"
    assert [r.info.status for k, r in baselines.items() if k != left.run_id] == ["FINISHED"]


def test_server_proxied_artifacts_are_the_servers_beside_a_local_store(tmp_path, mlflow_server):
    """kdlab resolves `mlflow-artifacts:` URIs of a SQLite store to the folder beside it (kdlab/store.py), but never
    takes over a server's proxied artifacts (`mlflow server --serve-artifacts`): a run's artifacts on the server are
    read through it while this process's default tracking URI is a SQLite store, and an artifact URI that names a
    server (`mlflow-artifacts://HOST:PORT/...`) is never looked for beside a SQLite file."""
    from urllib.parse import urlparse

    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    from kdlab.tracking import Tracker

    served = Tracker(mlflow_server.uri, "proxied")
    run = served.start("one")
    note = tmp_path / "note.txt"
    note.write_text("kept by the server")
    run.log_artifact(note, "notes")
    run.end("FINISHED")
    artifact_uri = served.run_info(run.run_id).info.artifact_uri
    assert artifact_uri.startswith("mlflow-artifacts:")
    local_uri = f"sqlite:///{tmp_path / 'kdlab-runs' / 'mlflow.db'}"
    Tracker(local_uri, "local")  # sets this process's default tracking URI
    assert mlflow.get_tracking_uri() == local_uri
    assert isinstance(get_artifact_repository("mlflow-artifacts:/1", tracking_uri=local_uri), LocalArtifactRepository)
    # the server's copy, by the server's URI and by an artifact URI that names the server
    assert served.download(run.run_id, "notes/note.txt").read_text() == "kept by the server"
    named = f"mlflow-artifacts://127.0.0.1:{mlflow_server.port}{urlparse(artifact_uri).path}"
    (tmp_path / "dl").mkdir()
    got = get_artifact_repository(named, tracking_uri=mlflow_server.uri).download_artifacts(
        "notes/note.txt", dst_path=str(tmp_path / "dl"))
    assert Path(got).read_text() == "kept by the server"
    # a URI naming a server, asked under the SQLite store: MLflow's own error, never the folder beside the file
    with pytest.raises(MlflowException, match="tracking URI must be a valid http"):
        get_artifact_repository(named)
    assert not (tmp_path / "kdlab-runs" / "artifacts").exists()


def test_runs_that_log_a_new_dataset_together_on_a_server_all_get_it(mlflow_server):
    """The dataset race of a study's first trials (tests/test_store_checks.py) against a tracking server on
    PostgreSQL, where the loser's insert is a duplicate key of `dataset_pk`."""
    from test_store_checks import runs_logging_a_new_dataset_together

    from kdlab.tracking import Tracker

    Tracker(mlflow_server.uri, "datasets")
    runs_logging_a_new_dataset_together(mlflow_server.uri)
