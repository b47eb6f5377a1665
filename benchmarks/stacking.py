"""Stacked trials: K trials trained as one batched model (``kdlab.stacking.fit_stacked``) vs the same K trials each
through ``kdlab.training.fit``, per member-step, beside the arithmetic floor.

The trials are the main study's student on MNIST-1D-sized rows: an MLP 40-100-100-10, Hinton KD from cached teacher
logits, Adam, validation every epoch, the best epoch kept; the K trials differ in temperature, alpha, learning rate
and init seed (what a study searches). The rows are random (3,500 train / 500 val, 10 classes; speed does not
depend on their values), so no teacher is trained. Both sides run in this process on the same tensors and alternate;
the table gives medians. ``stacked (vmap)`` is the general kernel (``torch.func.vmap`` over the model and the loss),
``stacked`` the default, which takes the batched-matmul MLP kernel for this student.

The floor is the FLOPs of one member-step (forward and backward of the model and the loss, counted with
``torch.utils.flop_counter.FlopCounterMode``: the matmuls) divided by this core's single-thread matmul rate (the best
of large square ``torch.mm``): no implementation on this core can do a member-step faster. A second floor divides by
the rate of a matmul of the student's own layer shape (100x100x100), which is what its layers can get at best.

Times are CPU times of this process (``time.process_time``; torch runs on one thread): on a machine shared with
other jobs, wall time also counts the time the process waits for a core. The wall-time medians are listed too::

    .venv/bin/python benchmarks/stacking.py [--repeats 5] [--epochs 4] [--ks 1,4,8,16,32] [--batches 64,100]
                                            [--profile] [--write]

``--quick`` runs tiny sizes (for the smoke test). ``--write`` saves the tables to ``benchmarks/results/stacking.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

N_TRAIN, N_VAL, INPUTS, CLASSES, HIDDEN = 3500, 500, 40, 10, [100, 100]
SIDES = ("separate", "stacked (vmap)", "stacked")


def rows(n_train: int = N_TRAIN, n_val: int = N_VAL):
    import torch

    from kdlab.training import TrainSet
    from kdlab.types import Split

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + n_val, INPUTS, generator=g)
    w = torch.randn(INPUTS, CLASSES, generator=g)
    t = x @ w  # the "teacher"
    y = (t + torch.randn(len(x), CLASSES, generator=g)).argmax(1)
    return TrainSet(x[:n_train], y[:n_train], t[:n_train]), Split(x[n_train:], y[n_train:])


def trials(k: int) -> list[dict]:
    """K trials as a study would ask them: temperature, alpha, lr and init seed vary."""
    return [{"key": i, "temperature": 1.0 + (i * 7 % 16) / 2, "alpha": 0.1 + 0.8 * (i * 5 % 11) / 10,
             "lr": 1e-3 * 10 ** ((i * 3 % 8) / 7), "init_seed": i} for i in range(k)]


def build(trial: dict):
    from kdlab.plugins import get_registry
    from kdlab.training import seed_everything

    reg = get_registry()
    student = reg.get("student", "mlp")
    seed_everything(trial["init_seed"])
    model = student.build(student.validate_params({"hidden": HIDDEN}), input_shape=(INPUTS,), num_classes=CLASSES)
    loss = reg.get("loss", "kd")
    return model, loss.build(loss.validate_params({"temperature": trial["temperature"], "alpha": trial["alpha"]}))


def run_separate(ts: list[dict], train, val, *, epochs: int, batch_size: int) -> float:
    import torch

    from kdlab.config import OptimizerConfig
    from kdlab.training import fit

    t0 = time.process_time()
    for trial in ts:
        model, loss = build(trial)
        fit(model, loss, train, val, optimizer=OptimizerConfig(name="adam", lr=trial["lr"]), epochs=epochs,
            batch_size=batch_size, seed=0, device=torch.device("cpu"))
    return time.process_time() - t0


def run_stacked(ts: list[dict], train, val, *, epochs: int, batch_size: int, kernel: str = "auto") -> float:
    from kdlab.config import OptimizerConfig
    from kdlab.stacking import Member, fit_stacked

    t0 = time.process_time()
    members = []
    for trial in ts:
        model, loss = build(trial)
        members.append(Member(key=trial["key"], model=model, loss=loss,
                              optimizer=OptimizerConfig(name="adam", lr=trial["lr"]), epochs=epochs, seed=0))
    results = fit_stacked(members, train, val, batch_size=batch_size, kernel=kernel)
    assert all(r.status == "complete" for r in results)
    return time.process_time() - t0


def member_step_flops(train, batch_size: int) -> int:
    """FLOPs of one lone step (forward and backward of the model and the loss), as FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    from kdlab.types import LossInputs

    model, loss = build(trials(1)[0])
    xb, yb, tb = train.x[:batch_size], train.y[:batch_size], train.teacher_logits[:batch_size]
    counter = FlopCounterMode(display=False)
    with counter:
        out = loss(LossInputs(x=xb, labels=yb, student_logits=model(xb), teacher_logits=tb))
        out.total.backward()
    return counter.get_total_flops()


