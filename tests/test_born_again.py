"""Born-again networks (kdlab.modes.born_again): generations of the student, each distilled from the one before."""

from __future__ import annotations

import mlflow
import pytest

from kdlab.errors import ConfigError
from kdlab.modes import run
from kdlab_test_helpers import load_config, tiny_digits_config


def _runs(kdlab_home):
    client = mlflow.MlflowClient(f"sqlite:///{kdlab_home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("test")
    return sorted(client.search_runs([exp.experiment_id]), key=lambda r: r.info.start_time)


def test_generations_without_a_teacher_start_from_the_students_own_architecture(write_config, kdlab_home):
    cfg = tiny_digits_config(**{"born_again": {"generations": 2}, "training.epochs": 4})
    del cfg["teacher"]
    result = run(load_config(write_config(cfg)))
    runs = _runs(kdlab_home)
    assert [r.info.run_name for r in runs] == ["generation-0", "generation-1", "mlp-kd-seed2"]
    assert [r.data.tags["kdlab.generation"] for r in runs] == ["0", "1", "2"]
    assert [r.data.tags["kdlab.role"] for r in runs] == ["generation", "generation", "student"]
    assert runs[0].data.params["loss.name"] == "ce" and runs[1].data.params["loss.name"] == "kd"
    # each generation's teacher is the generation before it, loaded from its weights
    assert runs[1].data.params["teacher.checkpoint"].endswith(".pt")
    assert runs[2].data.params["teacher.checkpoint"] != runs[1].data.params["teacher.checkpoint"]
    assert runs[2].data.params["training.seed"] == "2"  # a new initialisation per generation
    m = result.metrics
    assert {f"generation{k}_test_accuracy" for k in range(3)} <= set(m)
    assert m["generation2_test_accuracy"] == m["test_accuracy"]
    assert m["teacher_test_accuracy"] == pytest.approx(m["generation1_test_accuracy"], abs=1e-6)
    assert 0.5 < m["ensemble_test_accuracy"] <= 1


def test_with_a_teacher_generation_one_learns_from_it(write_config):
    cfg = tiny_digits_config(**{"born_again": {"generations": 1, "ensemble": False}, "tracking.enabled": False})
    result = run(load_config(write_config(cfg)))
    assert result.teacher.source == "trained" and "ensemble_test_accuracy" not in result.metrics
    assert set(k for k in result.metrics if k.startswith("generation")) == {"generation1_test_accuracy"}


def test_one_run_mode_per_file(write_config):
    cfg = tiny_digits_config(**{"born_again": {}, "assistant": {"name": "mlp", "params": {"hidden": [8]}}})
    with pytest.raises(ConfigError, match="born_again: one run mode per run: this file has assistant and born_again"):
        load_config(write_config(cfg))
