"""Trial throughput of a kdlab study with 2 worker processes against 1, and each worker's peak memory.

The same study (the benchmark trial of ``overhead.py``, N trials of E epochs, random sampler so that every
configuration does the same work, no pruning) runs as ``kdlab study FILE -q --workers W`` in fresh processes:

* ``1 worker, 1 thread`` (``--set training.threads=1``): the unit of the scaling ratio;
* ``1 worker, 2 threads`` (what ``--workers 1`` gives on 2 cores: ``plan_slots`` hands a lone worker every core);
* ``2 workers, 1 thread each`` (the default ``workers: auto`` on 2 cores).

Throughput = trials / (last trial's end - first trial's start), read back from the study's Optuna storage, so the
start-up and the one-off preparation (data, teacher outputs) are left out; the wall time of the whole command is shown
too. Peak resident memory (``VmHWM``) of the main process and of each worker process is polled from ``/proc``::

    .venv/bin/python benchmarks/workers.py [--trials 12] [--epochs 30] [--repeats 2] [--write]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

CONFIGS = {
    "1x1": ("1 worker, 1 thread", ["--workers", "1", "--set", "training.threads=1"]),
    "1x2": ("1 worker, 2 threads (`--workers 1`)", ["--workers", "1"]),
    "2x1": ("2 workers, 1 thread each (`workers: auto`)", ["--workers", "2"]),
}


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def hwm_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_study(study_file: Path, extra: list[str]) -> tuple[float, float, int, dict[str, float]]:
    """Wall time, trial throughput (trials/s), trials completed, and peak RSS (MiB) by process role."""
    import optuna

    home = Path(tempfile.mkdtemp(prefix="kdlab-bench-workers-"))
    env = {**os.environ, "KDLAB_HOME": str(home), "KDLAB_CACHE_DIR": str(C.CACHE)}
    cmd = [str(Path(sys.executable).parent / "kdlab"), "study", str(study_file), "-q", *extra]
    peaks: dict[int, float] = {}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=home)
    while proc.poll() is None:
        for pid in [proc.pid, *children(proc.pid)]:
            if (v := hwm_mib(pid)) is not None:
                peaks[pid] = max(peaks.get(pid, 0.0), v)
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    output = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"kdlab study {' '.join(extra)} failed ({proc.returncode}):\n{output[-3000:]}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="bench", storage=JournalStorage(JournalFileBackend(str(home / "optuna.journal"))))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    shutil.rmtree(home, ignore_errors=True)
    roles = {"main": peaks.pop(proc.pid, 0.0)}
    # the spawn start method adds a resource tracker (small); workers are the big children
    workers = sorted(peaks.values(), reverse=True)
    for i, v in enumerate(workers):
        roles[f"child{i}"] = v
    return wall, len(done) / span, len(done), roles


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/workers.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.trials, args.epochs, args.repeats = 2, 1, 1
    C.fresh_home("workers")
    workdir = Path(tempfile.mkdtemp(prefix="kdlab-bench-workers-"))
    cfg = C.base_config(epochs=args.epochs, teacher_epochs=1 if args.quick else None)
    cfg["tracking"] = {"log_model": False}
    # warm the shared cache (data, teacher, teacher outputs): not part of the throughput
    from kdlab.engine import RunOptions, Session, run

    warm = C.base_config(epochs=1, teacher_epochs=cfg["teacher"]["training"]["epochs"])
    warm["tracking"]["enabled"] = False
    run(C.loaded_config(warm), RunOptions(), Session())
    from kdlab.config import dump_yaml

    study = {"name": "bench", "n_trials": args.trials, "sampler": {"name": "random", "seed": 0},
             "pruner": {"name": "none"}, "baseline": False, "log_best_model": False,
             "search": {"loss.params.temperature": {"type": "float", "low": 1.0, "high": 8.0, "log": True},
                        "loss.params.alpha": {"type": "float", "low": 0.3, "high": 1.0}}}
    study_file = workdir / "study.yaml"
    study_file.write_text(dump_yaml({**cfg, "study": study}))

    rate: dict[str, list[float]] = {k: [] for k in args.configs}
    walls: dict[str, list[float]] = {k: [] for k in args.configs}
    mem: dict[str, dict[str, float]] = {}
    for r in range(args.repeats):
        for key in (args.configs if r % 2 == 0 else list(reversed(args.configs))):
            wall, trials_per_s, n, roles = run_study(study_file, CONFIGS[key][1])
            rate[key].append(trials_per_s)
            walls[key].append(wall)
            mem[key] = {k: max(v, mem.get(key, {}).get(k, 0.0)) for k, v in roles.items()}
            print(f"repeat {r} {key}: {n} trials, {trials_per_s * 60:.1f} trials/min, wall {wall:.1f} s, "
                  f"peak RSS {', '.join(f'{k} {v:.0f}' for k, v in roles.items())} MiB", flush=True)
    shutil.rmtree(workdir, ignore_errors=True)

    unit = C.median(rate["1x1"]) if "1x1" in rate else None
    rows = []
    for key in args.configs:
        m = C.median(rate[key])
        roles = mem[key]
        workers = [v for k, v in roles.items() if k.startswith("child") and v > 100]
        rows.append([CONFIGS[key][0], m * 60, f"{m / unit:.2f}x" if unit else "—", C.median(walls[key]),
                     f"{roles['main']:.0f}", ", ".join(f"{v:.0f}" for v in workers) or "(in the main process)"])
    lines = [
        f"### Workers: {args.trials} trials of {args.epochs} epochs ({args.repeats} alternated repeats)",
        "",
        C.table(["configuration", "trials / min (median)", "vs 1 worker, 1 thread", "wall s (whole command)",
                 "peak RSS main MiB", "peak RSS per worker MiB"], rows),
        "",
    ]
    if unit and "2x1" in rate:
        ratio = C.median(rate["2x1"]) / unit
        lines.append(f"- 2 workers / 1 worker (1 thread each) = **{ratio:.2f}x** — {C.verdict(ratio, 1.7, at_most=False)}.")
    if "1x2" in rate and "2x1" in rate:
        lines.append(f"- 2 workers / 1 worker with 2 threads (`--workers 1`) = "
                     f"**{C.median(rate['2x1']) / C.median(rate['1x2']):.2f}x**.")
    lines += [
        "- All rates (trials/min): " + "; ".join(f"{k} " + ", ".join(f"{v * 60:.1f}" for v in rate[k])
                                                 for k in args.configs) + ".",
        "- With one worker the trials run in the main process; peak RSS per worker is the workers' `VmHWM`; small "
        "children (the multiprocessing resource tracker) are left out.",
        "",
        f"Machine: {C.machine()}.",
        "",
    ]
    text = "\n".join(lines)
    C.report('workers.md', text, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
