"""Stacked trials (kdlab.stacking): a member of a stack trains as the same trial alone through kdlab.training.fit —
same init, same batches in the same order, same schedule — up to float rounding; pruned, failed and added members
leave the others' trajectories unchanged."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

import kdlab
from kdlab.config import OptimizerConfig
from kdlab.errors import KdlabError
from kdlab.plugins import get_registry
from kdlab.stacking import Member, StackControl, can_stack, fit_stacked
from kdlab.training import TrainSet, fit, seed_everything
from kdlab.types import Split
from kdlab_models.nets import CNN1D, MLP, CNN1DParams, MLPParams

D, C = 12, 5
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def rows() -> tuple[TrainSet, Split]:
    """192 training rows (every 9th unlabeled) with a linear teacher's logits, 64 validation rows."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, D, generator=g)
    w = torch.randn(D, C, generator=g)
    t = x @ w
    y = (t + 0.8 * torch.randn(256, C, generator=g)).argmax(1)
    train_y = y[:192].clone()
    train_y[::9] = kdlab.UNLABELED
    return TrainSet(x[:192], train_y, t[:192]), Split(x[192:], y[192:])


@dataclass
class Trial:
    """One trial's settings: what a member and its lone run are built from."""

    key: Any = 0
    loss: str = "kd"
    loss_params: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=lambda: {"name": "adam", "lr": 0.01})
    init_seed: int = 0
    seed: int = 0
    epochs: int = 3
    keep_best: bool = True
    model: str = "mlp"

    def build_model(self) -> nn.Module:
        seed_everything(self.init_seed)
        if self.model == "cnn1d":
            return CNN1D(CNN1DParams(channels=[4, 4], kernel_size=3, batchnorm=True), (D,), C)
        return MLP(MLPParams(hidden=[16, 16]), (D,), C)

    def build_loss(self) -> kdlab.Loss:
        comp = get_registry().get("loss", self.loss)
        return comp.build(comp.validate_params(self.loss_params))

    def member(self) -> Member:
        return Member(key=self.key, model=self.build_model(), loss=self.build_loss(),
                      optimizer=OptimizerConfig(**self.optimizer), epochs=self.epochs, seed=self.seed,
                      keep_best=self.keep_best)

    def alone(self, rows, batch_size: int):
        model = self.build_model()
        result = fit(model, self.build_loss(), *rows, optimizer=OptimizerConfig(**self.optimizer),
                     epochs=self.epochs, batch_size=batch_size, seed=self.seed, device=CPU, keep_best=self.keep_best)
        return result, model


def assert_same_run(stacked, alone, *, rel: float = 2e-4, weights_atol: float = 1e-4) -> None:
    """Per-epoch metrics within float tolerance, final validation accuracy within a point, same best epoch, the
    same kept weights."""
    result, model = alone
    assert stacked.status == "complete", stacked.reason
    assert len(stacked.history) == len(result.history)
    for e, (got, want) in enumerate(zip(stacked.history, result.history), 1):
        assert set(got) == set(want)
        for key in want:
            if key != "epoch_time_s":
                assert got[key] == pytest.approx(want[key], rel=rel, abs=1e-6), (stacked.key, e, key)
    assert abs(stacked.history[-1]["val_accuracy"] - result.history[-1]["val_accuracy"]) <= 0.01
    assert stacked.best_epoch == result.best_epoch
    assert stacked.best_val_accuracy == pytest.approx(result.best_val_accuracy)
    for (name, a), b in zip(stacked.model.state_dict().items(), model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=weights_atol), name
    assert not stacked.model.training


def by_key(results):
    return {r.key: r for r in results}


# -- what stacks ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["kd", "hard", "dkd", "ls", "ce", "multi"])
def test_first_party_losses_are_stackable(name):
    assert can_stack(get_registry().get("loss", name).factory) == (True, "")


