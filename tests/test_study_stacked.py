"""Stacked trials in a study (``study.stack``, docs/studies.md): K trials of a worker trained together as one batched
model, each still its own Optuna trial and its own ``trial-<n>`` MLflow run."""

from __future__ import annotations

import optuna
import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field
from test_study import load_study, mlflow_runs, study_config

import kdlab
from kdlab.functional import masked_cross_entropy
from kdlab.study.runner import StudyOptions, run_study
from kdlab.study.stacked import auto_capacity


def _lr_grid(*lrs):
    return {"optimizer.lr": {"type": "categorical", "choices": list(lrs)}}


def test_a_stacked_study_records_every_member_as_its_own_trial(write_config, kdlab_home):
    path = write_config(study_config(n_trials=5, stack=3, baseline=False), "stacked.yaml")
    summary = run_study(str(path), StudyOptions(quiet=True))
    assert summary["states"] == {"COMPLETE": 5}  # the budget exactly, the last stack partial
    study = load_study(kdlab_home, "stacked")
    assert len(study.trials) == 5
    client, runs = mlflow_runs(kdlab_home, "stacked")
    by_name = {r.info.run_name: r for r in runs}
    trial_runs = [r for r in runs if r.data.tags.get("kdlab.role") == "trial"]
    assert sorted(r.info.run_name for r in trial_runs) == [f"trial-{i}" for i in range(5)]  # one run per member
    for t in study.trials:
        run = by_name[f"trial-{t.number}"]
        assert t.user_attrs["stack"] == run.data.tags["kdlab.stack"] and run.data.tags["kdlab.stacked"] == "true"
        assert run.info.status == "FINISHED" and run.data.tags["kdlab.trial_state"] == "COMPLETE"
        # the member's own params, curves and final metrics
        assert float(run.data.params["optimizer.lr"]) == pytest.approx(t.params["optimizer.lr"])
        assert float(run.data.params["loss.params.temperature"]) == pytest.approx(
            t.params["loss.params.temperature"])
        assert run.data.metrics["best_val_accuracy"] == t.value
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2, 3]
        assert "test_accuracy" in run.data.metrics and "agreement" in run.data.metrics
        assert t.user_attrs["metrics"]["test_accuracy"] == run.data.metrics["test_accuracy"]
    # members with different params learned different things
    assert len({t.value for t in study.trials}) > 1


def test_a_stacked_member_trains_as_the_same_trial_alone(write_config, kdlab_home):
    lrs = [0.003, 0.01, 0.03]
    grid = {"name": "grid", "seed": 0}
    for name, stack in (("alone", 1), ("together", 3)):
        cfg = study_config(n_trials=3, stack=stack, baseline=False, sampler=grid, search=_lr_grid(*lrs))
        cfg["study"]["name"] = name
        run_study(str(write_config(cfg, f"{name}.yaml")), StudyOptions(quiet=True))
    client, runs = mlflow_runs(kdlab_home, "alone")
    _, together_runs = mlflow_runs(kdlab_home, "together")

    def by_lr(rs):
        return {float(r.data.params["optimizer.lr"]): r for r in rs if r.data.tags.get("kdlab.role") == "trial"}

    alone, together = by_lr(runs), by_lr(together_runs)
    assert sorted(alone) == sorted(together) == lrs
    assert all("kdlab.stack" not in r.data.tags for r in alone.values())
    assert len({r.data.tags["kdlab.stack"] for r in together.values()}) == 1  # one stack of three
    for lr in lrs:
        a, b = alone[lr], together[lr]
        # the same batches and the same initial weights: the same losses up to float rounding
        for key in ("train_loss", "val_loss"):
            ha = [m.value for m in sorted(client.get_metric_history(a.info.run_id, key), key=lambda m: m.step)]
            hb = [m.value for m in sorted(client.get_metric_history(b.info.run_id, key), key=lambda m: m.step)]
            assert hb == pytest.approx(ha, rel=1e-3, abs=1e-4)
        for key in ("val_accuracy", "test_accuracy", "best_val_accuracy"):
            assert abs(a.data.metrics[key] - b.data.metrics[key]) <= 0.01  # within a point


