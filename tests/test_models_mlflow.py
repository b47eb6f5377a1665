"""Loading models never executes their pickles: from MLflow, weights only (a state_dict with weights_only, or an
exported program MLflow checks holds no pickle); a model that offers only a pickle is refused. A loaded teacher at
chance is an error, or a warning recorded on the run (docs/faults.md)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import tiny_digits_config
from kdlab.cli import main

MARKER_ENV = "KDLAB_TEST_UNPICKLED"


class Booby(nn.Module):
    """A model whose unpickling writes a file: what a malicious pickle could do."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(x.flatten(1))

    def __setstate__(self, state):
        Path(os.environ[MARKER_ENV]).write_text("code ran while loading")
        super().__setstate__(state)


def log_model_folder(kdlab_home, folder: Path, name: str) -> str:
    """Log a saved MLflow model folder as artifacts of a new run; returns ``runs:/ID/name``."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{kdlab_home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("models") or client.get_experiment(client.create_experiment("models"))
    run = client.create_run(exp.experiment_id)
    client.log_artifacts(run.info.run_id, str(folder), name)
    client.set_terminated(run.info.run_id)
    return f"runs:/{run.info.run_id}/{name}"


@pytest.fixture
def pickled_uri(kdlab_home, tmp_path, monkeypatch):
    import mlflow.pytorch

    monkeypatch.setenv(MARKER_ENV, str(tmp_path / "unpickled.txt"))
    folder = tmp_path / "pickled"
    mlflow.pytorch.save_model(Booby(), str(folder), serialization_format="pickle", pip_requirements=[])
    return log_model_folder(kdlab_home, folder, "teacher"), tmp_path / "unpickled.txt"


@pytest.mark.parametrize("key", ["teacher.mlflow_uri", "student.init"])
def test_a_pickled_mlflow_model_is_refused_and_never_unpickled(key, pickled_uri, write_config, capsys):
    uri, marker = pickled_uri
    if key == "student.init":
        cfg = tiny_digits_config(**{"student.init": {"mlflow_uri": uri}, "tracking.enabled": False})
    else:
        cfg = tiny_digits_config(**{"teacher.mlflow_uri": uri, "tracking.enabled": False})
    assert main(["run", str(write_config(cfg)), "-q"]) == 1
    err = capsys.readouterr().err
    assert f"{key if key != 'student.init' else 'student.init.mlflow_uri'} = '{uri}'" in err
    assert "stored as a Python pickle" in err and "serialization_format='pt2'" in err and "state_dict.pt" in err
    assert not marker.exists()


def test_an_exported_program_loads_without_pickle(write_config, kdlab_home, tmp_path, capsys):
    import mlflow.pytorch

    from kdlab.plugins import get_registry

    # a teacher trained by kdlab, exported elsewhere as a pt2 program (no state_dict beside it)
    assert main(["run", str(write_config(tiny_digits_config(**{"tracking.enabled": False}))), "-q"]) == 0
    first = capsys.readouterr().out
    comp = get_registry().get("teacher", "mlp")
    from kdlab.teachers.cache import cached_teacher, teacher_cache_dir

    (fp,) = [p.name for p in teacher_cache_dir().iterdir()]
    model = comp.build(comp.validate_params({"hidden": [64]}), input_shape=(1, 8, 8), num_classes=10)
    model.load_state_dict(cached_teacher(fp)[0])
    folder = tmp_path / "exported"
    mlflow.pytorch.save_model(model.eval(), str(folder), serialization_format="pt2", pip_requirements=[],
                              input_example=np.zeros((2, 1, 8, 8), dtype=np.float32))
    uri = log_model_folder(kdlab_home, folder, "exported")
    cfg = tiny_digits_config(**{"teacher.mlflow_uri": uri, "tracking.enabled": False})
    assert main(["run", str(write_config(cfg, "from-mlflow.yaml")), "-q"]) == 0
    second = capsys.readouterr().out
    assert [w for w in second.split() if "accuracy" in w] == [w for w in first.split() if "accuracy" in w]


def test_a_loaded_teacher_at_chance_is_an_error_or_a_recorded_warning(write_config, tmp_path, capsys, kdlab_home):
    import mlflow

    from kdlab.plugins import get_registry

    comp = get_registry().get("teacher", "mlp")
    torch.manual_seed(0)
    random_teacher = comp.build(comp.validate_params({"hidden": [64]}), input_shape=(1, 8, 8), num_classes=10)
    path = tmp_path / "untrained.pt"
    torch.save(random_teacher.state_dict(), path)
    cfg = tiny_digits_config(**{"teacher.checkpoint": str(path)})
    assert main(["run", str(write_config(cfg)), "-q"]) == 1
    err = capsys.readouterr().err
    assert "teacher.checkpoint = " in err and "no better than chance" in err and "on_chance_accuracy: warn" in err
    cfg["teacher"]["on_chance_accuracy"] = "warn"
    assert main(["run", str(write_config(cfg)), "-q"]) == 0
    assert "kdlab: warning: teacher.checkpoint = " in capsys.readouterr().err
    client = mlflow.MlflowClient(f"sqlite:///{kdlab_home / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id],
                              filter_string="attributes.status = 'FINISHED'")
    assert "no better than chance" in runs[0].data.tags["kdlab.teacher_warning"]