def test_can_stack_names_the_reason():
    ok, why = can_stack(get_registry().get("loss", "fitnet").factory)
    assert not ok and "FitNet does not declare stackable" in why
    ok, why = can_stack(get_registry().get("loss", "dml").factory)
    assert not ok and "stackable" in why
    student = get_registry().get("student", "mlp")
    assert student.extra.get("stackable") is True
    assert can_stack(get_registry().get("loss", "kd").factory, student) == (True, "")
    teacher = get_registry().get("teacher", "mlp")  # registered without the flag
    ok, why = can_stack(get_registry().get("loss", "kd").factory, teacher)
    assert not ok and "teacher 'mlp'" in why and "stackable=True" in why


def test_a_loss_is_not_stackable_by_default():
    assert kdlab.Loss.stackable is False


# -- equivalence with the lone run ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["mlp", "vmap"])
def test_first_steps_match_the_lone_run(rows, kernel):
    """One batch per epoch: every epoch's train_loss is one step's total, so this compares the first six steps."""
    trial = Trial(epochs=6)
    (stacked,) = fit_stacked([trial.member()], *rows, batch_size=len(rows[0]), kernel=kernel)
    result, _ = trial.alone(rows, len(rows[0]))
    steps = [h["train_loss"] for h in stacked.history]
    assert steps == pytest.approx([h["train_loss"] for h in result.history], rel=1e-5)
    assert_same_run(stacked, trial.alone(rows, len(rows[0])))


@pytest.mark.parametrize("kernel", ["mlp", "vmap"])
def test_members_with_different_hyperparameters_each_match_their_lone_run(rows, kernel):
    trials = [
        Trial(key="a", loss_params={"temperature": 4.0, "alpha": 0.9}, optimizer={"lr": 0.01}),
        Trial(key="b", loss_params={"temperature": 1.5, "alpha": 0.3}, optimizer={"lr": 0.003, "weight_decay": 0.01},
              init_seed=1),
        Trial(key="c", loss_params={"temperature": 8.0, "alpha": 1.0}, optimizer={"lr": 0.03}, init_seed=2, seed=5),
        Trial(key="d", loss_params={"temperature": 2.0, "alpha": 0.0}, optimizer={"lr": 0.001}, keep_best=False),
    ]
    results = by_key(fit_stacked([t.member() for t in trials], *rows, batch_size=40, kernel=kernel))
    for t in trials:
        assert_same_run(results[t.key], t.alone(rows, 40))


@pytest.mark.parametrize("optimizer", [
    {"name": "sgd", "lr": 0.05, "momentum": 0.9, "scheduler": "onecycle"},
    {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.001, "scheduler": "step", "step_size": 2},
    {"name": "adamw", "lr": 0.01, "weight_decay": 0.05, "scheduler": "cosine"},
    {"name": "adam", "lr": 0.02, "scheduler": "onecycle"},
])
def test_optimizers_and_schedules_match_the_lone_run(rows, optimizer):
    trials = [Trial(key=0, optimizer=optimizer, epochs=4),
              Trial(key=1, optimizer={**optimizer, "lr": optimizer["lr"] / 3}, init_seed=1, epochs=4)]
    results = by_key(fit_stacked([t.member() for t in trials], *rows, batch_size=64))
    for t in trials:
        assert_same_run(results[t.key], t.alone(rows, 64))


@pytest.mark.parametrize("loss,params", [
    ("hard", [{"alpha": 0.5}, {"alpha": 0.2}]),
    ("dkd", [{"warmup_epochs": 2, "beta": 4.0}, {"temperature": 2.0, "alpha": 0.5}]),
    ("ls", [{"epsilon": 0.1}, {"epsilon": 0.3}]),
    ("ce", [{}, {}]),
    ("multi", [{"temperature": 3.0, "alpha": 0.7}, {"temperature": 1.0, "alpha": 0.4}]),
])
def test_each_stackable_loss_matches_the_lone_run(rows, loss, params):
    trials = [Trial(key=k, loss=loss, loss_params=p, init_seed=k, epochs=3) for k, p in enumerate(params)]
    results = by_key(fit_stacked([t.member() for t in trials], *rows, batch_size=64))
    for t in trials:
        assert_same_run(results[t.key], t.alone(rows, 64))


