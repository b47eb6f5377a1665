"""Overhead of one kdlab trial over the fastest loop a user could write by hand, in one process.

Both sides do the same work: Hinton KD (T=4, alpha=0.9) from cached teacher logits, MNIST-1D with its default
splits (3,500 train / 500 val / 1,000 test), an MLP student with two hidden layers of 100, Adam, batch 100, 30 epochs,
an epoch = one permutation and index slices, validation accuracy every epoch, the best epoch's weights kept, test
accuracy at the end. kdlab's side is :func:`kdlab.modes.run` with a :class:`~kdlab.session.Session` that already holds
the data, the teacher and its outputs (as a study worker's does), tracking on (a nested MLflow run in a temporary
SQLite store, per-epoch metrics, params, tags, config and weights; ``log_model`` off). The hand-written side is a plain
PyTorch loop over the same tensors, no tracking. The sides alternate; the table gives medians and the ratio::

    .venv/bin/python benchmarks/overhead.py [--repeats 5] [--epochs 30] [--threads 1] [--write]

``--quick`` runs tiny sizes (for the smoke test). ``--write`` saves the table to ``benchmarks/results/overhead.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def hand_written_trial(x, y, t, val_x, val_y, test_x, test_y, *, epochs: int, batch_size: int, lr: float,
                       temperature: float, alpha: float, seed: int, fused: bool = False) -> float:
    """The loop a careful user writes: cached teacher logits, index slicing, no DataLoader, no tracking (with
    ``fused``, also torch's fused Adam, as kdlab uses)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(x.shape[1], 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(),
                          nn.Linear(100, 10)).to(x.device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, **({"fused": True} if fused else {}))
    gen = torch.Generator().manual_seed(seed)
    n, T = len(x), temperature
    best, best_state = -1.0, None
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen).to(x.device)
        xs, ys, ts = x[perm], y[perm], t[perm]
        for i in range(0, n, batch_size):
            xb, yb, tb = xs[i:i + batch_size], ys[i:i + batch_size], ts[i:i + batch_size]
            logits = model(xb)
            ce = F.cross_entropy(logits, yb)
            kd = F.kl_div(F.log_softmax(logits / T, 1), F.log_softmax(tb / T, 1), log_target=True,
                          reduction="batchmean") * (T * T)
            loss = (1 - alpha) * ce + alpha * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.inference_mode():
            acc = (model(val_x).argmax(1) == val_y).float().mean().item()
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    with torch.inference_mode():
        return (model(test_x).argmax(1) == test_y).float().mean().item()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both sides (a study worker has 1)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (both sides; data resident on the device)")
    ap.add_argument("--no-track", action="store_true", help="kdlab side without MLflow (isolates tracking cost)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/overhead.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.epochs = 1, 2
    home = C.fresh_home("overhead")
    import torch

    torch.set_num_threads(args.threads)
    from kdlab.modes import RunOptions, Session, run

    cfg = C.base_config(epochs=args.epochs, teacher_epochs=1 if args.quick else None,
                        **{"training.device": args.device})
    if args.no_track:
        cfg["tracking"]["enabled"] = False
    loaded = C.loaded_config(cfg)
    session = Session()
    tracker = session.tracker(loaded)  # the config's experiment ("bench"), None without tracking
    parent = tracker.start("study-bench").run_id if tracker else None

    t_setup, warm = C.timed(lambda: run(loaded, RunOptions(role="trial", parent_run_id=parent,
                                                           log_model=False), session))
    # the same tensors the kdlab trial trains on
    data = next(iter(session.data.values()))
    outputs = next(iter(session.outputs.values()))
    dev = torch.device(args.device)
    x, y, t = data.train.x.to(dev), data.train.y.to(dev), outputs["train"]
    val_x, val_y, test_x, test_y = data.val.x.to(dev), data.val.y.to(dev), data.test.x.to(dev), data.test.y.to(dev)
    hp = dict(epochs=args.epochs, batch_size=cfg["training"]["batch_size"], lr=cfg["optimizer"]["lr"],
              temperature=cfg["loss"]["params"]["temperature"], alpha=cfg["loss"]["params"]["alpha"], seed=0)
    # warm-up, untimed: one more trial of each kind (first-call costs: allocator, fused kernels, MLflow's caches)
    run(loaded, RunOptions(role="trial", parent_run_id=parent, log_model=False), session)
    hand_written_trial(x, y, t, val_x, val_y, test_x, test_y, **{**hp, "epochs": 1})
    hand_written_trial(x, y, t, val_x, val_y, test_x, test_y, **{**hp, "epochs": 1}, fused=True)

    rss_warm = C.current_rss_mib()
    sides = ["kdlab", "hand", "hand-fused"]
    times: dict[str, list[float]] = {s: [] for s in sides}
    accs: dict[str, list[float]] = {s: [] for s in sides}
    for r in range(args.repeats):
        for side in (sides if r % 2 == 0 else list(reversed(sides))):
            if side == "kdlab":
                options = RunOptions(role="trial", parent_run_id=parent, run_name=f"trial-{r}",
                                     trial_number=r, log_model=False, params={"trial_number": r})
                dt, res = C.timed(lambda options=options: run(loaded, options, session))
                acc = res.metrics["test_accuracy"]
            else:
                dt, acc = C.timed(lambda side=side: hand_written_trial(x, y, t, val_x, val_y, test_x, test_y, **hp,
                                                                       fused=side == "hand-fused"))
            times[side].append(dt)
            accs[side].append(acc)
            print(f"repeat {r} {side:10s} {dt:.3f} s (test accuracy {acc:.4f})", flush=True)

    rss_end = C.current_rss_mib()
    # memory: the teacher-output cache on disk, and the trial's rows shared with the session's data (no copy)
    from kdlab.teachers.cache import outputs_path

    teacher = next(iter(session.teachers.values()))
    cache_file = outputs_path(teacher.fingerprint)
    cached_rows = sum(len(split) for split in data.splits().values())
    shared = next(iter(session.train_sets.values()))
    # one set of rows for every trial of the session, sharing storage with the data and the cached outputs
    no_copy = len(session.train_sets) == 1 and shared.teacher_logits.data_ptr() == t.data_ptr() and (
        dev.type != "cpu" or shared.x.data_ptr() == data.train.x.data_ptr())
    mk, mh, mf = (C.median(times[s]) for s in sides)
    steps = args.epochs * -(-len(x) // hp["batch_size"])
    ratio = mk / mh
    rows = [
        ["hand-written loop (cached logits, index slicing, no tracking; torch's default Adam)", mh, mh / steps * 1e6,
         C.median(accs["hand"]), "1.000x"],
        ["the same with `Adam(fused=True)`", mf, mf / steps * 1e6, C.median(accs["hand-fused"]), f"{mf / mh:.3f}x"],
        [f"kdlab trial (`modes.run`, tracking {'off' if args.no_track else 'on, SQLite'})", mk, mk / steps * 1e6,
         C.median(accs["kdlab"]), f"{ratio:.3f}x"],
    ]
    lines = [
        f"### Overhead of one trial ({args.repeats} alternated repeats, {args.epochs} epochs, {steps} steps, "
        f"{args.threads} torch thread(s), {args.device})",
        "",
        C.table(["side", "median s", "µs / step", "test accuracy", "vs hand-written"], rows),
        "",
        f"- **kdlab / hand-written = {ratio:.3f}x** — {C.verdict(ratio, 1.10)}. Against the hand-written loop with "
        f"fused Adam as well: {mk / mf:.3f}x (so tracking and the engine cost {(mk - mf) / steps * 1e6:.0f} µs per "
        "step, spread over the trial).",
        "- All times (s): " + "; ".join(f"{s} " + ", ".join(f"{v:.2f}" for v in times[s]) for s in sides) + ".",
        f"- First (warm-up) trial, with teacher training and output caching: {t_setup:.1f} s.",
        f"- Memory: peak RSS of the process {C.peak_rss_mib():.0f} MiB; RSS {rss_warm:.0f} MiB after the warm-up "
        f"trial and {rss_end:.0f} MiB after the {args.repeats * len(sides)} timed ones. Teacher-output cache: "
        f"{cache_file.stat().st_size:,} bytes on disk for {cached_rows:,} rows ({data.num_classes} classes) = "
        f"{cache_file.stat().st_size / cached_rows:.1f} bytes per row (float16: {2 * data.num_classes} bytes of logits "
        f"+ the file's framing). Trial rows share the session's tensors (no copy per trial): "
        f"{'yes' if no_copy else 'NO'} (one set of rows built for all trials, in the storage of the data and of the "
        "cached outputs).",
    ]
    C.report('overhead.md', lines, args.write)
    del warm, home
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
