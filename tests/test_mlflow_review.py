"""What a reviewer sees in the MLflow UI, asserted through MlflowClient on one small study (run once for the module):
one point per step per metric, exact accuracies, models linked to their metrics and data, the study run without
base values of searched params, stepped trial objectives, plots, descriptions, provenance, a movable store; and a
pruned run's description, the export fallback and the cost metrics on single runs."""

from __future__ import annotations

import json
import shutil
import subprocess
from fractions import Fraction

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from conftest import tiny_digits_config
from kdlab.errors import Pruned
from kdlab.tracking import NOTE

VAL, TEST = 180, 360  # the tiny digits config's split sizes


@pytest.fixture(scope="module")
def study_store(tmp_path_factory):
    """A 3-trial study with a teacher, a baseline, a logged and registered best student, in a git work tree."""
    from kdlab.study.runner import StudyOptions, run_study

    root = tmp_path_factory.mktemp("review")
    home = root / "kdlab-runs"
    cfg = tiny_digits_config(**{"tracking.log_model": True, "tracking.register_model": "digits-student"})
    cfg["study"] = {"n_trials": 3, "workers": 1, "devices": "cpu", "sampler": {"name": "random", "seed": 0},
                    "pruner": {"name": "none"},
                    "search": {"loss.params.temperature": {"type": "float", "low": 1.0, "high": 8.0},
                               "loss.params.alpha": {"type": "float", "low": 0.1, "high": 0.9},
                               "student.params.hidden": {"type": "categorical", "choices": [[8], [32]]}}}
    path = root / "review.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    git = ["git", "-C", str(root), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "review.yaml"], check=True)
    subprocess.run([*git, "commit", "-qm", "study"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDLAB_HOME", str(home))
        mp.delenv("KDLAB_CACHE_DIR", raising=False)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # MLflow sets it to the last store used in this process
        run_study(str(path), StudyOptions(quiet=True))
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("review")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    return {"home": home, "client": client, "exp": exp, "runs": runs, "path": str(path), "commit": commit}


def _accuracy_keys(metrics):
    return [k for k in metrics if k.endswith("accuracy") or k == "agreement"]


def test_one_point_per_step_per_metric(study_store):
    client, runs = study_store["client"], study_store["runs"]
    for name, run in runs.items():
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), (name, key, steps)
    trial = runs["trial-0"]
    # per-epoch curves at steps 1..epochs; final metrics once, at the last epoch's step
    assert [m.step for m in client.get_metric_history(trial.info.run_id, "val_accuracy")] == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(trial.info.run_id, "test_accuracy")] == [3]
    assert [m.step for m in client.get_metric_history(trial.info.run_id, "best_val_accuracy")] == [3]
    teacher = next(r for r in runs.values() if r.data.tags.get("kdlab.role") == "teacher")
    assert teacher.data.metrics["best_val_accuracy"] == teacher.data.metrics["teacher_val_accuracy"]


def test_accuracies_are_exact_fractions(study_store):
    for name, run in study_store["runs"].items():
        for key in _accuracy_keys(run.data.metrics):
            value = run.data.metrics[key]
            n = TEST if "test" in key or key == "agreement" else VAL
            assert value == float(Fraction(round(value * n), n)), (name, key, value)
    history = study_store["client"].get_metric_history(study_store["runs"]["trial-1"].info.run_id, "val_accuracy")
    assert all(m.value == round(m.value * VAL) / VAL for m in history)


def test_study_run_params_and_records(study_store):
    runs, client = study_store["runs"], study_store["client"]
    parent = runs["study-review"]
    params = parent.data.params
    for key in ("loss.params.temperature", "loss.params.alpha", "student.params.hidden"):
        assert key not in params and f"search.{key}" in params
    assert "null" not in params.values() and "assistant" not in params and "continual" not in params
    assert not any(v == "null" for r in runs.values() for v in r.data.params.values())
    pm = parent.data.metrics
    assert "best_best_epoch" not in pm and "best_val_accuracy" in pm and "best_student_flops" in pm
    # each trial's objective, stepped by trial number, for the UI's own charts
    history = client.get_metric_history(parent.info.run_id, "trials/val_accuracy")
    assert sorted(m.step for m in history) == [0, 1, 2]
    values = {m.step: m.value for m in history}
    assert values[1] == runs["trial-1"].data.metrics["best_val_accuracy"]
    best = {m.step: m.value for m in client.get_metric_history(parent.info.run_id, "trials/best_val_accuracy")}
    assert best == {n: max(values[i] for i in range(n + 1)) for n in range(3)}
    assert [m.step for m in client.get_metric_history(parent.info.run_id, "best_val_accuracy")] == [0]