def test_batchnorm_members_keep_their_own_running_statistics(rows):
    # SGD: a conv bias before BatchNorm has a zero gradient up to rounding noise, which Adam would scale up to
    # lr-sized steps in a direction the rounding decides, in a lone run as in a stack
    trials = [Trial(key=k, model="cnn1d", init_seed=k, loss_params={"temperature": 1.0 + k}, epochs=3,
                    optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9}) for k in range(2)]
    results = by_key(fit_stacked([t.member() for t in trials], *rows, batch_size=64, kernel="auto"))
    for t in trials:
        assert_same_run(results[t.key], t.alone(rows, 64))  # state_dict includes running_mean / running_var


def test_the_mlp_kernel_is_taken_for_plain_mlps_only():
    from kdlab.stacking.mlp import StackedMLP
    from kdlab.stacking.state import _Stacked

    def matched(model):
        s = _Stacked([model])
        return StackedMLP.match(model, s.params, s.buffers) is not None

    assert matched(MLP(MLPParams(hidden=[8]), (D,), C))
    assert matched(MLP(MLPParams(hidden=[8, 8], activation="gelu"), (D,), C))
    assert matched(nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, C)))
    assert matched(nn.Linear(D, C))
    assert not matched(MLP(MLPParams(hidden=[8], dropout=0.1), (D,), C))
    assert not matched(CNN1D(CNN1DParams(channels=[4]), (D,), C))
    assert not matched(nn.Sequential(nn.Linear(D, 8), nn.LayerNorm(8), nn.Linear(8, C)))


@pytest.mark.parametrize("activation", ["gelu", "tanh", "silu"])
def test_mlp_kernel_activations_match_vmap(rows, activation):
    def member(k):
        seed_everything(k)
        return Member(key=k, model=MLP(MLPParams(hidden=[16, 16], activation=activation), (D,), C),
                      loss=Trial().build_loss(), optimizer=OptimizerConfig(lr=0.01), epochs=2, seed=k)

    fast = by_key(fit_stacked([member(0), member(1)], *rows, batch_size=64, kernel="mlp"))
    ref = by_key(fit_stacked([member(0), member(1)], *rows, batch_size=64, kernel="vmap"))
    for k in (0, 1):
        assert fast[k].history[-1]["train_loss"] == pytest.approx(ref[k].history[-1]["train_loss"], rel=1e-5)


# -- pruning, failing, adding ---------------------------------------------------------------------------------------


def _three():
    return [Trial(key=k, loss_params={"temperature": 1.0 + k}, optimizer={"lr": 0.01 * (k + 1)}, init_seed=k,
                  epochs=4) for k in range(3)]


