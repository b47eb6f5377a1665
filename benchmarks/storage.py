"""The cost of a shared study storage: trial throughput on PostgreSQL vs a journal file, and how long a machine that
joins a running study takes to start its first trial (teacher downloaded, not retrained).

Three measurements, each against a PostgreSQL server and an ``mlflow server`` started here on 127.0.0.1 (the test
suite's helpers, ``tests/servers.py``; PostgreSQL's programs must be installed):

* **claims**: W processes (1, 2, 4) run kdlab's claim loop (``kdlab.study.worker.run_trials``: stale sweep, budget
  count and ``ask`` under the study's lock, owner record, ``tell``) around an objective that only samples three
  params: the storage's own ceiling, trials per minute with no training at all; and its overhead per trial.
* **studies**: ``kdlab study FILE --workers W --storage URL`` on a small real trial (digits, an MLP student, a few
  epochs), journal file vs PostgreSQL, tracking in a local SQLite store either way: throughput = trials / (last
  trial's end - first trial's start), read from the storage.
* **late join**: ``kdlab study`` on machine A (its own KDLAB_HOME) trains the teacher and runs trials; machine B
  (another, empty KDLAB_HOME) starts while A runs: the time from B's start to B's first trial, against A's (which
  trains the teacher).

::

    .venv/bin/python benchmarks/storage.py [--trials 24] [--claims 200] [--repeats 2] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))

import _common as C  # noqa: E402

CLAIMER = textwrap.dedent("""
    import sys, time, optuna
    from kdlab.study.storage import make_storage, storage_locks
    from kdlab.study.trials import StaleTrials
    from kdlab.study.worker import run_trials

    url, name, target = sys.argv[1], sys.argv[2], int(sys.argv[3])
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    on_stale = StaleTrials()
    storage = make_storage(url, on_stale=on_stale)
    study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())
    while not __import__("os").path.exists(sys.argv[4]):  # start together
        time.sleep(0.01)

    def objective(trial):
        return trial.suggest_float("a", 0, 1) + trial.suggest_float("b", 1e-4, 1, log=True) + \\
            trial.suggest_int("c", 1, 8)

    run_trials(study, storage, url, storage_locks(url), objective, target, on_stale=on_stale, poll=0.05)