class _PruneSlowLearners(optuna.pruners.BasePruner):
    """Prunes a trial with a tiny learning rate at its second epoch: a pruning decision the test knows in advance."""

    def prune(self, study, trial) -> bool:
        return trial.params.get("optimizer.lr", 1.0) < 1e-4 and trial.last_step == 2


def test_a_pruned_member_leaves_the_stack_and_a_new_trial_takes_its_slot(write_config, kdlab_home, monkeypatch):
    import kdlab.study.sampling as sampling

    monkeypatch.setattr(sampling, "build_pruner", lambda config: _PruneSlowLearners())
    cfg = study_config(n_trials=4, stack=2, baseline=False, sampler={"name": "grid", "seed": 0},
                       search=_lr_grid(1e-5, 0.01, 0.02, 0.03))
    cfg["training"]["epochs"] = 4
    summary = run_study(str(write_config(cfg, "pruned.yaml")), StudyOptions(quiet=True))
    assert summary["states"] == {"COMPLETE": 3, "PRUNED": 1}
    study = load_study(kdlab_home, "pruned")
    client, runs = mlflow_runs(kdlab_home, "pruned")
    by_name = {r.info.run_name: r for r in runs}
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert [t.params["optimizer.lr"] for t in pruned] == [1e-5]  # exactly the pruned member
    run = by_name[f"trial-{pruned[0].number}"]
    assert run.info.status == "KILLED" and run.data.tags["kdlab.trial_state"] == "PRUNED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2]
    assert "stopped after epoch 2 of 4" in pruned[0].user_attrs["fail_reason"]
    # the freed slot was filled at that epoch boundary: all four trials trained in the worker's one stack
    assert {t.user_attrs["stack"] for t in study.trials} == {"0.1"}
    for t in study.trials:
        if t.state.name == "COMPLETE":
            steps = [m.step for m in client.get_metric_history(by_name[f"trial-{t.number}"].info.run_id,
                                                               "val_accuracy")]
            assert steps == [1, 2, 3, 4]


def test_stack_peers_prune_below_the_cohorts_median_once_past_the_warm_up():
    from kdlab.study.peers import StackPeers

    class Done:  # a completed trial, as the rule reads it
        def __init__(self, values):
            self.intermediate_values = dict(enumerate(values, 1))

    peers = StackPeers("val_accuracy", maximize=True, n_startup_trials=4, n_warmup_steps=2)
    curves = {k: [0.1 * k + 0.01 * e for e in range(1, 7)] for k in range(6)}  # member k: 0.1k + 0.01 epoch
    alive, pruned_at = set(curves), {}
    for epoch in range(1, 7):
        for k in alive:
            peers.record(k, {"val_accuracy": curves[k][epoch - 1]})
        out = peers.judge([(k, epoch) for k in sorted(alive)], lambda: [])
        for k, why in out.items():
            assert "median" in why and "stack's members" in why
            peers.left(k, pruned=True)
            alive.discard(k)
            pruned_at[k] = epoch
    # not before the warm-up (epoch 2, as Optuna's median pruner); then the members below the median of the other
    # five; a pruned member stays in the cohort with its last value, so the survivors are not halved again
    assert pruned_at == {0: 2, 1: 2, 2: 2}
    # with fewer than n_startup_trials values to compare with, nobody is pruned
    few = StackPeers("val_accuracy", maximize=True, n_startup_trials=4, n_warmup_steps=0)
    for k in range(3):
        few.record(k, {"val_accuracy": 0.1 * k})
    assert few.judge([(k, 1) for k in range(3)], lambda: []) == {}
    # completed trials count, and a completed member leaves the in-memory cohort (the storage has it)
    assert set(few.judge([(k, 1) for k in range(3)], lambda: [Done([0.5]), Done([0.6])])) == {0, 1, 2}
    few.left(2, pruned=False)
    assert 2 not in few.history
    # loss: lower is better, judged on the best value so far
    low = StackPeers("val_loss", maximize=False, n_startup_trials=1, n_warmup_steps=0)
    low.record("a", {"val_loss": 0.5})
    low.record("a", {"val_loss": 0.9})
    low.record("b", {"val_loss": 0.6})
    low.record("b", {"val_loss": 0.7})
    assert low.judge([("a", 2), ("b", 2)], lambda: []) == {}  # a's best (0.5) beats b's 0.7; b's 0.6 beats a's 0.9
    low.record("b", {"val_loss": 0.95})
    low.record("a", {"val_loss": 0.4})
    assert list(low.judge([("a", 3), ("b", 3)], lambda: [])) == ["b"]