def test_pruning_removes_exactly_that_member(rows):
    trials = _three()
    seen: list[tuple[int, list]] = []

    def on_epoch(control: StackControl, reports):
        seen.append((reports[0].epoch, [r.key for r in reports]))
        if reports[0].epoch == 2:
            control.prune(1, reason="pruned at epoch 2")

    results = fit_stacked([t.member() for t in trials], *rows, batch_size=64, on_epoch=on_epoch)
    assert seen == [(1, [0, 1, 2]), (2, [0, 1, 2]), (3, [0, 2]), (4, [0, 2])]
    got = by_key(results)
    assert got[1].status == "pruned" and got[1].reason == "pruned at epoch 2" and len(got[1].history) == 2
    full = by_key(fit_stacked([t.member() for t in trials], *rows, batch_size=64))
    for a, b in zip(got[1].history, full[1].history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
    for k in (0, 2):  # the others: the same trajectory as without the pruning, and as alone
        for a, b in zip(got[k].history, full[k].history):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
            assert a["val_accuracy"] == b["val_accuracy"]
        assert_same_run(got[k], trials[k].alone(rows, 64))
    assert [r.key for r in results] == [1, 0, 2]  # in the order they left


@pytest.mark.parametrize("kernel", ["mlp", "vmap"])
def test_a_diverging_member_fails_alone(rows, kernel):
    trials = _three()
    trials[1].optimizer = {"name": "adam", "lr": 1e30}
    trials[1].loss_params = {"temperature": 1.0, "alpha": 0.0}
    results = by_key(fit_stacked([t.member() for t in trials], *rows, batch_size=64, kernel=kernel))
    failed = results[1]
    assert failed.status == "failed"
    assert "the training loss became" in failed.reason and "in epoch" in failed.reason
    lone_error = None
    try:
        trials[1].alone(rows, 64)
    except kdlab.KdlabError as exc:  # NonFiniteLoss
        lone_error = str(exc)
    assert lone_error == failed.reason  # the same epoch, the same message as fit's NonFiniteLoss
    for k in (0, 2):
        assert_same_run(results[k], trials[k].alone(rows, 64))


@pytest.mark.parametrize("kernel", ["mlp", "vmap"])
def test_a_member_added_midway_trains_its_own_epochs_and_matches_its_lone_run(rows, kernel):
    trials = _three()[:2]
    newcomer = Trial(key="new", loss_params={"temperature": 3.0, "alpha": 0.5}, optimizer={"lr": 0.02},
                     init_seed=7, seed=3, epochs=3)
    epochs_seen: dict[Any, list[int]] = {}

    def on_epoch(control, reports):
        for r in reports:
            epochs_seen.setdefault(r.key, []).append(r.epoch)
        if reports[0].key == 0 and reports[0].epoch == 2:
            control.add(newcomer.member())

    results = by_key(fit_stacked([t.member() for t in trials], *rows, batch_size=64, kernel=kernel,
                                 on_epoch=on_epoch))
    assert epochs_seen == {0: [1, 2, 3, 4], 1: [1, 2, 3, 4], "new": [1, 2, 3]}
    for t in [*trials, newcomer]:
        assert_same_run(results[t.key], t.alone(rows, 64))


def test_on_result_fills_a_freed_slot(rows):
    """The study worker's pattern: a fixed capacity, a new trial for every member that leaves."""
    queue = [Trial(key=k, init_seed=k, epochs=2 + k % 2, optimizer={"lr": 0.01 * (1 + k)}) for k in range(5)]
    pending = list(queue[2:])
    sizes = []

    def on_epoch(control, reports):
        sizes.append(len(reports))

    def on_result(control, result):
        assert result.status == "complete"
        if pending and control.free:
            control.add(pending.pop(0).member())

    results = fit_stacked([t.member() for t in queue[:2]], *rows, batch_size=64, capacity=2,
                          on_epoch=on_epoch, on_result=on_result)
    assert sorted(r.key for r in results) == [0, 1, 2, 3, 4]
    assert max(sizes) == 2
    got = by_key(results)
    for t in queue:
        assert_same_run(got[t.key], t.alone(rows, 64))


def test_time_is_shared_between_members(rows):
    results = fit_stacked([t.member() for t in _three()], *rows, batch_size=64)
    for r in results:
        assert r.train_time_s == pytest.approx(sum(h["epoch_time_s"] for h in r.history))
        assert r.fit_result().epochs_run == 4 and math.isfinite(r.train_time_s)


# -- what is refused ------------------------------------------------------------------------------------------------


def test_members_must_share_the_optimizer_kind(rows):
    a, b = _three()[:2]
    b.optimizer = {"name": "sgd", "lr": 0.1}
    with pytest.raises(KdlabError, match="optimizer 'sgd'.*this stack uses 'adam'"):
        fit_stacked([a.member(), b.member()], *rows, batch_size=64)


def test_members_must_share_the_structure(rows):
    a = Trial(key=0).member()
    b = Trial(key=1).member()
    b.model = MLP(MLPParams(hidden=[16, 8]), (D,), C)
    with pytest.raises(KdlabError, match="differs in structure"):
        fit_stacked([a, b], *rows, batch_size=64)


def test_a_loss_that_is_not_stackable_is_refused(rows):
    member = Trial(key=0).member()
    comp = get_registry().get("loss", "pkt")
    member.loss = comp.build(comp.validate_params({}))
    with pytest.raises(KdlabError, match="member 0 cannot be stacked: loss PKT does not declare stackable"):
        fit_stacked([member], *rows, batch_size=64)


# -- losses with parameters or features, other precisions -----------------------------------------------------------


class LearnedScale(kdlab.Loss):
    """A stackable loss with a trainable parameter (trained with the student, as fit trains it) and a penalty on a
    captured student layer."""

    uses_teacher = False
    stackable = True

    def __init__(self, init: float, penalty: float, features: bool = True):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(init))
        self.register_buffer("penalty", torch.tensor(penalty, dtype=torch.float64))
        self.student_layers = ("blocks.0",) if features else ()

    def forward(self, inputs):
        from kdlab.functional import masked_cross_entropy

        ce = masked_cross_entropy(inputs.student_logits * self.scale, inputs.labels)
        feats = inputs.student_features
        act = (feats["blocks.0"] ** 2).mean() if feats else inputs.student_logits.square().mean()
        return kdlab.LossOutput(total=ce + self.penalty * act, terms={"ce": ce, "act": act})