def test_descriptions_and_provenance(study_store):
    runs, exp, client = study_store["runs"], study_store["exp"], study_store["client"]
    assert "kdlab study `review`" in client.get_experiment(exp.experiment_id).tags[NOTE]
    parent = runs["study-review"]
    assert parent.data.tags[NOTE].startswith("Study `review`") and "Best: [trial" in parent.data.tags[NOTE]
    trial = runs["trial-2"]
    note = trial.data.tags[NOTE]
    assert note.startswith("Trial 2 of study [review]") and "loss.params.temperature" in note
    assert "teacher [`mlp`](#/experiments/" in note
    assert runs["baseline-ce"].data.tags[NOTE].startswith("`ce` baseline of study")
    teacher = next(r for r in runs.values() if r.data.tags.get("kdlab.role") == "teacher")
    tnote = teacher.data.tags[NOTE]
    assert tnote.startswith("Teacher `mlp`") and "Used by studies: [review]" in tnote
    assert json.loads(teacher.data.tags["kdlab.used_by_studies"]) == [["review", exp.experiment_id,
                                                                       parent.info.run_id]]
    for run in (parent, trial, teacher):
        assert run.data.tags["mlflow.source.name"] == study_store["path"]
        assert run.data.tags["mlflow.source.git.commit"] == study_store["commit"]
    # the data is an MLflow dataset input (the Dataset column), with the split sizes
    for run in (parent, trial, teacher, runs["baseline-ce"]):
        (ds,) = run.inputs.dataset_inputs
        assert ds.dataset.name == "digits" and json.loads(ds.dataset.profile)["val"] == VAL
        assert json.loads(ds.dataset.source)["data"] == "digits"


def test_logged_models_carry_metrics_and_data(study_store):
    runs, client = study_store["runs"], study_store["client"]
    best = runs[f"trial-{int(runs['study-review'].data.metrics['best_trial_number'])}"]
    (out,) = best.outputs.model_outputs
    model = client.get_logged_model(out.model_id)
    metrics = {m.key: m for m in model.metrics}
    assert metrics["test_accuracy"].value == best.data.metrics["test_accuracy"]
    assert metrics["test_accuracy"].dataset_name == "digits"
    assert {"best_val_accuracy", "student_flops", "student_latency_ms"} <= set(metrics)
    assert "val_accuracy" not in metrics  # a per-epoch curve; its kept value is best_val_accuracy
    # linking the model re-logged the trial's metrics without a second point
    assert len(client.get_metric_history(best.info.run_id, "test_accuracy")) == 1
    teacher = next(r for r in runs.values() if r.data.tags.get("kdlab.role") == "teacher")
    (tout,) = teacher.outputs.model_outputs
    assert "teacher_test_accuracy" in {m.key for m in client.get_logged_model(tout.model_id).metrics}
    # the registry has the best student under the alias champion, with its study
    version = client.get_model_version_by_alias("digits-student", "champion")
    assert version.source == f"models:/{out.model_id}" and version.run_id == best.info.run_id
    assert version.tags["kdlab.study"] == "review"
    # and the logged model's page lists the version
    linked = json.loads(client.get_logged_model(out.model_id).tags["mlflow.modelVersions"])
    assert linked == [{"name": "digits-student", "version": version.version}]
    assert float(version.tags["metric.test_accuracy"]) == best.data.metrics["test_accuracy"]


def test_plots_exist_and_are_not_empty(study_store, tmp_path):
    client, parent = study_store["client"], study_store["runs"]["study-review"]
    files = {a.path: a.file_size for a in client.list_artifacts(parent.info.run_id, "plots")}
    for name in ("optimization_history", "param_importances", "parallel_coordinate", "slice", "comparison",
                 "accuracy_vs_size"):
        assert files[f"plots/{name}.png"] > 5000, name
    assert files["plots/study.html"] > 100_000  # plotly inlined: the MLflow UI loads nothing from elsewhere
    html = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="plots/study.html",
                                               tracking_uri=f"sqlite:///{study_store['home'] / 'mlflow.db'}",
                                               dst_path=str(tmp_path))
    text = open(html).read()
    assert "Parallel coordinates" in text and "loss.params.temperature" in text


