"""Peak memory of a run as the data grows 10x: streamed (``stream: true``, images read lazily through the loader)
against the same images held in memory.

Image folders of 32x32 PNGs generated on disk (10 classes) at two sizes, the larger 10x the smaller; each run is a
fresh process (``kdlab run``'s code path: a ``cnn2d`` teacher trained 1 epoch, its outputs cached, a ``cnn2d``
student distilled 1 epoch, crop + flip augmentation, 2 loader workers, tracking off) whose peak resident memory
(``ru_maxrss``) is read::

    .venv/bin/python benchmarks/memory.py [--per-class 200] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import images as I  # noqa: E402


def child(root: str, stream: bool) -> None:
    """One run in this process; prints its peak RSS and its largest child's (MiB) as JSON."""
    import torch

    torch.set_num_threads(1)
    from kdlab.modes import Session, run

    cfg = I.config(Path(root), epochs=1, teacher_epochs=1, size=32, workers=2)
    cfg["data"]["params"]["stream"] = stream
    cfg["teacher"] = {"name": "cnn2d", "params": {"channels": [8, 16]}, "training": {"epochs": 1, "batch_size": 64}}
    cfg["data"]["augment"] = cfg["data"]["augment"][:2]
    cfg["tracking"]["enabled"] = False
    result = run(C.loaded_config(cfg), session=Session())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mib": peak, "test_accuracy": result.metrics["test_accuracy"]}))


def measure(root: Path, stream: bool) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--child", str(root), *(["--stream"] if stream else [])],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=200, help="images per class of the smaller folder")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/memory.md")
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.stream)
        return 0
    if args.quick:
        args.per_class = 3
    C.fresh_home("memory")
    sizes = [args.per_class, 10 * args.per_class]
    roots = {n: I.make_images(C.CACHE / f"images-{n}x10-32px", 10, n, 32) for n in sizes}
    results: dict[tuple[bool, int], dict] = {}
    for stream in (True, False):
        for n in sizes:
            results[(stream, n)] = measure(roots[n], stream)
            print(stream, n, results[(stream, n)], flush=True)
    rows = []
    for stream in (True, False):
        small, large = results[(stream, sizes[0])], results[(stream, sizes[1])]
        growth = large["peak_mib"] / small["peak_mib"] - 1
        rows.append(["streamed (`stream: true`)" if stream else "in memory", small["peak_mib"], large["peak_mib"],
                     f"{growth:+.1%}"])
    stream_growth = results[(True, sizes[1])]["peak_mib"] / results[(True, sizes[0])]["peak_mib"] - 1
    lines = [
        f"### Peak memory as the data grows 10x ({10 * sizes[0]:,} -> {10 * sizes[1]:,} images of 32x32, one "
        "process per run, CPU)",
        "",
        C.table(["data", f"peak RSS MiB, {10 * sizes[0]:,} images", f"peak RSS MiB, {10 * sizes[1]:,} images",
                 "growth"], rows),
        "",
        f"- **Streamed: peak RSS {stream_growth:+.1%} for 10x the images** — "
        f"{'met' if abs(stream_growth) <= 0.10 else 'MISSED'} (target: within 10%).",
        "- Each run: a `cnn2d` teacher trained 1 epoch and its outputs over every split cached (for streamed data "
        "as memory-mapped float16 files), a `cnn2d` student distilled 1 epoch with crop + flip, 2 loader workers "
        "(in-memory data does not use them). Peak RSS is the run process's `ru_maxrss` (the loader workers are "
        "separate processes; they hold a batch or two each).",
    ]
    C.report("memory.md", lines, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