def matmul_rate(sizes=((1024, 1024, 1024), (512, 512, 512)), repeats: int = 7) -> tuple[float, dict]:
    """This core's single-thread matmul FLOP rate: the best over ``sizes`` of the best of ``repeats`` timings."""
    import torch

    rates = {}
    for m, k, n in sizes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            a @ b
        reps = max(3, int(2e9 / (2 * m * k * n)))
        best = float("inf")
        for _ in range(repeats):
            t0 = time.process_time()
            for _ in range(reps):
                a @ b
            best = min(best, (time.process_time() - t0) / reps)
        rates[(m, k, n)] = 2 * m * k * n / best
    return max(rates.values()), rates


#: operator groups of the profile summary (everything else: the loss, its backward and the glue)
GROUPS = {
    "matmuls (the floor's work)": ("aten::bmm", "aten::baddbmm", "aten::addmm", "aten::mm"),
    "optimizer (fused Adam, one call per member)": ("aten::_fused_adam_", "aten::_fused_adamw_", "aten::_fused_sgd_",
                                                    "aten::item"),
    "activations and their gradients": ("aten::relu_", "aten::clamp_min_", "aten::threshold_backward"),
}


def profile_stacked(train, val, *, k: int, batch_size: int, epochs: int) -> str:
    """Where a stacked run's time goes: operator groups and the top operators (torch.profiler, self time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_stacked(trials(k), train, val, epochs=epochs, batch_size=batch_size)
    steps = epochs * -(-len(train) // batch_size)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    groups = {name: 0.0 for name in GROUPS}
    rest = 0.0
    for e in events:
        group = next((g for g, ops in GROUPS.items() if e.key in ops), None)
        if group is None:
            rest += e.self_cpu_time_total
        else:
            groups[group] += e.self_cpu_time_total
    groups["the loss (forward and backward), the rest"] = rest
    summary = C.table(["group", "% of the time"], [[g, 100 * v / total] for g, v in groups.items()])
    rows = [[e.key, f"{e.count / steps:.2f}", 100 * e.self_cpu_time_total / total] for e in events[:12]]
    return summary + "\n\n" + C.table(["operator", "calls / step", "% of the time"], rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--ks", default="1,4,8,16,32", help="stack sizes K")
    ap.add_argument("--batches", default="64,100", help="batch sizes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a study worker has 1)")
    ap.add_argument("--profile", action="store_true", help="also profile a stacked run at K=16, batch 100")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/stacking.md")
    args = ap.parse_args(argv)
    n_train, n_val = N_TRAIN, N_VAL
    if args.quick:
        args.repeats, args.epochs, args.ks, args.batches = 1, 1, "1,2", "64"
        n_train, n_val = 256, 64
    ks = [int(v) for v in args.ks.split(",")]
    batches = [int(v) for v in args.batches.split(",")]
    C.fresh_home("stacking")
    import torch

    torch.set_num_threads(args.threads)
    train, val = rows(n_train, n_val)
    peak, rates = matmul_rate(((256, 256, 256),) if args.quick else ((1024, 1024, 1024), (512, 512, 512)))
    layer_rate, _ = matmul_rate(((100, 100, 100),), repeats=3 if args.quick else 7)
    # warm-up, untimed: first calls of each side (allocator, kernels, fx tracing)
    for side in SIDES:
        _run(side, trials(2), train, val, epochs=1, batch_size=batches[0])

    times: dict[tuple[int, int, str], list[float]] = {}
    walls: dict[tuple[int, int, str], list[float]] = {}
    for r in range(args.repeats):
        for batch in batches:
            for k in ks:
                for side in (SIDES if (r + k) % 2 == 0 else tuple(reversed(SIDES))):
                    w0 = time.perf_counter()
                    dt = _run(side, trials(k), train, val, epochs=args.epochs, batch_size=batch)
                    walls.setdefault((batch, k, side), []).append(time.perf_counter() - w0)
                    times.setdefault((batch, k, side), []).append(dt)
                    steps = args.epochs * -(-n_train // batch)
                    print(f"repeat {r} batch {batch} K={k:2d} {side:15s} {dt:7.3f} s "
                          f"({dt / (k * steps) * 1e6:.0f} µs / member-step)", flush=True)

    table_rows = []
    flops = {b: member_step_flops(train, b) for b in batches}
    for batch in batches:
        steps = args.epochs * -(-n_train // batch)
        floor, floor_layer = flops[batch] / peak, flops[batch] / layer_rate
        for k in ks:
            per = {s: C.median(times[(batch, k, s)]) / (k * steps) for s in SIDES}
            table_rows.append([batch, k, per["separate"] * 1e6, per["stacked (vmap)"] * 1e6, per["stacked"] * 1e6,
                               f"{per['separate'] / per['stacked']:.2f}x", floor * 1e6,
                               f"{per['stacked'] / floor:.2f}x", f"{per['stacked'] / floor_layer:.2f}x"])
    lines = [
        f"### Stacked trials: µs of CPU time per member-step ({args.repeats} alternated repeats, {args.epochs} epochs "
        f"of {n_train:,} rows, {args.threads} torch thread(s), cpu)",
        "",
        C.table(["batch", "K", "separate `fit` µs", "stacked (vmap) µs", "stacked µs",
                 "speed-up (separate / stacked)", "floor µs", "stacked / floor", "stacked / layer-shape floor"],
                table_rows),
        "",
        "- A member-step is one trial's one batch: forward, backward and optimizer step, with validation every epoch "
        "spread over the epoch's steps, on both sides. Speed-up = trials per minute stacked / separately.",
        "- Floor: " + "; ".join(f"batch {b}: {f / 1e6:.2f} MFLOP per member-step" for b, f in flops.items())
        + f" (FlopCounterMode), at {peak / 1e9:.1f} GFLOP/s, this core's best single-thread matmul rate ("
        + ", ".join(f"{m}x{k}x{n}: {v / 1e9:.1f}" for (m, k, n), v in rates.items())
        + f"); the layer-shape floor uses the rate of a 100x100x100 matmul, {layer_rate / 1e9:.1f} GFLOP/s.",
        "- CPU times (s): " + "; ".join(f"b{b} K{k} {s}: " + ", ".join(f"{v:.2f}" for v in vs)
                                        for (b, k, s), vs in times.items()) + ".",
        "- Wall-time medians, µs per member-step: " + "; ".join(
            f"b{b} K{k} {s}: {C.median(vs) / (k * args.epochs * -(-n_train // b)) * 1e6:.0f}"
            for (b, k, s), vs in walls.items()) + ".",
    ]
    if args.profile and not args.quick:
        lines += ["", "#### Where a stacked run's time goes (K=16, batch 100, torch.profiler, operators' self time)",
                  "",
                  profile_stacked(train, val, k=16, batch_size=100, epochs=args.epochs)]
    C.report("stacking.md", lines, args.write)
    return 0


def _run(side: str, ts, train, val, *, epochs: int, batch_size: int) -> float:
    if side == "separate":
        return run_separate(ts, train, val, epochs=epochs, batch_size=batch_size)
    return run_stacked(ts, train, val, epochs=epochs, batch_size=batch_size,
                       kernel="vmap" if side == "stacked (vmap)" else "auto")


if __name__ == "__main__":
    raise SystemExit(main())
