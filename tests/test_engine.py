"""End-to-end distillation runs: what `kdlab run` leaves in MLflow, repeatability, teacher reuse and teacher sources
(checkpoint, MLflow URI), the transfer split, devices."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

import kdlab
from conftest import tiny_digits_config
from kdlab.cli import main
from kdlab.errors import KdlabError
from kdlab.modes import RunOptions, Session, run
from kdlab.paths import default_tracking_uri
from kdlab_test_helpers import load_config

FINAL = ("test_accuracy", "teacher_test_accuracy", "student_params", "teacher_params", "compression_ratio", "agreement")



@pytest.fixture(scope="module")
def empty_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its tables made, once: creating one takes seconds (schema migrations)."""
    from kdlab.tracking import Tracker

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    Tracker(f"sqlite:///{path}", "template")
    return path


@pytest.fixture(autouse=True)
def fresh_mlflow_db(kdlab_home: Path, empty_mlflow_db: Path) -> None:
    """Each test still gets its own store (a copy of the empty one) under its own KDLAB_HOME."""
    kdlab_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(empty_mlflow_db, kdlab_home / "mlflow.db")


def _client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient(default_tracking_uri())


def _runs(role: str | None = None, experiment: str = "test") -> list:
    client = _client()
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    return [r for r in runs if role is None or r.data.tags.get("kdlab.role") == role]


def _kdlab_run(write_config, cfg: dict, *extra: str, name: str = "run.yaml") -> None:
    assert main(["run", str(write_config(cfg, name)), "--quiet", *extra]) == 0


def _load(write_config, cfg: dict, name: str = "run.yaml"):
    return load_config(write_config(cfg, name))


def test_kdlab_run_leaves_a_complete_mlflow_run(write_config, capsys, kdlab_home):
    _kdlab_run(write_config, tiny_digits_config())
    out = capsys.readouterr().out
    assert "test_accuracy=" in out and "agreement=" in out
    assert (kdlab_home / "mlflow.db").exists()

    (student,) = _runs("student")
    (teacher,) = _runs("teacher")
    assert student.info.status == "FINISHED" and teacher.info.status == "FINISHED"
    m = student.data.metrics
    for name in FINAL:
        assert name in m, name
    assert 0.0 <= m["test_accuracy"] <= 1.0 and 0.0 <= m["agreement"] <= 1.0
    assert m["teacher_test_accuracy"] > 0.8  # a 64-unit MLP learns digits in 3 epochs
    assert m["student_params"] == 64 * 16 + 16 + 16 * 10 + 10
    assert m["teacher_params"] == 64 * 64 + 64 + 64 * 10 + 10
    assert m["compression_ratio"] == pytest.approx(m["teacher_params"] / m["student_params"])

    client = _client()
    # per-epoch curves: one point per epoch, steps 1..epochs
    for name in ("val_accuracy", "val_loss", "train_loss", "train_kd", "train_ce"):
        history = client.get_metric_history(student.info.run_id, name)
        assert sorted(h.step for h in history) == [1, 2, 3], name
    assert [h.step for h in client.get_metric_history(teacher.info.run_id, "val_accuracy")] == [1, 2, 3]

    # params: flattened dotted keys as in the YAML
    p = student.data.params
    assert p["loss.name"] == "kd" and float(p["loss.params.temperature"]) == 4.0
    assert float(p["loss.params.alpha"]) == 0.9 and p["student.params.hidden"] == "[16]"
    assert p["training.epochs"] == "3" and float(p["optimizer.lr"]) == 0.01 and p["data.name"] == "digits"

    # artifacts: the resolved config
    artifacts = {a.path for a in client.list_artifacts(student.info.run_id)}
    assert "config.yaml" in artifacts
    resolved = yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{student.info.run_id}/config.yaml"))
    assert resolved["loss"] == {"name": "kd", "params": {"temperature": 4.0, "alpha": 0.9}}
    assert resolved["student"]["params"]["activation"] == "relu"  # plugin defaults are resolved

    # the student links to its teacher's run
    tags = student.data.tags
    assert tags["kdlab.teacher_run_id"] == teacher.info.run_id
    assert tags["kdlab.teacher_source"] == "trained" and tags["kdlab.seed"] == "0"
    assert teacher.data.tags["kdlab.role"] == "teacher"
    assert tags["kdlab.plugin.loss"].startswith("kdlab-losses")
    assert {a.path for a in client.list_artifacts(teacher.info.run_id, "teacher")} >= {"teacher/state_dict.pt"}


