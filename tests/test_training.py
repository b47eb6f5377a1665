"""The training loop's speed levers keep its results: per-epoch loss terms, fused optimizers, the masked
cross-entropy, training rows shared by the runs of a session (benchmarks/README.md measures the speed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import tiny_digits_config
from kdlab.config import OptimizerConfig
from kdlab.functional import masked_cross_entropy
from kdlab.training import TrainSet, build_optimizer, fit
from kdlab.types import UNLABELED, Loss, LossOutput, Split
from kdlab_test_helpers import load_config


class _Recording(Loss):
    """MSE to zero; a term ``odd`` only on batches whose first row index is odd; records every batch's terms."""

    uses_teacher = False

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[int, float, float | None]] = []

    def forward(self, inputs):
        total = inputs.student_logits.pow(2).mean()
        terms = {"mse": total}
        odd = None
        if int(inputs.x[0, 0]) % 2:
            terms["odd"] = total * 2
            odd = float(terms["odd"])
        self.seen.append((len(inputs.x), float(total), odd))
        return LossOutput(total, terms)


def test_epoch_loss_terms_are_row_weighted_means_of_the_batches():
    torch.manual_seed(0)
    n = 10  # batches of 4, 4 and a short one of 2
    x = torch.cat([torch.arange(n, dtype=torch.float32)[:, None], torch.randn(n, 3)], 1)
    model, loss = nn.Linear(4, 3), _Recording()
    zeros = torch.zeros(n, dtype=torch.int64)
    result = fit(model, loss, TrainSet(x, zeros), Split(x, zeros),
                 optimizer=OptimizerConfig(lr=1e-3), epochs=1, batch_size=4, seed=0, device=torch.device("cpu"),
                 keep_best=False)
    h = result.history[0]
    rows = sum(r for r, _, _ in loss.seen)
    assert rows == n and [r for r, _, _ in loss.seen] == [4, 4, 2]
    assert h["train_loss"] == pytest.approx(sum(r * t for r, t, _ in loss.seen) / n, rel=1e-5)
    assert h["train_mse"] == pytest.approx(h["train_loss"], rel=1e-6)
    # a term present in some batches only: summed over those batches, divided by all rows (as before)
    assert h["train_odd"] == pytest.approx(sum(r * o for r, _, o in loss.seen if o is not None) / n, rel=1e-5)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_optimizers_are_fused_on_the_cpu(name):
    params = list(nn.Linear(4, 3).parameters())
    opt = build_optimizer(params, OptimizerConfig(name=name, lr=0.1))
    assert opt.defaults.get("fused") is True
    assert opt.param_groups[0]["lr"] == 0.1


def test_optimizer_falls_back_where_fused_is_unavailable():
    params = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, device="meta"))]  # two devices: no fused
    assert not build_optimizer(params, OptimizerConfig()).defaults.get("fused")


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_masked_cross_entropy_averages_over_labelled_rows(smoothing):
    torch.manual_seed(0)
    logits = torch.randn(8, 5, requires_grad=True)
    labels = torch.tensor([0, UNLABELED, 2, 3, UNLABELED, 4, 1, UNLABELED])
    keep = labels != UNLABELED
    expected = nn.functional.cross_entropy(logits[keep], labels[keep], label_smoothing=smoothing)
    assert masked_cross_entropy(logits, labels, smoothing).item() == pytest.approx(expected.item(), rel=1e-6)
    none = masked_cross_entropy(logits, torch.full((8,), UNLABELED), smoothing)
    (grad,) = torch.autograd.grad(none, logits)
    assert none.item() == 0.0 and not grad.isnan().any() and grad.abs().sum() == 0
    nan = masked_cross_entropy(torch.full((2, 5), float("nan")), torch.tensor([0, 1]))
    assert nan.isnan()  # a diverged model still shows as a non-finite loss


def test_runs_of_a_session_share_the_training_rows(write_config):
    from kdlab.modes import Session, run

    loaded = load_config(write_config(tiny_digits_config(**{"tracking.enabled": False, "training.epochs": 1})))
    session = Session()
    first = run(loaded, session=session)
    second = run(loaded, session=session)
    assert len(session.train_sets) == 1
    shared = next(iter(session.train_sets.values()))
    data = next(iter(session.data.values()))
    assert shared.x.data_ptr() == data.train.x.data_ptr()  # no copy of the data, not even once
    timed = ("train_time_s", "student_latency_ms", "student_batch_latency_ms")  # measured, not computed
    assert {k: v for k, v in first.metrics.items() if k not in timed} == \
        {k: v for k, v in second.metrics.items() if k not in timed}


# -- speed switches (training.precision, training.channels_last) ----------------------------------------------


def _switch_config(**overrides) -> dict:
    return tiny_digits_config(**{"teacher.name": "cnn2d", "teacher.params": {"channels": [8]},
                                 "student.name": "cnn2d", "student.params": {"channels": [4]},
                                 "tracking.enabled": False, **overrides})


@pytest.mark.parametrize("switches", [{"training.precision": "bf16"}, {"training.precision": "fp16"},
                                      {"training.channels_last": True},
                                      {"training.precision": "bf16", "training.channels_last": True,
                                       "data.augment": [{"op": "random_crop", "padding": 1}]}],
                         ids=["bf16", "fp16", "channels_last", "bf16-channels_last-augment"])
def test_speed_switches_train_on_the_cpu(write_config, switches, monkeypatch):
    from kdlab.modes import Session, run

    scaled = []

    class Recording(torch.amp.GradScaler):
        def step(self, optimizer, *args, **kwargs):
            scaled.append(optimizer)
            return super().step(optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.amp, "GradScaler", Recording)
    result = run(load_config(write_config(_switch_config(**switches))), session=Session())
    losses = [h["train_loss"] for h in result.fit.history]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert result.metrics["teacher_test_accuracy"] > 0.2  # above chance (0.1) after a few epochs
    # fp16 scales its gradients (the teacher's training and the student's), and nothing else does
    assert bool(scaled) == (switches.get("training.precision") == "fp16")


def test_fp16_steps_read_nothing_back_from_the_device(monkeypatch):
    """With a fused optimizer the grad scaler checks for infinities on the device: no ``.item()`` per step."""
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 36, 3))
    reads = []
    original = torch.Tensor.item

    def item(self):
        reads.append(1)
        return original(self)

    from kdlab.teachers.train import _LabelsOnly

    monkeypatch.setattr(torch.Tensor, "item", item)
    fit(model, _LabelsOnly(), TrainSet(x, y), Split(x, y), optimizer=OptimizerConfig(lr=1e-3), epochs=2,
        batch_size=8, seed=0, device=torch.device("cpu"), precision="fp16")
    assert len(reads) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_speed_switches_on_cuda(write_config, precision):
    from kdlab.modes import Session, run

    cfg = _switch_config(**{"training.device": "cuda", "training.precision": precision,
                            "training.channels_last": True, "training.compile": False,
                            "data.augment": [{"op": "random_crop", "padding": 1}, {"op": "hflip"}]})
    result = run(load_config(write_config(cfg)), session=Session())
    assert result.metrics["teacher_test_accuracy"] > 0.3


def test_multistep_schedule_decays_after_each_milestone():
    from kdlab.training import build_scheduler

    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    sched = build_scheduler(opt, OptimizerConfig(name="sgd", lr=1.0, scheduler="multistep", milestones=[2, 4]), 6)
    rates = []
    for _ in range(6):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
