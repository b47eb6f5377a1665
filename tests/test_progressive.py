"""Progressive distillation through a teacher assistant (kdlab.progressive): each stage is its own MLflow run."""

from __future__ import annotations

import pytest

from conftest import tiny_digits_config
from kdlab.config import ConfigError, Source, dump_yaml
from kdlab.modes import run
from kdlab_test_helpers import load_config


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
    with pytest.raises(ConfigError, match="needs a `teacher:` section") as info:  # when the file is read
        load_config(Source("run.yaml", dump_yaml(cfg)))
    assert info.value.problems[0].key == "assistant"


def test_assistant_params_are_validated_when_the_file_is_read(write_config, capsys):
    from kdlab.cli import main

    cfg = tiny_digits_config(assistant={"name": "mlp", "params": {"hiden": [8]}}, **{"tracking.enabled": False})
    path = write_config(cfg, "ta.yaml")
    with pytest.raises(ConfigError, match="hiden") as info:
        load_config(str(path))
    assert [p.key for p in info.value.problems] == ["assistant.params.hiden"]
    assert main(["validate", str(path)]) != 0  # `kdlab validate` catches it without running anything
    err = capsys.readouterr().err
    assert "ta.yaml" in err and "assistant.params.hiden" in err and "did you mean 'hidden'" in err
    cfg["assistant"] = {"name": "mlpp"}
    with pytest.raises(ConfigError, match="assistant.name") as info:
        load_config(str(write_config(cfg, "ta2.yaml")))
    assert "mlp" in str(info.value)  # the known architectures are listed