def test_a_copied_store_keeps_its_artifacts(study_store, tmp_path):
    home = study_store["home"]
    copy = tmp_path / "elsewhere" / "kdlab-runs"
    shutil.copytree(home, copy)
    moved = home.with_name("moved-away")
    home.rename(moved)  # the original is gone: nothing may resolve to it
    try:
        uri = f"sqlite:///{copy / 'mlflow.db'}"
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("review")
        assert exp.artifact_location == "mlflow-artifacts:/"
        runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
        parent = runs["study-review"]
        assert "plots/optimization_history.png" in {a.path for a in client.list_artifacts(parent.info.run_id,
                                                                                          "plots")}
        local = mlflow.artifacts.download_artifacts(run_id=runs["trial-0"].info.run_id, artifact_path="config.yaml",
                                                    tracking_uri=uri, dst_path=str(tmp_path / "dl"))
        assert yaml.safe_load(open(local))["data"]["name"] == "digits"
        best = runs[f"trial-{int(parent.data.metrics['best_trial_number'])}"]
        mlflow.set_tracking_uri(uri)
        model = mlflow.pytorch.load_model(f"models:/{best.outputs.model_outputs[0].model_id}")
        assert model is not None
    finally:
        moved.rename(home)


class _PruneAtEpoch2:
    import kdlab

    @kdlab.hookimpl
    def kdlab_epoch_end(self, run, epoch, metrics):
        if epoch == 2:
            raise Pruned("stopped after epoch 2 of 3: val_accuracy 0.1 was worse than the median")


def _one_run(write_config, options=None, **overrides):
    from kdlab.modes import run
    from kdlab_test_helpers import load_config

    return run(load_config(write_config(tiny_digits_config(**overrides))), options)


def _client(kdlab_home):
    return MlflowClient(f"sqlite:///{kdlab_home / 'mlflow.db'}")


def test_a_pruned_run_says_so_in_its_description(write_config, kdlab_home):
    from kdlab.lifecycle import RunOptions

    with pytest.raises(Pruned):
        _one_run(write_config, RunOptions(role="trial", trial_number=0, observers=[_PruneAtEpoch2()]))
    client = _client(kdlab_home)
    (run,) = [r for r in client.search_runs([client.get_experiment_by_name("test").experiment_id])
              if r.data.tags.get("kdlab.role") == "trial"]
    assert run.info.status == "KILLED"
    note = run.data.tags[NOTE]
    assert note.startswith("**Pruned** (MLflow status KILLED): stopped after epoch 2 of 3")
    assert "\n\nTrial 0: student `mlp`" in note


def test_costs_and_the_export_fallback(write_config, kdlab_home, monkeypatch):
    import kdlab.run_record as run_record

    # a student torch.export refuses (as found before training) is logged in MLflow's pickle format
    monkeypatch.setattr(run_record, "export_problem", lambda model, x: "Unsupported: data-dependent control flow")
    result = _one_run(write_config, **{"tracking.log_model": True, "training.epochs": 1,
                                       "teacher.training.epochs": 1, "tracking.register_model": "tiny"})
    m = result.metrics
    assert m["student_flops"] == 2 * (64 * 16 + 16 * 10) and m["teacher_flops"] == 2 * (64 * 64 + 64 * 10)
    assert m["flops_compression_ratio"] == m["teacher_flops"] / m["student_flops"]
    assert m["student_latency_ms"] > 0 and m["student_batch_latency_ms"] > 0 and m["teacher_latency_ms"] > 0
    client = _client(kdlab_home)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    model = client.get_logged_model(run.outputs.model_outputs[0].model_id)
    assert model.tags["kdlab.pt2_skipped"].startswith("Unsupported") and model.status.name == "READY"
    mlflow.set_tracking_uri(f"sqlite:///{kdlab_home / 'mlflow.db'}")
    assert mlflow.pytorch.load_model(f"models:/{model.model_id}") is not None
    # a plain run's student is registered too when asked, under the alias champion
    assert client.get_model_version_by_alias("tiny", "champion").source == f"models:/{model.model_id}"
    assert mlflow.pytorch.load_model("models:/tiny@champion") is not None


def test_export_problem_names_what_torch_export_refuses():
    import torch

    from kdlab.exporting import export_problem

    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x  # a branch on the data: torch.export cannot trace it

    assert export_problem(torch.nn.Linear(4, 2), torch.randn(8, 4)) is None
    assert export_problem(DataDependent(), torch.randn(8, 4))
