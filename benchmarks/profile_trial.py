"""Where the time of one kdlab trial goes: the benchmark trial of ``overhead.py`` (tracking on) under cProfile,
summarised by phase (the step loop's forward, loss, backward and optimizer; per-epoch validation; MLflow; the rest),
plus torch.profiler's top operators over the same trial::

    .venv/bin/python benchmarks/profile_trial.py [--epochs 30] [--top 15] [--write]

cProfile adds overhead to every Python call, so the shares are approximate (it inflates Python-heavy parts such as
MLflow's ORM); the wall time without the profiler is printed for reference.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

#: phases by (file suffix, function name) of the frames that cProfile reports cumulatively
PHASES = [
    ("student forward", [("kdlab_models/nets.py", "forward")]),
    ("loss (Hinton KD)", [("kdlab_losses/logits.py", "forward")]),
    ("backward", [("torch/_tensor.py", "backward")]),
    ("optimizer step", [("torch/optim/optimizer.py", "wrapper")]),
    ("validation each epoch (predict)", [("kdlab/training.py", "predict")]),
    ("MLflow (all client calls)", [("kdlab/tracking.py", "_retry")]),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/profile.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.top = 1, 5
    C.fresh_home("profile")
    import torch

    torch.set_num_threads(1)
    from kdlab.modes import RunOptions, Session, run

    loaded = C.loaded_config(C.base_config(epochs=args.epochs, teacher_epochs=1 if args.quick else None))
    session = Session()
    tracker = session.tracker(loaded)
    parent = tracker.start("study-bench").run_id

    def trial(i: int):
        return run(loaded, RunOptions(role="trial", parent_run_id=parent, run_name=f"trial-{i}",
                                      trial_number=i, log_model=False, params={"trial_number": i}), session)

    trial(0)  # teacher, outputs, warm-up
    plain = []
    for i in range(3):
        t0 = time.perf_counter()
        trial(1 + i)
        plain.append(time.perf_counter() - t0)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    result = trial(10)
    prof.disable()
    total = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    rows, covered = [], 0.0
    for label, keys in PHASES:
        cum = sum(v[3] for (file, _, func), v in stats.stats.items()
                  if any(file.endswith(f) and func == fn for f, fn in keys))
        covered += cum
        rows.append([label, cum, f"{cum / total:.0%}"])
    rows.append(["the rest (fit loop's own code, slicing, run set-up, artifacts)", total - covered,
                 f"{(total - covered) / total:.0%}"])
    steps = args.epochs * -(-len(next(iter(session.data.values())).train) // 100)

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as tprof:
        trial(11)
    averages = tprof.key_averages()
    ops = averages.table(sort_by="self_cpu_time_total", row_limit=args.top)
    syncs = sum(e.count for e in averages if e.key == "aten::item")
    n_params = len(list(result.student.parameters()))
    n_opt = n_params * steps
    epochs = args.epochs

    lines = [
        f"### Profile of one trial ({args.epochs} epochs, {steps} steps, 1 thread, tracking on)",
        "",
        f"Wall time without a profiler: median {C.median(plain):.3f} s ({C.median(plain) / steps * 1e6:.0f} µs per "
        f"step, all included); under cProfile {total:.3f} s. Test accuracy {result.metrics['test_accuracy']:.4f}.",
        "",
        C.table(["phase (cProfile, cumulative)", "s", "share"], rows),
        "",
        f"Host reads: {syncs} `aten::item` calls over the whole trial ({steps} steps, {epochs} epochs). "
        f"{n_opt} of them ({n_params} parameter tensors x {steps} steps) are inside torch's Adam step, one per "
        "parameter tensor per step, on CPU tensors (no device sync; a hand-written loop has the same); the other "
        f"{syncs - n_opt} are kdlab's final evaluation. kdlab's step loop reads nothing back: per-step loss terms stay "
        "on the device and are read once per epoch (one `tolist()` with the validation metrics).",
        "",
        "torch.profiler, top operators by self CPU time:",
        "",
        "```",
        ops.strip(),
        "```",
    ]
    C.report('profile.md', lines, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
