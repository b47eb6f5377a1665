"""Continual learning with LwF (kdlab.continual): tasks learned in sequence, old/new accuracy and forgetting."""

from __future__ import annotations

import pytest

from conftest import tiny_digits_config
from kdlab.config import ConfigError, Source, dump_yaml
from kdlab.errors import KdlabError
from kdlab.modes import Session, run
from kdlab_test_helpers import load_config


def _continual(method: str, **overrides):
    cfg = tiny_digits_config(**{"continual": {"method": method}, "training.epochs": 8, "tracking.enabled": False,
                                **overrides})
    cfg.pop("teacher")
    return load_config(Source("run.yaml", dump_yaml(cfg)))


def test_lwf_forgets_less_than_finetuning():
    lwf, finetune = run(_continual("lwf")).metrics, run(_continual("finetune")).metrics
    for m in (lwf, finetune):
        assert set(m) >= {"old_task_accuracy", "new_task_accuracy", "forgetting", "task0_accuracy", "task1_accuracy"}
        assert m["old_task_accuracy"] == m["task0_accuracy"] and m["new_task_accuracy"] == m["task1_accuracy"]
        assert m["new_task_accuracy"] > 0.6  # five classes: chance is 0.2
    assert finetune["forgetting"] > 0.1
    assert lwf["forgetting"] < finetune["forgetting"] / 2
    assert lwf["old_task_accuracy"] > finetune["old_task_accuracy"]


def test_continual_run_is_tracked_with_per_task_curves(kdlab_home):
    import mlflow

    loaded = _continual("lwf", **{"tracking.enabled": True, "training.epochs": 2})
    result = run(loaded)
    client = mlflow.MlflowClient(f"sqlite:///{kdlab_home / 'mlflow.db'}")
    data = client.get_run(result.run_id).data
    assert data.tags["kdlab.role"] == "continual" and data.params["continual.method"] == "lwf"
    assert {"forgetting", "old_task_accuracy", "new_task_accuracy", "task0_val_accuracy",
            "task1_train_lwf"} <= set(data.metrics)


def test_data_without_tasks_is_a_clear_error():
    loaded = _continual("lwf")
    session = Session()
    session.get_data(loaded).tasks = None
    with pytest.raises(KdlabError, match="defines no sequence of tasks"):
        run(loaded, session=session)


def test_unknown_method_names_the_key():
    with pytest.raises(ConfigError, match="continual.method"):
        _continual("ewc")
