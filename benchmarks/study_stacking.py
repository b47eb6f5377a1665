"""Trials per minute of real studies with stacked trials (``--stack auto``) against one trial at a time per worker.

Runs ``kdlab study FILE -q`` on the bundled study files (``studies/mnist1d.yaml``, ``studies/digits.yaml``) in fresh
processes, alternating the two settings within each repeat, each in a fresh KDLAB_HOME (new Optuna storage and
MLflow store) with the shared cache (the data and the trained teacher with its outputs are ready before the first
timed command: the teacher is not part of either setting's time). The study's baseline run is switched off in both
(``study.baseline=false``): it does not depend on the setting.

* **Trials per minute**: finished trials (complete, pruned or failed) / (last trial's end - first trial's start), read
  from the study's Optuna storage: start-up and preparation left out. The ratio is taken per repeat (the two settings
  ran back to back) and its median reported. The wall time of the whole command is shown too.
* Repeat ``r`` runs both settings with the sampler's seed ``r`` (``study.sampler.seed``): the repeats spread the
  searches, so that the accuracies show the noise of a search, not one seeded search three times.
* **Search quality**: the best validation accuracy of each run and the distribution (median, min-max) of the
  validation accuracy of all complete trials, per setting, over the repeats: stacking asks K trials before any of them
  reports, so its search is less sequential than one trial at a time.

    .venv/bin/python benchmarks/study_stacking.py [--studies mnist1d digits] [--repeats 3] [--write]
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

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"off": ("one trial at a time per worker (`stack: 1`)", ["--stack", "1"]),
            "auto": ("stacked (`--stack auto`)", ["--stack", "auto"]),
            # what the time stacking saves buys: a search of twice the trials (``--n-trials`` 2 x the file's)
            "auto2": ("stacked, twice the trials (`--stack auto --n-trials 2N`)", ["--stack", "auto"])}


def run_study(study_file: Path, extra: list[str], overrides: list[str]) -> dict:
    """One ``kdlab study`` command in a fresh home; its trial throughput, wall time and accuracies."""
    import optuna

    home = Path(tempfile.mkdtemp(prefix="kdlab-bench-stacking-"))
    env = {**os.environ, "KDLAB_HOME": str(home), "KDLAB_CACHE_DIR": str(C.CACHE)}
    sets = [a for o in ["study.name=bench", "study.baseline=false", *overrides] for a in ("--set", o)]
    cmd = [sys.executable, "-m", "kdlab", "study", str(study_file), "-q", *sets, *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"kdlab study {study_file.name} {' '.join(extra)} failed ({proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from kdlab.study.storage import make_storage

    study = optuna.load_study(study_name="bench", storage=make_storage(f"journal:{home / 'optuna.journal'}"))
    done = [t for t in study.trials if t.state.is_finished()]
    complete = [t for t in done if t.state == optuna.trial.TrialState.COMPLETE]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    shutil.rmtree(home, ignore_errors=True)
    return {"wall": wall, "rate": len(done) / span * 60, "trials": len(done), "pruned":
            sum(t.state == optuna.trial.TrialState.PRUNED for t in done),
            "best": max(t.value for t in complete), "values": [t.value for t in complete],
            "stacks": sorted({t.user_attrs.get("stack", "-") for t in done})}


def section(name: str, runs: dict[str, list[dict]], n_trials: int) -> list[str]:
    """The report's section of one study file: ``runs`` maps each setting to its results per repeat."""
    ratios = [a["rate"] / o["rate"] for a, o in zip(runs["auto"], runs["off"])]
    walls = [a["wall"] / o["wall"] for a, o in zip(runs["auto2"], runs["off"])]
    gains = [a["best"] - o["best"] for a, o in zip(runs["auto2"], runs["off"])]
    rows = []
    for key, (label, _) in SETTINGS.items():
        rs = runs[key]
        values = sorted(v for res in rs for v in res["values"])
        rows.append([label, f"{C.median([x['rate'] for x in rs]):.2f}",
                     " / ".join(f"{x['rate']:.2f}" for x in rs), f"{C.median([x['wall'] for x in rs]):.0f}",
                     " / ".join(str(x["trials"]) for x in rs), " / ".join(f"{x['best']:.3f}" for x in rs),
                     f"{C.median(values):.3f} ({values[0]:.3f}-{values[-1]:.3f}, n={len(values)})"])
    return [f"## `studies/{name}.yaml`", "",
            C.table(["setting", "trials/min (median)", "per repeat", "wall s (median)", "trials",
                     "best val accuracy per repeat", "val accuracy of complete trials: median (min-max)"], rows), "",
            f"Stacked / unstacked trials per minute, per repeat: {', '.join(f'{x:.2f}x' for x in ratios)}; "
            f"median **{C.median(ratios):.2f}x**: {C.verdict(C.median(ratios), 3.0, at_most=False)}.", "",
            f"Stacked with twice the trials ({2 * n_trials}): its wall time / the unstacked study's, per repeat: "
            f"{', '.join(f'{x:.2f}' for x in walls)}; its best validation accuracy minus the unstacked study's, "
            f"per repeat: {', '.join(f'{x:+.3f}' for x in gains)}.", ""]


def warm(study_file: Path, overrides: list[str]) -> None:
    """Data, teacher and its outputs into the shared cache: one trial of one epoch, not timed."""
    run_study(study_file, ["--n-trials", "1"], [*overrides, "training.epochs=1"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", nargs="+", default=["mnist1d", "digits"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/study_stacking.md")
    args = ap.parse_args(argv)
    overrides: list[str] = []
    if args.quick:
        args.studies, args.repeats = ["digits"], 1
        overrides = ["study.n_trials=4", "training.epochs=2", "teacher.training.epochs=1", "study.timeout=null"]
    C.fresh_home("stacking")
    lines = ["# Stacked trials in real studies: trials per minute, `--stack auto` vs one trial at a time", "",
             "`benchmarks/study_stacking.py`: each study file run as `kdlab study FILE -q --set study.baseline=false` "
             "in fresh processes and fresh stores, the two settings back to back in every repeat (order alternated); "
             "the teacher and data cached before. Trials/min = finished trials / (last trial's end - first trial's "
             "start), from the Optuna storage. Workers: the file's (`auto`: one per core). Repeat r runs both settings "
             "with `study.sampler.seed=r`.", ""]
    for name in args.studies:
        study_file = ROOT / "studies" / f"{name}.yaml"
        warm(study_file, overrides)
        runs: dict[str, list[dict]] = {k: [] for k in SETTINGS}
        n_trials = 4 if args.quick else yaml.safe_load(study_file.read_text())["study"]["n_trials"]
        for r in range(args.repeats):
            seeded = [*overrides, f"study.sampler.seed={r}"]  # repeats differ by the sampler's seed, settings do not
            for key in (list(SETTINGS) if r % 2 == 0 else list(reversed(SETTINGS))):
                extra = [*SETTINGS[key][1], *(["--n-trials", str(2 * n_trials)] if key == "auto2" else [])]
                res = run_study(study_file, extra, seeded)
                runs[key].append(res)
                print(f"{name} repeat {r} {key}: {res['trials']} trials ({res['pruned']} pruned), "
                      f"{res['rate']:.2f} trials/min, wall {res['wall']:.0f} s, best val {res['best']:.4f}, "
                      f"stacks {res['stacks'][:4]}", flush=True)
        lines += section(name, runs, n_trials)
    C.report("study_stacking.md", lines, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