@pytest.mark.parametrize("stack_peers", [True, False])
def test_stack_members_are_pruned_against_each_other_before_any_trial_completes(write_config, kdlab_home,
                                                                                stack_peers):
    lrs = [1e-6, 2e-6, 0.01, 0.02, 0.03]
    cfg = study_config(n_trials=5, stack=5, baseline=False, sampler={"name": "grid", "seed": 0},
                       search=_lr_grid(*lrs),
                       pruner={"name": "median", "n_startup_trials": 3, "n_warmup_steps": 2,
                               "stack_peers": stack_peers})
    cfg["training"]["epochs"] = 4
    cfg["study"]["name"] = name = f"peers-{stack_peers}"
    summary = run_study(str(write_config(cfg, f"{name}.yaml")), StudyOptions(quiet=True))
    study = load_study(kdlab_home, name)
    if not stack_peers:  # Optuna's median pruner alone: the members all start together, none completes before
        assert summary["states"] == {"COMPLETE": 5}
        return
    pruned = sorted(t.params["optimizer.lr"] for t in study.trials if t.state.name == "PRUNED")
    assert pruned == [1e-6, 2e-6]  # the two that hardly learn, at the warm-up's end, and nobody else
    client, runs = mlflow_runs(kdlab_home, name)
    by_name = {r.info.run_name: r for r in runs}
    for t in study.trials:
        if t.state.name == "PRUNED":
            assert sorted(t.intermediate_values) == [1, 2]
            assert "stopped after epoch 2 of 4" in t.user_attrs["fail_reason"]
            assert "median" in t.user_attrs["fail_reason"] and "stack's members" in t.user_attrs["fail_reason"]
            run = by_name[f"trial-{t.number}"]
            assert run.info.status == "KILLED" and run.data.tags["kdlab.trial_state"] == "PRUNED"


class _PoisonParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    poison: float = Field(0.0, ge=0, le=1)


class _Poison(kdlab.Loss):
    """Cross-entropy, or NaN when ``poison`` > 0.5: stackable (the switch is a tensor buffer)."""

    uses_teacher = False
    stackable = True

    def __init__(self, params: _PoisonParams):
        super().__init__()
        self.register_buffer("poison", torch.tensor(params.poison, dtype=torch.float64))

    def forward(self, inputs):
        ce = masked_cross_entropy(inputs.student_logits, inputs.labels)
        total = torch.where(self.poison > 0.5, torch.full_like(ce, float("nan")), ce)
        return kdlab.LossOutput(total, {"ce": ce})


class PoisonLoss:
    @kdlab.hookimpl
    def kdlab_register_losses(self, register):
        register("poison", _Poison, _PoisonParams, "cross-entropy, or NaN")