@pytest.mark.parametrize("features", [True, False])  # features: the general kernel; without: the MLP kernel
def test_loss_parameters_and_student_features_stack(rows, features):
    def trial(k):
        t = Trial(key=k, init_seed=k, epochs=3)
        t.build_loss = lambda: LearnedScale(1.0 + k, 0.1 * k, features)
        return t

    trials = [trial(0), trial(1)]
    results = by_key(fit_stacked([t.member() for t in trials], *rows, batch_size=64))
    for t in trials:
        alone = t.alone(rows, 64)
        assert_same_run(results[t.key], alone)
        loss = results[t.key].loss
        assert loss.scale.item() != 1.0 + t.key  # trained
    lone_loss = LearnedScale(1.0, 0.0, features)
    fit(trials[0].build_model(), lone_loss, *rows, optimizer=OptimizerConfig(lr=0.01), epochs=3, batch_size=64,
        seed=0, device=CPU)
    assert results[0].loss.scale.item() == pytest.approx(lone_loss.scale.item(), rel=1e-5)


def test_bf16_runs_through_the_general_kernel(rows):
    trials = [Trial(key=k, init_seed=k, epochs=2) for k in range(2)]
    results = fit_stacked([t.member() for t in trials], *rows, batch_size=64, precision="bf16")
    for r, t in zip(results, trials):
        lone = fit(t.build_model(), t.build_loss(), *rows, optimizer=OptimizerConfig(**t.optimizer), epochs=2,
                   batch_size=64, seed=0, device=CPU, precision="bf16")
        assert r.status == "complete"
        assert r.history[0]["train_loss"] == pytest.approx(lone.history[0]["train_loss"], rel=2e-2)


def test_capacity_counts_members_added_in_either_callback(rows):
    frees = []

    def on_epoch(control, reports):
        if reports[0].epoch == 1:
            control.prune(0)
            control.add(Trial(key="x", epochs=1).member())
            frees.append(control.free)
            with pytest.raises(KdlabError, match="full"):
                control.add(Trial(key="y", epochs=1).member())

    def on_result(control, result):
        frees.append((result.key, control.free))

    fit_stacked([Trial(key=k, init_seed=k, epochs=2).member() for k in range(2)], *rows, batch_size=64, capacity=2,
                on_epoch=on_epoch, on_result=on_result)
    assert frees == [0, (0, 0), (1, 2), ("x", 2)]  # 1 and x both finish after the second epoch
