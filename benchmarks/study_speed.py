"""A kdlab study against the same study written the usual way, each run as its own command, alternated.

The same search (temperature, alpha, learning rate of Hinton KD; TPE, seed 0), the same N trials of the same trial
(MNIST-1D default splits, MLP [100, 100], batch 100, E epochs, validation every epoch), the same teacher weights
(trained once beforehand, not timed), MLflow tracking into a new SQLite store on both sides.

* **kdlab**: ``kdlab study FILE -q`` with its defaults (``workers: auto``: one single-threaded worker per core), the
  teacher's outputs computed once in the timed command (their cache is emptied first), ``baseline`` and
  ``log_best_model`` off because the hand-written study does neither. Also run with ``--workers 1``.
* **hand-written**: an Optuna objective with the teacher's forward pass every step, ``DataLoader(TensorDataset)``
  with batch 100 and shuffling, ``loss.item()`` per step, and ``mlflow.log_metric`` per metric per epoch in a
  ``mlflow.start_run(nested=True)`` child run of a study run; torch's default thread count (what users get).

Each side is a fresh process, so the times include interpreter start-up and imports::

    .venv/bin/python benchmarks/study_speed.py [--trials 12] [--epochs 30] [--repeats 2] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEARCH = {
    "loss.params.temperature": {"type": "float", "low": 0.5, "high": 8.0, "log": True},
    "loss.params.alpha": {"type": "float", "low": 0.3, "high": 1.0},
    "optimizer.lr": {"type": "float", "low": 1.0e-3, "high": 2.0e-2, "log": True},
}


# ---------------------------------------------------------------------------------------------------------------
# The hand-written study (runs in its own process: `study_speed.py --hand DIR`)
# ---------------------------------------------------------------------------------------------------------------


def hand_written_study(workdir: Path, trials: int, epochs: int) -> dict:
    import mlflow
    import optuna
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from kdlab_models.nets import CNN1D, CNN1DParams  # the user's own teacher class, in effect

    spec = json.loads((workdir / "spec.json").read_text())
    d = torch.load(workdir / "data.pt", weights_only=True)
    teacher = CNN1D(CNN1DParams(**spec["teacher_params"]), tuple(d["train_x"].shape[1:]), 10)
    teacher.load_state_dict(torch.load(spec["teacher_state"], weights_only=True))
    teacher.eval()
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    mlflow.set_experiment("hand-written-study")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    train = TensorDataset(d["train_x"], d["train_y"])

    def objective(trial: optuna.Trial) -> float:
        T = trial.suggest_float("temperature", 0.5, 8.0, log=True)
        alpha = trial.suggest_float("alpha", 0.3, 1.0)
        lr = trial.suggest_float("lr", 1e-3, 2e-2, log=True)
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
            mlflow.log_params({"temperature": T, "alpha": alpha, "lr": lr, "epochs": epochs, "batch_size": 100,
                               "hidden": "[100, 100]"})
            torch.manual_seed(0)
            student = nn.Sequential(nn.Flatten(), nn.Linear(d["train_x"].shape[1], 100), nn.ReLU(),
                                    nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))
            opt = torch.optim.Adam(student.parameters(), lr=lr)
            loader = DataLoader(train, batch_size=100, shuffle=True)
            best = 0.0
            for epoch in range(epochs):
                student.train()
                total = 0.0
                for xb, yb in loader:
                    with torch.no_grad():
                        tb = teacher(xb)
                    logits = student(xb)
                    ce = F.cross_entropy(logits, yb)
                    kd = F.kl_div(F.log_softmax(logits / T, 1), F.log_softmax(tb / T, 1), log_target=True,
                                  reduction="batchmean") * T * T
                    loss = (1 - alpha) * ce + alpha * kd
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += loss.item() * len(xb)
                student.eval()
                with torch.no_grad():
                    val_logits = student(d["val_x"])
                    acc = (val_logits.argmax(1) == d["val_y"]).float().mean().item()
                    val_loss = F.cross_entropy(val_logits, d["val_y"]).item()
                mlflow.log_metric("train_loss", total / len(train), step=epoch)
                mlflow.log_metric("val_accuracy", acc, step=epoch)
                mlflow.log_metric("val_loss", val_loss, step=epoch)
                best = max(best, acc)
            with torch.no_grad():
                test = (student(d["test_x"]).argmax(1) == d["test_y"]).float().mean().item()
            mlflow.log_metric("test_accuracy", test)
        return best

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    with mlflow.start_run(run_name="study"):
        study.optimize(objective, n_trials=trials)
    return {"best": study.best_value, "threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------------


def prepare(workdir: Path, trials: int, epochs: int, teacher_epochs: int | None) -> Path:
    """Train (or reuse) the teacher, save the data for the hand-written side, write the kdlab study file."""
    import torch

    from kdlab.session import Session
    from kdlab.teachers import get_teacher, teacher_cache_dir

    cfg = C.base_config(epochs=epochs, teacher_epochs=teacher_epochs)
    cfg["tracking"] = {"log_model": False}  # default store (SQLite under KDLAB_HOME), experiment named after the study
    loaded = C.loaded_config(cfg)
    session = Session()
    data = session.get_data(loaded)
    teacher = get_teacher(loaded, data, torch.device("cpu"), session, track=False)
    torch.save({"train_x": data.train.x, "train_y": data.train.y, "val_x": data.val.x, "val_y": data.val.y,
                "test_x": data.test.x, "test_y": data.test.y}, workdir / "data.pt")
    (workdir / "spec.json").write_text(json.dumps({
        "teacher_params": cfg["teacher"]["params"],
        "teacher_state": str(teacher_cache_dir() / teacher.fingerprint / "state_dict.pt"),
    }))
    study = {"name": "bench", "n_trials": trials, "search": SEARCH,
             "objective": {"metric": "val_accuracy", "direction": "maximize"},
             "sampler": {"name": "tpe", "seed": 0}, "pruner": {"name": "none"},
             "baseline": False, "log_best_model": False}
    from kdlab.config import dump_yaml

    path = workdir / "study.yaml"
    path.write_text(dump_yaml({**cfg, "study": study}))
    return path


def run_side(side: str, workdir: Path, study_file: Path, trials: int, epochs: int) -> tuple[float, str]:
    """Wall time of one side as a fresh process, and a note (threads / best value)."""
    home = Path(tempfile.mkdtemp(prefix=f"kdlab-bench-study-{side}-", dir=workdir))
    env = {**os.environ, "KDLAB_HOME": str(home), "KDLAB_CACHE_DIR": str(C.CACHE)}
    if side == "hand":
        cmd = [sys.executable, __file__, "--hand", str(home), "--trials", str(trials), "--epochs", str(epochs)]
        shutil.copy(workdir / "data.pt", home / "data.pt")
        shutil.copy(workdir / "spec.json", home / "spec.json")
    else:
        shutil.rmtree(C.CACHE / "outputs", ignore_errors=True)  # the study computes the teacher's outputs itself
        cmd = [str(Path(sys.executable).parent / "kdlab"), "study", str(study_file), "-q"]
        if side == "kdlab-1":
            cmd += ["--workers", "1"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=home)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{side} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    note = proc.stdout.strip().splitlines()[-1] if side == "hand" else ""
    shutil.rmtree(home, ignore_errors=True)
    return dt, note


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sides", nargs="+", default=["hand", "kdlab", "kdlab-1"], choices=["hand", "kdlab", "kdlab-1"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/study_speed.md")
    ap.add_argument("--hand", metavar="DIR", help=argparse.SUPPRESS)  # internal: run the hand-written side
    args = ap.parse_args(argv)
    if args.hand:
        out = hand_written_study(Path(args.hand), args.trials, args.epochs)
        print(json.dumps(out))
        return 0
    if args.quick:
        args.trials, args.epochs, args.repeats = 2, 1, 1
    C.fresh_home("study")
    workdir = Path(tempfile.mkdtemp(prefix="kdlab-bench-study-"))
    study_file = prepare(workdir, args.trials, args.epochs, 1 if args.quick else None)
    times: dict[str, list[float]] = {s: [] for s in args.sides}
    notes: dict[str, str] = {}
    for r in range(args.repeats):
        order = args.sides if r % 2 == 0 else list(reversed(args.sides))
        for side in order:
            dt, note = run_side(side, workdir, study_file, args.trials, args.epochs)
            times[side].append(dt)
            notes[side] = note or notes.get(side, "")
            print(f"repeat {r} {side:8s} {dt:.1f} s {note}", flush=True)
    shutil.rmtree(workdir, ignore_errors=True)

    labels = {"hand": "hand-written study (teacher forward per step, DataLoader, log_metric per epoch)",
              "kdlab": "`kdlab study` (workers: auto)",
              "kdlab-1": "`kdlab study --workers 1` (one worker, given both cores as 2 threads)"}
    base = C.median(times["hand"]) if "hand" in times else None
    rows = []
    for side in args.sides:
        m = C.median(times[side])
        rows.append([labels[side], m, m / args.trials, f"{m / base:.3f}x" if base else "—"])
    hand_threads = json.loads(notes["hand"]).get("threads") if notes.get("hand") else "?"
    lines = [
        f"### A study of {args.trials} trials, {args.epochs} epochs each ({args.repeats} alternated repeats)",
        "",
        C.table(["side", "median wall s", "s / trial", "vs hand-written"], rows),
        "",
    ]
    if base:
        if "kdlab" in times:
            ratio = C.median(times["kdlab"]) / base
            lines.append(f"- {labels['kdlab']} / hand-written = **{ratio:.3f}x** — {C.verdict(ratio, 0.45)}.")
        if "kdlab-1" in times:
            lines.append(f"- {labels['kdlab-1']} / hand-written = {C.median(times['kdlab-1']) / base:.3f}x "
                         "(for reference; the target is for kdlab's defaults).")
    lines += [
        f"- Threads: the hand-written study ran with torch's default, {hand_threads} thread(s); kdlab's workers "
        "with 1 each under `workers: auto`, a lone worker with every core (`plan_slots`).",
        "- All times (s): " + "; ".join(f"{s} " + ", ".join(f"{v:.1f}" for v in times[s]) for s in args.sides) + ".",
    ]
    C.report('study_speed.md', lines, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