def test_a_nan_member_fails_alone(write_config, kdlab_home, plugins):
    plugins.register(PoisonLoss(), "poison-loss")
    cfg = study_config(n_trials=3, stack=3, baseline=False, sampler={"name": "grid", "seed": 0},
                       search={"loss.params.poison": {"type": "categorical", "choices": [0.0, 1.0]},
                               "optimizer.lr": {"type": "categorical", "choices": [0.01, 0.02]}})
    cfg["loss"] = {"name": "poison"}
    del cfg["teacher"]
    summary = run_study(str(write_config(cfg, "poison.yaml")), StudyOptions(quiet=True, n_trials=3))
    study = load_study(kdlab_home, "poison")
    states = {(t.params["loss.params.poison"], t.params["optimizer.lr"]): t.state.name for t in study.trials}
    assert summary["states"] == {"COMPLETE": sum(1 for (p, _) in states if p == 0.0),
                                 "FAIL": sum(1 for (p, _) in states if p == 1.0)}
    assert all(state == ("FAIL" if p == 1.0 else "COMPLETE") for (p, _), state in states.items())
    _, runs = mlflow_runs(kdlab_home, "poison")
    for t in study.trials:
        run = next(r for r in runs if r.info.run_name == f"trial-{t.number}")
        if t.state.name == "FAIL":
            assert "NonFiniteLoss" in t.user_attrs["fail_reason"] and "nan" in t.user_attrs["fail_reason"]
            assert run.info.status == "FAILED" and run.data.tags["kdlab.trial_state"] == "FAIL"
        else:
            assert run.info.status == "FINISHED" and t.value > 0.5


def test_trials_that_differ_in_shape_or_cannot_stack_train_apart(write_config, kdlab_home):
    cfg = study_config(n_trials=4, baseline=False, sampler={"name": "grid", "seed": 0}, search={
        "student.params.hidden": {"type": "categorical", "choices": [[8], [16]]},
        "loss.name": {"type": "categorical", "choices": ["kd", "dist"]}})
    summary = run_study(str(write_config(cfg, "shapes.yaml")), StudyOptions(quiet=True, stack=4))
    assert summary["states"] == {"COMPLETE": 4}
    study = load_study(kdlab_home, "shapes")
    _, runs = mlflow_runs(kdlab_home, "shapes")
    hidden = {r.info.run_name: r.data.params["student.params.hidden"] for r in runs
              if r.data.tags.get("kdlab.role") == "trial"}
    stacks = {(hidden[f"trial-{t.number}"], t.params["loss.name"]): t.user_attrs["stack"] for t in study.trials}
    assert sorted(stacks) == [("[16]", "dist"), ("[16]", "kd"), ("[8]", "dist"), ("[8]", "kd")]
    assert stacks["[8]", "dist"].startswith("alone: loss DIST does not declare stackable")
    assert stacks["[16]", "dist"].startswith("alone:")
    assert not stacks["[8]", "kd"].startswith("alone") and not stacks["[16]", "kd"].startswith("alone")
    assert stacks["[8]", "kd"] != stacks["[16]", "kd"]  # other shapes: another stack


def test_stack_auto_sizes_by_device_model_and_budget():
    assert auto_capacity(10_000, "cpu", 64, budget=100, workers=2) == 16
    assert auto_capacity(10_000, "cpu", 64, budget=14, workers=2) == 7  # each worker's share of the budget
    assert auto_capacity(50_000_000, "cpu", 64, budget=100, workers=1) == 1  # a big student keeps a core alone


def test_stack_is_validated(write_config):
    from kdlab.errors import ConfigError

    path = write_config(study_config(stack=0), "bad.yaml")
    with pytest.raises(ConfigError, match="stack"):
        run_study(str(path), StudyOptions(quiet=True))


class _CtrlCAtEpoch2:
    @kdlab.hookimpl
    def kdlab_epoch_end(self, run, epoch, metrics):
        if run.role == "trial" and epoch == 2:
            raise KeyboardInterrupt


