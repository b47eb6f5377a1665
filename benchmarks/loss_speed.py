"""Train time per epoch of every distillation loss on the same rows, side by side with ``kd``, and ``rkd`` before and
after its fast angle term.

The rows are shaped like the methods benchmark's (MNIST-1D: 3,500 train + 10,000 transfer rows of length 40, 10
classes; random values: speed does not depend on them), the student is its MLP (hidden [64, 64]), the teacher its
cnn1d (channels [64, 64, 64], untrained), batch 128, Adam, one CPU thread. Teacher logits and features are computed
once and cached, as the engine does. Each repeat runs every method in turn (so that the machine's load falls on all
of them alike); a method's time is the median over repeats of its median epoch after the first (warm-up) one::

    .venv/bin/python benchmarks/loss_speed.py [--rows 13500] [--epochs 3] [--repeats 3] [--methods kd rkd ...]
        [--write]

``rkd (before)`` is ``rkd`` with the angle term it had before (the Gram-matrix form of every triplet under
autograd, kept below as it was), to measure the change side by side.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import report, table  # noqa: E402

#: layer params per method for the MLP student (blocks.1: its last hidden layer) and the cnn1d teacher (blocks.2:
#: its last conv block, 64 x 4, the embedding; blocks.1 its middle one), as in benchmarks/methods.py
ONE = {"student_layer": "blocks.1", "teacher_layer": "blocks.2"}
TWO = {"student_layers": ["blocks.0", "blocks.1"], "teacher_layers": ["blocks.1", "blocks.2"]}
LAYERS: dict[str, dict] = {
    "fitnet": {"student_layer": "blocks.1", "teacher_layer": "blocks.1"},
    "at": {"student_layers": ["blocks.1"], "teacher_layers": ["blocks.1"]},
    "rkd": ONE, "rkd (before)": ONE, "pkt": ONE, "cc": ONE, "crd": ONE,
    "sp": {"student_layers": ["blocks.1"], "teacher_layers": ["blocks.2"]},
    "nst": {"student_layers": ["blocks.1"], "teacher_layers": ["blocks.2"]},
    "vid": TWO, "reviewkd": TWO,
    "ab": {"student_layers": ["blocks.0.0", "blocks.1.0"], "teacher_layers": ["blocks.1.0", "blocks.2.0"]},
}


def old_angle_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """rkd's angle term before the fast one: every triplet's cosine from the Gram matrix, under autograd."""
    def angles(e):
        g = e @ e.T
        diag = g.diagonal()
        dot = g.unsqueeze(0) - g.unsqueeze(2) - g.unsqueeze(1) + diag.view(-1, 1, 1)
        sq = (diag.view(-1, 1) - 2 * g + diag.view(1, -1)).clamp_min(1e-12)
        norm = sq.sqrt() * (~torch.eye(len(e), dtype=torch.bool, device=e.device))
        inv = torch.where(norm > 0, 1 / norm.clamp_min(1e-12), torch.zeros_like(norm))
        return (dot * inv.unsqueeze(2) * inv.unsqueeze(1)).flatten()

    with torch.no_grad():
        target = angles(t)
    return torch.nn.functional.smooth_l1_loss(angles(s), target)


def build_loss(method: str, student, teacher, x, models):
    import kdlab
    from kdlab.plugins import get_registry

    comp = get_registry().get("loss", method.split(" ")[0])
    loss = comp.build(comp.validate_params(LAYERS.get(method, {})))
    loss.setup(kdlab.LossSetup(
        student=student, teacher=teacher, input_shape=tuple(x.shape[1:]), num_classes=10,
        device=torch.device("cpu"), build_model=lambda kind, name, params: models["student"](),
        student_config={"name": "mlp", "params": {"hidden": [64, 64]}}, example_x=x[:64],
        build_teacher=lambda spec: models["teacher"]().eval().requires_grad_(False), num_examples=len(x)))
    return loss


def epoch_time(method: str, data, models, epochs: int, seed: int) -> float:
    """Median time of the epochs after the first, for one training of the student with ``method``."""
    from kdlab.config import OptimizerConfig
    from kdlab.training import TrainSet, fit, predict
    from kdlab_losses import relations

    x, y, val, teacher = data
    torch.manual_seed(seed)
    student = models["student"]()
    loss = build_loss(method, student, teacher, x, models)
    logits, feats = predict(teacher, x, layers=tuple(loss.teacher_layers), key="loss.params", owner="the teacher")
    train = TrainSet(x, y, logits if loss.uses_teacher else None, feats if loss.uses_teacher else {})
    fast = relations.angle_loss
    relations.angle_loss = old_angle_loss if method == "rkd (before)" else fast
    try:
        result = fit(student, loss, train, val, optimizer=OptimizerConfig(name="adam", lr=0.003), epochs=epochs,
                     batch_size=128, seed=seed, device=torch.device("cpu"), teacher=teacher, keep_best=False)
    finally:
        relations.angle_loss = fast
    return statistics.median(h["epoch_time_s"] for h in result.history[1:])


def main(argv: list[str] | None = None) -> int:
    from kdlab.plugins import get_registry

    names = [c.name for c in get_registry().all("loss") if c.plugin == "kdlab-losses"]
    everything = ["kd", "rkd (before)", "rkd", *sorted(set(names) - {"kd", "rkd"})]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=13500)
    ap.add_argument("--epochs", type=int, default=3, help="per training; the first is a warm-up, not timed")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=everything, choices=everything)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check that the script runs")
    ap.add_argument("--write", action="store_true", help="save the table as results/loss_speed.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.epochs, args.repeats = 300, 2, 1
        args.methods = ["kd", "rkd (before)", "rkd", "crd"]
    if "kd" not in args.methods:
        args.methods = ["kd", *args.methods]
    torch.set_num_threads(1)
    from kdlab.types import Split
    from kdlab_models.nets import CNN1D, MLP, CNN1DParams, MLPParams

    models = {"student": lambda: MLP(MLPParams(hidden=[64, 64]), (40,), 10),
              "teacher": lambda: CNN1D(CNN1DParams(channels=[64, 64, 64]), (40,), 10)}
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(args.rows, 40, generator=g), torch.randint(10, (args.rows,), generator=g)
    torch.manual_seed(0)
    teacher = models["teacher"]().eval().requires_grad_(False)
    val = Split(torch.randn(500, 40, generator=g), torch.randint(10, (500,), generator=g))
    data = (x, y, val, teacher)
    times: dict[str, list[float]] = {m: [] for m in args.methods}
    started = time.perf_counter()
    for repeat in range(args.repeats):
        for method in args.methods:
            times[method].append(epoch_time(method, data, models, args.epochs, seed=repeat))
            print(f"repeat {repeat}: {method:14s} {times[method][-1]:.3f} s/epoch", flush=True)
    med = {m: statistics.median(v) for m, v in times.items()}
    rows = [[f"`{m}`", med[m], f"{med[m] / med['kd']:.2f}x", ", ".join(f"{v:.3f}" for v in times[m])]
            for m in args.methods]
    steps = (args.rows + 127) // 128
    took = time.perf_counter() - started
    lines = [f"# Train time per epoch of each loss ({args.rows:,} rows, batch 128: {steps} steps; median of "
             f"{args.repeats} repeats of {args.epochs} epochs, first epoch not timed; {took:.0f} s in all)", "",
             "Produced by `benchmarks/loss_speed.py`: MLP student (hidden [64, 64]), cnn1d teacher (channels "
             "[64, 64, 64], untrained; outputs and features cached), MNIST-1D-shaped random rows, Adam, 1 thread; "
             "layers as in `benchmarks/methods.py` (a student's last hidden layer, 64 units; the teacher's last "
             "conv block, 64 x 4).", "",
             table(["method", "s / epoch", "vs kd", "each repeat (s)"], rows)]
    if "rkd (before)" in med and "rkd" in med:
        ratio = med["rkd (before)"] / med["rkd"]
        lines += ["", f"`rkd`'s fast angle term: {med['rkd (before)']:.3f} s -> {med['rkd']:.3f} s per epoch "
                      f"({ratio:.1f}x faster), the same values (tests/test_methods_extra.py)."]
    report("loss_speed.md", lines, args.write and not args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
