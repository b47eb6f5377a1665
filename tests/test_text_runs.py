"""kdlab-text end to end: runs on the bundled task (named inputs with raw text bytes, a trained and cached teacher,
an augmented transfer split), a teacher and a student with different tokenizers, a study with forked workers, a
model that torch.export cannot take, the missing extra, and the shipped study files."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

from kdlab.cli import main
from kdlab.modes import Session, run
from kdlab_test_helpers import load_config, set_dotted, tiny_digits_config

ROOT = Path(__file__).resolve().parents[1]
needs_text = pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("transformers", "tokenizers")),
                                reason="needs the text extra: pip install 'kdlab[text]'")
TINY = {"train_size": 300, "val_size": 100, "test_size": 100, "adjectives": 5}


def _config(**overrides) -> dict:
    cfg = tiny_digits_config(**{
        "data": {"name": "synthetic-reviews", "params": dict(TINY)},
        "teacher": {"name": "textcnn", "params": {"embed_dim": 16, "channels": 16, "kernel_sizes": [2, 3]},
                    "training": {"epochs": 10, "batch_size": 32, "optimizer": {"lr": 0.01}}},
        "student": {"name": "embedding_mlp", "params": {"embed_dim": 8, "hidden": [8]}},
        "training.epochs": 3, "training.batch_size": 32, "training.threads": 1, "tracking.enabled": False})
    return set_dotted(cfg, overrides)


def test_a_run_on_the_bundled_task_with_an_augmented_transfer_split(write_config):
    cfg = _config(**{"data.params.transfer": {"size": 300}})
    session = Session()
    result = run(load_config(write_config(cfg)), session=session)
    assert result.teacher.source == "trained" and result.metrics["teacher_test_accuracy"] > 0.75
    (outputs,) = session.outputs.values()
    assert outputs["transfer"].shape == (300, 2)  # the teacher labels the transfer split, once, by index
    (rows,) = session.train_sets.values()
    assert rows.x["text"].dtype == torch.uint8 and len(rows) == 600 and (rows.y == -1).sum() == 300
    again = run(load_config(write_config(cfg)))  # another session: teacher and outputs from the disk cache
    assert again.teacher.source == "cache" and again.metrics["test_accuracy"] == result.metrics["test_accuracy"]


@needs_text
def test_teacher_and_student_with_different_tokenizers(write_config, tmp_path):
    """A BERT-like teacher with its own WordPiece tokenizer (a pretrained model in a local directory) distilled
    into a BiLSTM on the data's word-level ids, from CSV files."""
    from test_text_data import ROWS, write_rows
    from test_text_models import save_pretrained_model

    train = write_rows(tmp_path, ROWS * 4, "csv")
    teacher_dir = save_pretrained_model(tmp_path / "bert", [r["text"] for r in ROWS])
    cfg = _config(**{
        "data": {"name": "text-files", "params": {"train": str(train), "tokenizer": {"kind": "word"},
                                                  "transfer": {"size": 50}}},
        "teacher.name": "hf", "teacher.params": {"model": str(teacher_dir)},
        "teacher.training": {"epochs": 2, "batch_size": 16, "optimizer": {"lr": 0.001}},
        "student": {"name": "bilstm", "params": {"embed_dim": 8, "hidden": 8, "mlp": [8]}}})
    session = Session()
    result = run(load_config(write_config(cfg)), session=session)
    teacher = result.teacher.model
    assert teacher.tokenizer is not None and teacher.tokenizer.vocab_size != result.student.embed.num_embeddings
    (data,) = session.data.values()
    assert data.metadata["tokenizer"].kind == "word"
    (outputs,) = session.outputs.values()
    assert outputs["transfer"].shape == (50, 2) and outputs["train"].shape == (len(data.train), 2)
    assert 0 <= result.metrics["agreement"] <= 1


def test_a_study_with_forked_workers_on_text(write_config):
    from kdlab.study.runner import StudyOptions, run_study

    cfg = _config(**{"training.epochs": 2, "tracking.enabled": True, "tracking.log_model": False,
                     "data.params.transfer": {"size": 100}})
    cfg["study"] = {"n_trials": 2, "workers": 2, "baseline": False, "log_best_model": False,
                    "search": {"loss.params.temperature": {"type": "float", "low": 1, "high": 4}},
                    "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"}}
    summary = run_study(str(write_config(cfg, "text-study.yaml")), StudyOptions(quiet=True))
    assert summary["states"] == {"COMPLETE": 2} and summary["worker_start"] == "fork"


@needs_text
def test_a_model_that_cannot_be_exported_finishes_its_run_with_a_loadable_logged_model(write_config, tmp_path,
                                                                                       monkeypatch, caplog):
    import mlflow
    from test_text_models import save_pretrained_model

    monkeypatch.chdir(tmp_path)
    folder = save_pretrained_model(tmp_path / "bert", ["the plot was good", "the acting was bad"] * 10)
    cfg = _config(**{"tracking.enabled": True, "tracking.log_model": True, "loss": {"name": "ce"},
                     "student": {"name": "hf", "params": {"model": str(folder)}}, "training.epochs": 1})
    del cfg["teacher"]
    with caplog.at_level("WARNING", logger="kdlab"):
        assert main(["run", str(write_config(cfg)), "-q"]) == 0
    client = mlflow.MlflowClient()
    (student,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
                  if r.data.tags.get("kdlab.role") == "student"]
    assert student.info.status == "FINISHED"
    assert "cannot be exported with torch.export" in caplog.text  # the warning names the model and why
    (output,) = student.outputs.model_outputs
    model = mlflow.pytorch.load_model(f"models:/{output.model_id}")
    assert model is not None


def test_missing_extra_is_a_config_error_naming_file_line_and_how_to_install(write_config, capsys, monkeypatch):
    for name in ("transformers", "tokenizers", "datasets"):
        monkeypatch.setitem(sys.modules, name, None)  # `import transformers` now raises ImportError
    cfg = _config(**{"data": {"name": "text-files", "params": {"train": "reviews.csv"}},
                     "student": {"name": "hf", "params": {"config": {"model_type": "bert"}}}})
    path = write_config(cfg, "text.yaml")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "text.yaml: 2 problems" in err
    assert "data.params.tokenizer: expected a valid value: tokenizers is not installed (a trained word tokenizer " \
           "needs it): pip install 'kdlab[text]'" in err
    assert "student.params: expected a valid value: transformers is not installed (the hf model needs it): " \
           "pip install 'kdlab[text]'" in err
    # the bundled task and the torch-only models need none of the extra
    assert main(["validate", str(write_config(_config(), "plain.yaml"))]) == 0


def test_loading_the_plugin_imports_none_of_the_extra():
    import subprocess

    code = ("import sys; from kdlab.testing import components_of; import kdlab_text.plugin as p; "
            "components_of(p); "
            "print(sorted(m for m in ('transformers', 'tokenizers', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["text.yaml", "sst2-bilstm.yaml"])
def test_the_shipped_text_studies_validate(name, capsys):
    if name == "sst2-bilstm.yaml" and any(importlib.util.find_spec(m) is None for m in ("transformers", "datasets")):
        pytest.skip("needs the text extra: pip install 'kdlab[text]'")
    assert main(["validate", str(ROOT / "studies" / name)]) == 0
