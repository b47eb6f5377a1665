"""The speed switches of a run config on this machine: ``training.precision: bf16`` (autocast) and
``training.compile: true`` (``torch.compile`` of the student), against the default fp32 eager trial.

The benchmark trial of ``overhead.py`` (tracking off: only the training is compared), run twice per switch in one
process: the first run includes compilation, the second shows the steady state a study worker reaches::

    .venv/bin/python benchmarks/switches.py [--epochs 30] [--write]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

SWITCHES = {
    "fp32, eager (default)": {},
    "`precision: bf16`": {"precision": "bf16"},
    "`compile: true`": {"compile": True},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/switches.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.no_compile = 1, True
    C.fresh_home("switches")
    import torch

    torch.set_num_threads(args.threads)
    from kdlab.modes import RunOptions, Session, run

    session = Session()
    rows = []
    for label, training in SWITCHES.items():
        if args.no_compile and training.get("compile"):
            continue
        cfg = C.base_config(epochs=args.epochs, teacher_epochs=1 if args.quick else None)
        cfg["tracking"]["enabled"] = False
        cfg["training"].update(training)
        loaded = C.loaded_config(cfg)
        times, result = [], None
        for _ in range(2):
            t0 = time.perf_counter()
            result = run(loaded, RunOptions(), session)
            times.append(time.perf_counter() - t0)
        rows.append([label, times[0], times[1], result.metrics["test_accuracy"], result.fit.history[-1]["train_loss"]])
        print(rows[-1], flush=True)
    base = rows[0][2]
    rows = [r + [f"{r[2] / base:.2f}x"] for r in rows]
    lines = [
        f"### Speed switches ({args.epochs} epochs, {args.threads} thread(s), tracking off, CPU)",
        "",
        C.table(["switch", "first run s", "second run s", "test accuracy", "final train loss", "second vs default"],
                rows),
    ]
    C.report('switches.md', lines, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