""")


def study_cfg(trials: int, epochs: int, name: str) -> dict:
    return {
        "data": {"name": "digits", "params": {"test_size": 360, "val_size": 180}},
        "teacher": {"name": "mlp", "params": {"hidden": [128]},
                    "training": {"epochs": 10, "batch_size": 64, "optimizer": {"lr": 0.01}}},
        "student": {"name": "mlp", "params": {"hidden": [32]}},
        "loss": {"name": "kd", "params": {"temperature": 4.0, "alpha": 0.9}},
        "optimizer": {"name": "adam", "lr": 0.01},
        # one torch thread per worker, however many workers: the rows differ only in the storage and the workers
        "training": {"epochs": epochs, "batch_size": 64, "seed": 0, "device": "cpu", "threads": 1},
        "tracking": {"log_model": False},
        "study": {"name": name, "n_trials": trials, "devices": "cpu", "baseline": False, "log_best_model": False,
                  "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"},
                  "search": {"loss.params.temperature": {"type": "float", "low": 1.0, "high": 8.0},
                             "optimizer.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}}},
    }


def write_study(folder: Path, trials: int, epochs: int, name: str) -> Path:
    import yaml

    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study_cfg(trials, epochs, name), sort_keys=False))
    return path


def rate(url: str, name: str) -> tuple[float, int]:
    """Trials per second between the first trial's start and the last one's end, and the number of trials."""
    import optuna

    from kdlab.study.storage import make_storage

    trials = optuna.load_study(study_name=name, storage=make_storage(url)).trials
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials if t.datetime_complete)
    return len(trials) / max(1e-9, (end - start).total_seconds()), len(trials)


def env_for(home: Path) -> dict[str, str]:
    """A machine of its own: its KDLAB_HOME holds its caches too (nothing shared on disk)."""
    env = {k: v for k, v in os.environ.items() if k != "KDLAB_CACHE_DIR"}
    return {**env, "KDLAB_HOME": str(home), "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


def claims(url: str, workers: int, n: int, tag: str) -> float:
    import optuna

    from kdlab.study.storage import make_storage

    name = f"claims-{tag}-{workers}-{time.time_ns()}"
    optuna.create_study(study_name=name, storage=make_storage(url))
    go = Path(tempfile.mkdtemp()) / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, url, name, str(n), str(go)], env=env_for(go.parent))
             for _ in range(workers)]
    time.sleep(3.0 + workers)  # imports done
    go.touch()
    for p in procs:
        p.wait(timeout=900)
    per_s, count = rate(url, name)
    assert count == n, f"{count} trials for a budget of {n}"
    return per_s


def study_run(url: str, workers: int, trials: int, epochs: int, folder: Path, tag: str) -> tuple[float, float]:
    """(trials per second, wall seconds) of one `kdlab study` command."""
    name = f"study-{tag}-{workers}-{time.time_ns()}"
    path = write_study(folder, trials, epochs, name)
    home = Path(tempfile.mkdtemp(prefix="kdlab-bench-storage-"))
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "kdlab", "study", str(path), "-q", "--workers", str(workers),
                           "--storage", url], env=env_for(home), capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-2000:] + done.stderr[-2000:])
    return rate(url, name)[0], wall


def first_trial_after(url: str, name: str, proc: subprocess.Popen, since: float, timeout: float = 900) -> float:
    """Seconds from ``since`` (Unix time) to the start of the first trial run by process ``proc``."""
    import optuna

    from kdlab.study.storage import make_storage

    storage = make_storage(url)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            trials = optuna.load_study(study_name=name, storage=storage).trials
        except KeyError:
            trials = []
        mine = [t for t in trials if t.user_attrs.get("owner", {}).get("pid") == proc.pid]
        if mine:
            return min(t.datetime_start.timestamp() for t in mine) - since
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} ended ({proc.returncode}) without running a trial")
        time.sleep(0.25)
    raise RuntimeError("no trial started")


def late_join(pg, mlflow_uri: str, folder: Path, epochs: int, window: float) -> dict[str, float]:
    """Machine A starts the study (and trains the teacher); machine B joins once A runs its first trial. The budget
    is larger than both can run: the study's deadline (``--timeout``, set by A and kept by B) ends it."""
    url = pg.database("bench")
    name = f"join-{time.time_ns()}"
    path = write_study(folder, 10_000, epochs, name)
    homes = [Path(tempfile.mkdtemp(prefix="kdlab-bench-machine-")) for _ in range(2)]
    args = ["-m", "kdlab", "study", str(path), "-q", "--workers", "1", "--storage", url, "--tracking-uri", mlflow_uri]
    t_a = time.time()
    a = subprocess.Popen([sys.executable, *args, "--timeout", str(window)], env=env_for(homes[0]),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_a = first_trial_after(url, name, a, t_a)
    t_b = time.time()
    # B keeps the deadline A set (and would set its own only if it came after it)
    b = subprocess.Popen([sys.executable, *args, "--timeout", str(window)], env=env_for(homes[1]),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_b = first_trial_after(url, name, b, t_b)
    for p in (a, b):
        p.wait(timeout=1800)
    import mlflow

    client = mlflow.MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name(name)
    teachers = client.search_runs([exp.experiment_id], "tags.kdlab.role = 'teacher'")
    fp = teachers[0].data.tags["kdlab.teacher_fingerprint"]
    meta = homes[1] / "cache" / "teachers" / fp / "meta.json"
    downloaded = meta.exists() and json.loads(meta.read_text())["run_id"] == teachers[0].info.run_id
    return {"first_a": first_a, "first_b": first_b, "teachers": len(teachers), "downloaded": downloaded}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=24, help="trials per `kdlab study` command")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--claims", type=int, default=200, help="trials per claim-loop measurement")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--join-window", type=float, default=180.0,
                    help="late join: seconds (the study's timeout) the two machines run")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.trials, args.epochs, args.claims, args.workers, args.repeats = 2, 1, 6, [1, 2], 1
        args.join_window = 150.0
    from servers import MlflowServer, Postgres

    C.fresh_home("storage")
    folder = Path(tempfile.mkdtemp(prefix="kdlab-bench-storage-"))
    pg = Postgres.from_env() or Postgres.start()
    server = None
    try:
        journal = lambda: f"journal:{tempfile.mkdtemp(prefix='kdlab-bench-journal-')}/optuna.journal"  # noqa: E731
        claim_rate: dict[tuple[str, int], list[float]] = {}
        study_rate: dict[tuple[str, int], list[float]] = {}
        walls: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.repeats):
            for w in args.workers:
                for kind in ("journal", "postgresql"):
                    url = journal() if kind == "journal" else pg.database("bench")
                    claim_rate.setdefault((kind, w), []).append(claims(url, w, args.claims, kind))
                    url = journal() if kind == "journal" else pg.database("bench")
                    r, wall = study_run(url, w, args.trials, args.epochs, folder, kind)
                    study_rate.setdefault((kind, w), []).append(r)
                    walls.setdefault((kind, w), []).append(wall)
        server = MlflowServer(pg.database("mlflow"), folder / "artifacts").wait()
        joins = [late_join(pg, server.uri, folder, args.epochs, window=args.join_window) for _ in range(args.repeats)]
    finally:
        if server is not None:
            server.stop()
        pg.stop()
    rows = []
    for w in args.workers:
        cj, cp = C.median(claim_rate[("journal", w)]), C.median(claim_rate[("postgresql", w)])
        sj, sp = C.median(study_rate[("journal", w)]), C.median(study_rate[("postgresql", w)])
        rows.append([w, cj * 60, cp * 60, 1000 * w / cj, 1000 * w / cp, sj * 60, sp * 60, f"{sp / sj:.2f}x",
                     C.median(walls[("journal", w)]), C.median(walls[("postgresql", w)])])
    lines = [
        f"### Storage: journal file vs PostgreSQL ({args.repeats} repeat(s); claim loop: {args.claims} trials; "
        f"studies: {args.trials} trials of {args.epochs} epochs on digits)",
        "",
        C.table(["worker processes", "claims/min journal", "claims/min PostgreSQL", "ms per claim (each worker), "
                 "journal", "ms per claim (each worker), PostgreSQL", "trials/min journal", "trials/min PostgreSQL",
                 "PostgreSQL / journal", "wall s journal", "wall s PostgreSQL"], rows),
        "",
        "- *claims*: kdlab's claim loop with an objective that only samples (no training): stale sweep, budget count, "
        "`ask`, owner record and `tell` under the study's lock; its rate is the most trials per minute a storage "
        "allows, and `workers / rate` the time each worker spends on the storage per trial.",
        "- *trials*: `kdlab study --workers W` on real (small) trials, tracking in a local SQLite store either way; "
        "throughput between the first trial's start and the last one's end.",
        "",
        "### Late join (teacher fetched, not retrained)",
        "",
        C.table(["", "first trial starts after (s, median)", "all repeats"], [
            ["machine A (trains the teacher)", C.median([j["first_a"] for j in joins]),
             ", ".join(f"{j['first_a']:.1f}" for j in joins)],
            ["machine B (joins while A runs: downloads the teacher and its outputs)",
             C.median([j["first_b"] for j in joins]), ", ".join(f"{j['first_b']:.1f}" for j in joins)],
        ]),
        "",
        f"- Teacher runs in the experiment: {', '.join(str(j['teachers']) for j in joins)} (one per study: trained "
        f"once); machine B's cache holds the downloaded teacher: {all(j['downloaded'] for j in joins)}.",
    ]
    C.report("storage.md", lines, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