def test_ctrl_c_ends_every_member_killed_and_the_study_resumes(write_config, kdlab_home, plugins):
    from kdlab import signals

    path = write_config(study_config(n_trials=3, stack=3, baseline=False), "ctrlc.yaml")
    plugins.register(_CtrlCAtEpoch2(), "ctrl-c")
    summary = run_study(str(path), StudyOptions(quiet=True))
    assert summary["interrupted"] == "SIGINT"
    study = load_study(kdlab_home, "ctrlc")
    assert [t.state.name for t in study.trials] == ["FAIL"] * 3
    assert {t.user_attrs["fail_reason"] for t in study.trials} == {"interrupted"}
    _, runs = mlflow_runs(kdlab_home, "ctrlc")
    assert sorted(r.info.status for r in runs if r.data.tags.get("kdlab.role") == "trial") == ["KILLED"] * 3
    plugins.unregister("ctrl-c")
    signals.reset()
    summary = run_study(str(path), StudyOptions(quiet=True))  # resumed: interrupted trials do not count
    assert summary["states"] == {"COMPLETE": 3, "FAIL": 3}


@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_two_stacking_workers_share_the_budget_in_the_storage(write_config, kdlab_home, tmp_path, request, kind):
    """Two worker processes, each with its own stack, claim from the budget kept in the storage (a journal file, or
    PostgreSQL with heartbeats): exactly n_trials trials, each once, every one recorded with its owner."""
    url = (f"journal:{tmp_path / 'stacked.journal'}" if kind == "journal"
           else request.getfixturevalue("postgres_url"))
    cfg = study_config(n_trials=7, workers=2, stack=3, baseline=False, storage=url)
    summary = run_study(str(write_config(cfg, "two.yaml")), StudyOptions(quiet=True))
    assert summary["states"] == {"COMPLETE": 7}
    from kdlab.study.storage import make_storage

    study = optuna.load_study(study_name="two", storage=make_storage(url))
    assert len(study.trials) == 7
    assert {t.user_attrs["worker"] for t in study.trials} == {0, 1}  # both workers stacked trials
    assert all(not t.user_attrs["stack"].startswith("alone") and "owner" in t.user_attrs for t in study.trials)
    _, runs = mlflow_runs(kdlab_home, "two")
    assert sorted(r.info.run_name for r in runs if r.data.tags.get("kdlab.role") == "trial") == \
        sorted(f"trial-{t.number}" for t in study.trials)


def test_a_held_trial_keeps_its_heartbeat_until_released(postgres_url):
    """A stacked trial waits and trains outside study.optimize: its heartbeat thread keeps it from going stale while
    it is held, and stops when it is released."""
    import time

    from kdlab.study.storage import make_storage
    from kdlab.study.trials import heartbeat

    storage = make_storage(postgres_url, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="held", storage=storage)
    trial = study.ask()
    with heartbeat(trial, storage):
        time.sleep(3.5)  # past the grace period: only the beats keep it alive
        optuna.storages.fail_stale_trials(study)
        assert study.trials[0].state.name == "RUNNING"
    time.sleep(3.5)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state.name == "FAIL"


def test_a_trial_failed_by_another_process_is_dropped_not_the_worker(tmp_path, caplog):
    from kdlab.study.storage import make_storage
    from kdlab.study.trials import tell

    url = f"journal:{tmp_path / 'told.journal'}"
    study = optuna.create_study(study_name="told", storage=make_storage(url))
    trial = study.ask()
    other = optuna.load_study(study_name="told", storage=make_storage(url))  # another process judged it stale
    other.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    with caplog.at_level("WARNING", logger="kdlab"):
        tell(study, trial, 0.9, optuna.trial.TrialState.COMPLETE)
    assert "failed by another process" in caplog.text
    assert optuna.load_study(study_name="told", storage=make_storage(url)).trials[0].state.name == "FAIL"
    with pytest.raises(ValueError):  # any other error still reaches the caller
        tell(study, study.ask(), [0.1, 0.2], optuna.trial.TrialState.COMPLETE)
