"""`kdlab compare`: a study per method over its own declared space, the best setting retrained on seeds beside the
baseline, paired gains with t intervals, a markdown table and an MLflow parent run; resumable."""

from __future__ import annotations

import json
import math

import mlflow
import pytest

from kdlab.cli import main
from kdlab.compare.runner import method_study
from kdlab.compare.stats import mean_ci95, paired_gain, t95
from kdlab.errors import ConfigError
from kdlab_test_helpers import load_config, tiny_digits_config


def compare_config(**compare) -> dict:
    cfg = tiny_digits_config(**{"training.epochs": 2, "teacher.training.epochs": 3, "training.threads": 1})
    cfg["compare"] = {"methods": ["kd", {"name": "hard", "label": "hard-labels"}], "n_trials": 2, "seeds": 2,
                      "search": {"optimizer.lr": {"type": "float", "low": 0.003, "high": 0.03, "log": True},
                                 "loss.params.temperature": {"type": "float", "low": 2, "high": 6}},
                      "study": {"sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"}, "workers": 1,
                                "baseline": False, "log_best_model": False},
                      **compare}
    return cfg


def test_t_interval_and_paired_gain():
    assert t95(2) == pytest.approx(4.303) and t95(100) == pytest.approx(1.96)
    mean, low, high = mean_ci95([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    gain, low, high = paired_gain([0.8, 0.9, 0.85], [0.7, 0.75, 0.8])
    assert gain == pytest.approx(0.1) and low < gain < high
    with pytest.raises(ValueError, match="same seeds"):
        paired_gain([0.1], [0.1, 0.2])


def test_each_method_searches_the_shared_dimensions_it_has_and_its_declared_space(write_config):
    from kdlab.compare.config import load_compare_config

    lc = load_compare_config(load_config(write_config(compare_config(
        methods=["kd", "hard", {"name": "dkd", "params": {"beta": 4.0}}]))))
    kd, hard, dkd = (method_study(lc, s) for s in lc.compare.specs())
    assert set(kd["study"]["search"]) == {"optimizer.lr", "loss.params.temperature", "loss.params.alpha"}
    assert kd["study"]["search"]["loss.params.temperature"] == {"type": "float", "low": 2, "high": 6}  # the file's
    assert set(hard["study"]["search"]) == {"optimizer.lr", "loss.params.alpha"}  # hard has no temperature
    assert "loss.params.beta" not in dkd["study"]["search"] and dkd["loss"]["params"] == {"beta": 4.0}
    assert kd["study"]["name"] == "run-kd" and kd["loss"] == {"name": "kd", "params": {}}


def test_unknown_method_is_a_config_error(write_config):
    with pytest.raises(ConfigError, match=r"compare.methods.1: unknown loss; did you mean 'hard'\?"):
        from kdlab.compare.config import load_compare_config

        load_compare_config(load_config(write_config(compare_config(methods=["kd", "hardd"]))))


def test_compare_runs_resumes_and_records(write_config, kdlab_home, capsys):
    path = write_config(compare_config(), "cmp.yaml")
    assert main(["compare", str(path), "-q"]) == 0
    table = (kdlab_home / "compare" / "cmp.md").read_text()
    assert "| `ce (baseline)` |" in table and "| `kd` |" in table and "| `hard-labels` |" in table
    assert "best validation epoch" in table and "95% confidence interval" in table
    results = json.loads((kdlab_home / "compare" / "cmp.json").read_text())
    assert [r["method"] for r in results] == ["ce (baseline)", "kd", "hard-labels"]
    assert all(sorted(r["seeds"]) == ["0", "1"] for r in results)
    kd = results[1]
    assert set(kd["setting"]) == {"optimizer.lr", "loss.params.temperature", "loss.params.alpha"} and kd["trials"] == 2
    assert kd["summary"]["gain_ci_low"] <= kd["summary"]["gain_mean"] <= kd["summary"]["gain_ci_high"]

    client = mlflow.MlflowClient(f"sqlite:///{kdlab_home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cmp")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.info.run_name == "compare-cmp"]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"ce (baseline)", "kd", "hard-labels"}
    seeds = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == children["kd"].info.run_id]
    assert sorted(r.info.run_name for r in seeds) == ["kd-seed0", "kd-seed1"]
    assert children["kd"].data.metrics["test_accuracy_mean"] == pytest.approx(kd["summary"]["test_accuracy_mean"])
    assert any(f.path == "compare.md" for f in client.list_artifacts(parent.info.run_id))

    # run again: the studies are complete and the seed runs recorded, so nothing is trained again
    assert main(["compare", str(path), "-q"]) == 0
    assert len(client.search_runs([exp.experiment_id])) == len(runs)
