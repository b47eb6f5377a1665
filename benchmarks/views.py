"""``teacher.mode: views`` against ``live`` under augmentation: a study trial's time when the teacher's outputs for
K seeded views per example were computed once (what a study prepares for all its trials) against running the
teacher on every augmented batch, side by side in one process.

The trial: an image folder of 32x32 PNGs held in memory (10 classes), random crop (padding 4) + flip +
normalisation on the device, kdlab-vision's CIFAR ``resnet56`` teacher (0.86M parameters; trained once, untimed),
a ``cnn2d`` [16, 32] student, Hinton KD, batch 64, validation every epoch; :func:`kdlab.modes.run` with a warm
:class:`~kdlab.session.Session` as a study worker has, tracking off. The views (K of them) are computed once before
the timed trials, as ``kdlab study`` does in its preparation; that one-time cost is reported beside the ratio::

    .venv/bin/python benchmarks/views.py [--per-class 150] [--epochs 3] [--views 4] [--repeats 3] [--write]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import images as I  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=150)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--teacher", default="resnet56")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/views.md")
    args = ap.parse_args(argv)
    size = 32
    if args.quick:
        args.per_class, args.epochs, args.views, args.repeats, size, args.teacher = 6, 1, 2, 1, 8, "resnet20"
    C.fresh_home("views")
    import torch

    torch.set_num_threads(1)
    from kdlab.modes import RunOptions, Session, run
    from kdlab.teachers import get_teacher
    from kdlab.teachers.outputs import prepare_outputs

    root = I.make_images(C.CACHE / f"images-{args.per_class}x10-{size}px", 10, args.per_class, size)
    loaded = {}
    for mode in ("live", "views"):
        cfg = I.config(root, epochs=args.epochs, teacher_epochs=1, size=size, workers=0)
        cfg["data"]["params"]["stream"] = False
        cfg["teacher"].update({"name": args.teacher, "mode": mode, "views": args.views})
        cfg["tracking"]["enabled"] = False
        loaded[mode] = C.loaded_config(cfg, f"views-{mode}")
    session = Session()
    dev = torch.device("cpu")
    data = session.get_data(loaded["views"])
    t_teacher, teacher = C.timed(lambda: get_teacher(loaded["views"], data, dev, session, track=False))
    t_views, _ = C.timed(lambda: prepare_outputs(loaded["views"], teacher, data, dev, session))
    for mode in ("live", "views"):  # warm-up, untimed
        run(loaded[mode], RunOptions(role="trial"), session)
    times: dict[str, list[float]] = {"live": [], "views": []}
    accs: dict[str, list[float]] = {"live": [], "views": []}
    order = ["live", "views"]
    for r in range(args.repeats):
        for mode in (order if r % 2 == 0 else list(reversed(order))):
            dt, res = C.timed(lambda mode=mode: run(loaded[mode], RunOptions(role="trial"), session))
            times[mode].append(dt)
            accs[mode].append(res.metrics["test_accuracy"])
            print(f"repeat {r} {mode:5s} {dt:.2f} s (test accuracy {res.metrics['test_accuracy']:.3f})", flush=True)
    live, views = C.median(times["live"]), C.median(times["views"])
    speedup = live / views
    saved = live - views
    n = len(data.train)
    rows = [
        ["`teacher.mode: live` (teacher forward on every augmented batch)", live, C.median(accs["live"]), "1.00x"],
        [f"`teacher.mode: views` (K={args.views} views computed once, replayed)", views, C.median(accs["views"]),
         f"{speedup:.2f}x"],
    ]
    lines = [
        f"### Teacher views vs a live teacher ({args.repeats} alternated repeats, {args.epochs} epochs of {n} "
        f"augmented {size}x{size} images, teacher `{args.teacher}`, 1 thread, CPU)",
        "",
        C.table(["teacher", "trial s (median)", "test accuracy", "trial speed-up"], rows),
        "",
        f"- **views / live: a trial runs {speedup:.2f}x faster** once the views exist.",
        f"- Paid once per study (and shared by every trial and worker process through the cache): the views, "
        f"{t_views:.1f} s for {args.views} views of {n} images ({args.views * n} teacher forward passes); the "
        f"teacher's training, {t_teacher:.1f} s, is paid by both modes.",
        f"- Break-even: the views pay for themselves after {t_views / saved:.1f} trials of {args.epochs} epochs "
        f"(each saves {saved:.1f} s); a study of 30 such trials spends {30 * live:.0f} s with a live teacher and "
        f"{t_views + 30 * views:.0f} s with views ({30 * live / (t_views + 30 * views):.2f}x)." if saved > 0 else
        "- The views did not make trials faster here.",
        "- All times (s): " + "; ".join(f"{m} " + ", ".join(f"{v:.2f}" for v in times[m]) for m in order) + ".",
        "- Speed only: the teacher is trained for 1 epoch (untimed), too little to teach anything on these "
        "synthetic images, so both students stay near chance here; the modes' accuracy is compared in "
        "`tests/test_views.py` (views replay exactly what a live teacher gives on the same views) and "
        "`results/zoo_kd.md`. Views repeat a finite set of augmentations (K per image), live sees a new one every "
        "epoch.",
    ]
    C.report("views.md", lines, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