def test_log_model_logs_the_student_with_a_signature(write_config, kdlab_home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tiny_digits_config(**{"tracking.log_model": True, "training.epochs": 1, "teacher.training.epochs": 1})
    _kdlab_run(write_config, cfg)
    (student,) = _runs("student")
    outputs = student.outputs.model_outputs
    assert len(outputs) == 1
    client = _client()
    logged = client.get_logged_model(outputs[0].model_id)
    assert logged.name == "student" and logged.source_run_id == student.info.run_id
    # filed under the run's experiment and KDLAB_HOME, not MLflow's Default experiment in ./mlruns
    assert logged.experiment_id == student.info.experiment_id
    assert logged.artifact_location.startswith("mlflow-artifacts:/") and not (tmp_path / "mlruns").exists()
    assert (kdlab_home / "artifacts" / "models" / logged.model_id / "artifacts" / "MLmodel").exists()
    # the run's final metrics are the model's, measured on the run's dataset input
    model_metrics = {m.key: m for m in logged.metrics}
    assert model_metrics["test_accuracy"].value == student.data.metrics["test_accuracy"]
    assert {"best_val_accuracy", "student_flops", "agreement"} <= set(model_metrics)
    (ds,) = student.inputs.dataset_inputs
    assert model_metrics["test_accuracy"].dataset_name == ds.dataset.name == "digits"
    assert model_metrics["test_accuracy"].dataset_digest == ds.dataset.digest
    mlflow.set_tracking_uri(default_tracking_uri())
    info = mlflow.models.get_model_info(f"models:/{outputs[0].model_id}")
    assert info.signature is not None
    sig_in, sig_out = info.signature.inputs.to_dict()[0], info.signature.outputs.to_dict()[0]
    assert list(sig_in["tensor-spec"]["shape"]) == [-1, 1, 8, 8] and list(sig_out["tensor-spec"]["shape"]) == [-1, 10]
    assert logged.status.name == "READY"


def test_same_seed_same_metrics_other_seed_other_metrics(write_config):
    cfg = tiny_digits_config(**{"tracking.enabled": False})
    a = run(_load(write_config, cfg))
    b = run(_load(write_config, cfg))  # a fresh session: the teacher comes from the disk cache
    assert a.metrics["test_accuracy"] == b.metrics["test_accuracy"]
    assert [h["train_loss"] for h in a.fit.history] == [h["train_loss"] for h in b.fit.history]
    for k, v in b.student.state_dict().items():
        assert torch.equal(v, a.student.state_dict()[k])
    c = run(_load(write_config, tiny_digits_config(**{"tracking.enabled": False, "training.seed": 1})))
    assert [h["train_loss"] for h in a.fit.history] != [h["train_loss"] for h in c.fit.history]
    assert c.metrics["teacher_test_accuracy"] == a.metrics["teacher_test_accuracy"]  # same teacher


def test_same_seed_same_metrics_through_the_cli(write_config):
    cfg = tiny_digits_config()
    _kdlab_run(write_config, cfg)
    _kdlab_run(write_config, cfg)
    first, second = _runs("student")
    for name in FINAL:
        assert first.data.metrics[name] == second.data.metrics[name], name


def test_second_run_reuses_the_teacher(write_config):
    cfg = tiny_digits_config()
    _kdlab_run(write_config, cfg)
    cfg["student"]["params"]["hidden"] = [8]  # another student, the same teacher
    _kdlab_run(write_config, cfg)
    assert len(_runs("teacher")) == 1  # not retrained
    first, second = _runs("student")
    (teacher,) = _runs("teacher")
    assert first.data.tags["kdlab.teacher_source"] == "trained"
    assert second.data.tags["kdlab.teacher_source"] == "cache"
    assert second.data.tags["kdlab.teacher_run_id"] == teacher.info.run_id
    assert second.data.tags["kdlab.teacher_fingerprint"] == first.data.tags["kdlab.teacher_fingerprint"]
    assert second.data.metrics["teacher_test_accuracy"] == first.data.metrics["teacher_test_accuracy"]


def test_another_teacher_config_trains_another_teacher(write_config):
    cfg = tiny_digits_config(**{"tracking.enabled": False})
    session = Session()
    a = run(_load(write_config, cfg), session=session)
    cfg["teacher"]["training"]["seed"] = 5
    b = run(_load(write_config, cfg), session=session)
    assert a.teacher.source == "trained" and b.teacher.source == "trained"
    assert a.teacher.fingerprint != b.teacher.fingerprint
    # and the same one again in the same session is the same object
    c = run(_load(write_config, cfg), session=session)
    assert c.teacher is b.teacher


def _teacher_state(hidden: list[int]) -> dict[str, torch.Tensor]:
    from kdlab.plugins import get_registry

    comp = get_registry().get("teacher", "mlp")
    torch.manual_seed(0)
    model = comp.build(comp.validate_params({"hidden": hidden}), input_shape=(1, 8, 8), num_classes=10)
    return model.state_dict()


def test_teacher_from_a_checkpoint(write_config, tmp_path):
    state = _teacher_state([64])
    path = tmp_path / "teacher.pt"
    torch.save(state, path)
    # an untrained teacher is at chance: allowed here with a warning on the run (docs/faults.md)
    cfg = tiny_digits_config(**{"teacher.checkpoint": str(path), "teacher.on_chance_accuracy": "warn"})
    _kdlab_run(write_config, cfg)
    assert _runs("teacher") == []  # loaded, not trained
    (student,) = _runs("student")
    assert student.data.tags["kdlab.teacher_source"] == "checkpoint"
    assert "no better than chance" in student.data.tags["kdlab.teacher_warning"]
    assert student.data.metrics["teacher_params"] == sum(v.numel() for v in state.values())
    # the loaded weights are the ones used: the teacher's accuracy is that of the untrained model
    cfg = tiny_digits_config(**{"teacher.checkpoint": str(path), "tracking.enabled": False,
                                "teacher.on_chance_accuracy": "warn"})
    result = run(_load(write_config, cfg))
    for k, v in state.items():
        assert torch.equal(result.teacher.model.state_dict()[k].cpu(), v)


def test_checkpoint_wrapped_in_a_state_dict_key(write_config, tmp_path):
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": _teacher_state([64])}, path)
    cfg = tiny_digits_config(**{"teacher.checkpoint": str(path), "tracking.enabled": False,
                                "teacher.on_chance_accuracy": "warn"})
    result = run(_load(write_config, cfg))
    assert result.teacher.source == "checkpoint"


def test_checkpoint_that_does_not_fit_is_a_clear_error(write_config, tmp_path, capsys):
    path = tmp_path / "wrong.pt"
    torch.save(_teacher_state([32]), path)  # the config asks for hidden [64]
    cfg = tiny_digits_config(**{"teacher.checkpoint": str(path)})
    assert main(["run", str(write_config(cfg)), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "teacher.checkpoint" in err and "wrong.pt" in err and "do not fit" in err
    assert "shape mismatch" in err and "(32, 64) vs (64, 64)" in err
    assert "Traceback" not in err


def test_checkpoint_that_is_not_weights_only_is_refused(write_config, tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"model": Path("not a tensor")}, path)  # an arbitrary pickled object
    with pytest.raises(KdlabError, match="not a loadable weights-only checkpoint"):
        run(_load(write_config, tiny_digits_config(**{"teacher.checkpoint": str(path), "tracking.enabled": False})))


def test_missing_checkpoint_file(write_config, tmp_path):
    cfg = tiny_digits_config(**{"teacher.checkpoint": str(tmp_path / "nope.pt"), "tracking.enabled": False})
    with pytest.raises(KdlabError, match="teacher.checkpoint = .*nope.pt.*no such file"):
        run(_load(write_config, cfg))


@pytest.mark.parametrize("section", ["student", "teacher"])
def test_missing_init_checkpoint_names_its_own_key(write_config, tmp_path, section):
    cfg = tiny_digits_config(**{f"{section}.init": {"checkpoint": str(tmp_path / "gone.pt")},
                                "tracking.enabled": False})
    with pytest.raises(KdlabError, match=rf"^{section}\.init\.checkpoint = .*gone.pt.*: no such file"):
        run(_load(write_config, cfg))


@pytest.mark.parametrize("suffix", ["teacher/state_dict.pt", "teacher"])
def test_teacher_from_an_mlflow_uri(write_config, suffix):
    _kdlab_run(write_config, tiny_digits_config())
    (teacher_run,) = _runs("teacher")
    (first,) = _runs("student")
    uri = f"runs:/{teacher_run.info.run_id}/{suffix}"
    cfg = tiny_digits_config(**{"teacher.mlflow_uri": uri})
    _kdlab_run(write_config, cfg, name="from-mlflow.yaml")
    assert len(_runs("teacher")) == 1
    second = _runs("student")[1]
    assert second.data.tags["kdlab.teacher_source"] == "mlflow"
    assert second.data.tags["kdlab.teacher_run_id"] == teacher_run.info.run_id
    assert second.data.params["teacher.mlflow_uri"] == uri
    # the same teacher weights: the same teacher accuracy
    assert second.data.metrics["teacher_test_accuracy"] == first.data.metrics["teacher_test_accuracy"]


def test_bad_mlflow_uri_is_a_clear_error(write_config):
    cfg = tiny_digits_config(**{"teacher.mlflow_uri": "runs:/0123456789abcdef/teacher/state_dict.pt",
                                "tracking.enabled": False})
    with pytest.raises(KdlabError, match="teacher.mlflow_uri = 'runs:/0123456789abcdef"):
        run(_load(write_config, cfg))


class _Spy(kdlab.Loss):
    """KD that counts the rows it sees without labels."""

    unlabeled_rows = 0
    rows = 0

    def __init__(self, params):
        super().__init__()
        from kdlab_losses.logits import HintonKD, KDParams

        self.kd = HintonKD(KDParams())

    def forward(self, inputs):
        type(self).unlabeled_rows += int((~inputs.labeled).sum())
        type(self).rows += len(inputs.labels)
        return self.kd(inputs)


@pytest.mark.parametrize("use_transfer", [True, False])
def test_transfer_split_is_used_when_present(write_config, plugins, use_transfer):
    plugins.register(type("P", (), {"kdlab_register_losses": staticmethod(
        kdlab.hookimpl(lambda register: register("spy", _Spy)))})(), "test-spy")
    _Spy.unlabeled_rows = _Spy.rows = 0
    cfg = tiny_digits_config(**{"data.params.transfer_size": 100, "loss": {"name": "spy"}, "training.epochs": 2,
                                "training.use_transfer": use_transfer, "tracking.enabled": False})
    result = run(_load(write_config, cfg))
    train_rows = 1797 - 360 - 180
    if use_transfer:
        assert _Spy.unlabeled_rows == 2 * 100 and _Spy.rows == 2 * (train_rows + 100)
    else:
        assert _Spy.unlabeled_rows == 0 and _Spy.rows == 2 * train_rows
    assert 0 <= result.metrics["test_accuracy"] <= 1


def test_ce_baseline_needs_no_teacher(write_config):
    cfg = tiny_digits_config(**{"loss": {"name": "ce"}, "tracking.enabled": False})
    del cfg["teacher"]
    result = run(_load(write_config, cfg))
    assert result.teacher is None and "agreement" not in result.metrics
    assert set(result.fit.history[0]) >= {"train_loss", "train_ce", "val_accuracy", "val_loss", "lr", "epoch_time_s"}


def test_kd_without_a_teacher_is_an_error(write_config):
    cfg = tiny_digits_config(**{"tracking.enabled": False})
    del cfg["teacher"]
    with pytest.raises(KdlabError, match="add a `teacher:` section"):
        run(_load(write_config, cfg))


def test_run_options_device_and_observers(write_config):
    class Epochs:
        def __init__(self):
            self.seen = []

        @kdlab.hookimpl
        def kdlab_epoch_end(self, run, epoch):
            if run.role == "student":
                self.seen.append(epoch)

    watcher = Epochs()
    cfg = tiny_digits_config(**{"tracking.enabled": False})
    result = run(_load(write_config, cfg), RunOptions(device="cpu", observers=[watcher]))
    assert watcher.seen == [1, 2, 3] and result.fit.epochs_run == 3 and result.student.training is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(write_config, capsys):
    cfg = tiny_digits_config(**{"training.device": "cuda"})
    with pytest.raises(KdlabError, match="training.device = 'cuda': CUDA is not available"):
        run(_load(write_config, cfg))
    assert main(["run", str(write_config(cfg)), "--quiet", "--device", "cuda:1"]) == 1
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run(write_config):
    result = run(_load(write_config, tiny_digits_config(**{"training.device": "cuda", "tracking.enabled": False})))
    assert result.metrics["teacher_test_accuracy"] > 0.8


def test_no_track_leaves_no_mlflow_run(write_config, capsys):
    _kdlab_run(write_config, tiny_digits_config(), "--no-track")
    assert "test_accuracy=" in capsys.readouterr().out
    assert _client().get_experiment_by_name("test") is None


class _NaN(kdlab.Loss):
    """A loss that becomes NaN."""

    uses_teacher = False

    def __init__(self, params):
        super().__init__()

    def forward(self, inputs):
        # finite on the first batch (a NaN there is a broken loss, checked apart: docs/faults.md), NaN after
        self.calls = getattr(self, "calls", 0) + 1
        total = inputs.student_logits.sum() * (float("nan") if self.calls > 1 else 0.0)
        return kdlab.LossOutput(total, {"nan": total})


def test_a_failing_run_is_recorded_as_failed_with_the_reason(write_config, plugins, capsys):
    plugins.register(type("P", (), {"kdlab_register_losses": staticmethod(
        kdlab.hookimpl(lambda register: register("nan", _NaN)))})(), "test-nan")
    cfg = tiny_digits_config(**{"loss": {"name": "nan"}})
    del cfg["teacher"]
    assert main(["run", str(write_config(cfg)), "--quiet"]) == 1
    assert "the training loss became nan in epoch 1" in capsys.readouterr().err
    (student,) = _runs("student")
    assert student.info.status == "FAILED"
    assert student.data.tags["kdlab.status_reason"].startswith("NonFiniteLoss: the training loss became nan")


def test_teacher_outputs_are_computed_once_and_cached(write_config, monkeypatch):
    """The teacher is not run per training step: its outputs are computed once, cached on disk, and reused."""
    import kdlab.distill as distill
    from kdlab.paths import cache_dir

    cfg = tiny_digits_config(**{"tracking.enabled": False, "data.params.transfer_size": 50})
    first = run(_load(write_config, cfg))
    cached = list(cache_dir("outputs").glob("*.pt"))
    assert [p.stem for p in cached] == [first.teacher.fingerprint]
    stored = torch.load(cached[0], weights_only=True)
    assert set(stored) == {"train", "val", "test", "transfer"} and len(stored["transfer"]) == 50

    calls = []
    real_get_teacher = distill.get_teacher

    def counting_get_teacher(*args, **kwargs):
        teacher = real_get_teacher(*args, **kwargs)
        teacher.model.register_forward_hook(lambda *a: calls.append(1))
        return teacher

    monkeypatch.setattr(distill, "get_teacher", counting_get_teacher)
    # measuring what the teacher costs runs it on purpose (once per session and device): not counted here
    real_costs = distill.model_costs
    monkeypatch.setattr(distill, "model_costs", lambda m, x, role: {} if role == "teacher" else real_costs(m, x, role))
    second = run(_load(write_config, cfg))  # a new session: teacher and its outputs come from the disk cache
    assert second.teacher.source == "cache"
    assert calls == []  # not once: not per step, not per epoch, not for the metrics
    assert second.metrics["teacher_test_accuracy"] == first.metrics["teacher_test_accuracy"]
    assert second.metrics["test_accuracy"] == first.metrics["test_accuracy"]


def test_cached_teacher_gets_a_run_in_another_tracking_store(write_config, kdlab_home, tmp_path):
    """A teacher trained while tracking to one store and reused while tracking to another is recorded there too
    (no retraining), so the student's kdlab.teacher_run_id link resolves in the store it was logged to."""
    import mlflow

    from kdlab.cli import main

    path = write_config(tiny_digits_config())
    assert main(["run", str(path), "--quiet"]) == 0
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert main(["run", str(path), "--quiet", "--tracking-uri", other]) == 0
    client = mlflow.MlflowClient(other)
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    teachers = [r for r in runs if r.data.tags.get("kdlab.role") == "teacher"]
    students = [r for r in runs if r.data.tags.get("kdlab.role") == "student"]
    assert len(teachers) == 1 and teachers[0].data.tags["kdlab.teacher_source"] == "cache"
    assert students[0].data.tags["kdlab.teacher_run_id"] == teachers[0].info.run_id
    assert "teacher_test_accuracy" in teachers[0].data.metrics
