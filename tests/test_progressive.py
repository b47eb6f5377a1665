"""Progressive distillation through a teacher assistant (kdlab.progressive): each stage is its own MLflow run."""

from __future__ import annotations

import pytest

from conftest import tiny_digits_config
from kdlab.config import ConfigError, Source, dump_yaml, load_config
from kdlab.engine import run
from kdlab.errors import KdlabError


def test_teacher_assistant_student_chain_is_tracked_stage_by_stage(kdlab_home):
    import mlflow

    cfg = tiny_digits_config(assistant={"name": "mlp", "params": {"hidden": [32]}, "epochs": 2})
    result = run(load_config(Source("run.yaml", dump_yaml(cfg))))
    m = result.metrics
    assert {"assistant_test_accuracy", "original_teacher_test_accuracy", "test_accuracy"} <= set(m)
    # the student's teacher is the assistant
    assert m["teacher_test_accuracy"] == m["assistant_test_accuracy"]
    assert result.student.blocks[0][0].out_features == 16

    client = mlflow.MlflowClient(f"sqlite:///{kdlab_home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("test")
    runs = {r.data.tags["kdlab.role"]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"teacher", "assistant", "student"}
    student = runs["student"]
    assert student.info.run_id == result.run_id
    assert student.data.tags["kdlab.assistant_run_id"] == runs["assistant"].info.run_id
    assert student.data.tags["kdlab.chain"] == "mlp -> mlp -> mlp"
    assert runs["assistant"].data.params["student.params.hidden"] == "[32]"
    assert runs["assistant"].data.params["training.epochs"] == "2"


def test_assistant_needs_a_teacher():
    cfg = tiny_digits_config(assistant={"name": "mlp"}, **{"tracking.enabled": False, "loss.name": "ce",
                                                           "loss.params": {}})
    cfg.pop("teacher")
    with pytest.raises(KdlabError, match="needs a `teacher:` section"):
        run(load_config(Source("run.yaml", dump_yaml(cfg))))


def test_assistant_params_are_validated_against_the_student_architectures():
    cfg = tiny_digits_config(assistant={"name": "mlp", "params": {"hiden": [8]}}, **{"tracking.enabled": False})
    with pytest.raises(ConfigError, match="hiden"):
        run(load_config(Source("run.yaml", dump_yaml(cfg))))
