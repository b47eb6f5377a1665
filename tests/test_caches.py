"""Caches that cannot go stale or stay broken: fingerprints cover the component's code, damaged entries are found by
checksum, removed and rebuilt with a warning, a teacher is cached only once its run is recorded, and `kdlab cache`
lists and clears them (docs/faults.md)."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_digits_config
from kdlab.cli import main
from kdlab.paths import cache_dir
from kdlab.tracking import TrackingError
from kdlab_test_helpers import load_config


def untracked(**extra):
    return tiny_digits_config(**{"tracking.enabled": False, **extra})


def test_code_digest_follows_the_source(tmp_path, monkeypatch):
    import importlib
    import sys

    from kdlab import files

    module = tmp_path / "kdlab_fz_teacher.py"
    module.write_text("def factory(params):\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("kdlab_fz_teacher")
    first = files.code_digest(mod.factory)
    assert first == files.code_digest(mod.factory) and first != "unknown"
    module.write_text("def factory(params):\n    return 0  # outputs zeros now\n")
    files._TREE_DIGESTS.clear()  # a new process reads the code again
    assert files.code_digest(mod.factory) != first
    sys.modules.pop("kdlab_fz_teacher", None)


def test_the_teacher_fingerprint_changes_with_the_plugins_code(write_config, monkeypatch):
    import kdlab.teachers.fingerprint as fingerprint
    from kdlab.teachers import teacher_fingerprint

    loaded = load_config(write_config(untracked()))
    before = teacher_fingerprint(loaded)
    monkeypatch.setattr(fingerprint, "code_digest", lambda obj: "changed-code")
    assert teacher_fingerprint(loaded) != before


def _teacher_entry():
    (entry,) = list(cache_dir("teachers").iterdir())
    return entry


def _outputs_file():
    (path,) = list(cache_dir("outputs").glob("*.pt"))
    return path


def _flip_middle(path):
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated weights": lambda: _teacher_entry().joinpath("state_dict.pt").write_bytes(
        _teacher_entry().joinpath("state_dict.pt").read_bytes()[:100]),
    "empty weights": lambda: _teacher_entry().joinpath("state_dict.pt").write_bytes(b""),
    "flipped bytes in the weights": lambda: _flip_middle(_teacher_entry() / "state_dict.pt"),
    "damaged meta.json": lambda: _teacher_entry().joinpath("meta.json").write_text("{not json"),
    "missing meta.json": lambda: _teacher_entry().joinpath("meta.json").unlink(),
    "truncated outputs": lambda: _outputs_file().write_bytes(_outputs_file().read_bytes()[:50]),
    "flipped bytes in the outputs": lambda: _flip_middle(_outputs_file()),
    "damaged outputs json": lambda: _outputs_file().with_suffix(".json").write_text("[]"),
}


def accuracies(out: str) -> list[str]:
    return [w for w in out.split() if "accuracy" in w]


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_cache_entry_is_removed_and_rebuilt_with_a_warning(damage, write_config, capsys):
    path = str(write_config(untracked()))
    assert main(["run", path, "-q"]) == 0
    first = capsys.readouterr().out
    DAMAGE[damage]()
    assert main(["run", path, "-q"]) == 0
    captured = capsys.readouterr()
    assert "kdlab: warning: the cached" in captured.err and "was damaged" in captured.err
    assert "Traceback" not in captured.err
    assert accuracies(captured.out) == accuracies(first)  # rebuilt: the same teacher, the same student
    assert main(["run", path, "-q"]) == 0  # and healthy again
    assert "damaged" not in capsys.readouterr().err


def test_a_teacher_is_cached_only_once_its_run_is_recorded(write_config, monkeypatch, capsys, kdlab_home):
    import mlflow

    from kdlab.tracking import TrackedRun

    def broken(self, model, folder):
        raise TrackingError("MLflow tracking store 'sqlite:///x': log_artifact failed: OSError: disk full")

    original = TrackedRun.log_state_dict
    monkeypatch.setattr(TrackedRun, "log_state_dict", broken)
    path = str(write_config(tiny_digits_config()))
    assert main(["run", path, "-q"]) == 1
    err = capsys.readouterr().err
    assert "disk full" in err and "its model, metrics and config were saved in" in err
    kept = next((kdlab_home / "unrecorded").iterdir())
    assert {p.name for p in kept.iterdir()} == {"state_dict.pt", "metrics.json", "config.yaml"}
    assert "teacher_val_accuracy" in json.loads((kept / "metrics.json").read_text())
    assert not any(cache_dir("teachers").iterdir())  # never reused
    monkeypatch.setattr(TrackedRun, "log_state_dict", original)
    assert main(["run", path, "-q"]) == 0
    client = mlflow.MlflowClient(f"sqlite:///{kdlab_home / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    teachers = {r.info.run_id: r.info.status for r in runs if r.data.tags.get("kdlab.role") == "teacher"}
    assert sorted(teachers.values()) == ["FAILED", "FINISHED"]
    student = next(r for r in runs if r.data.tags.get("kdlab.role") == "student" and r.info.status == "FINISHED")
    assert teachers[student.data.tags["kdlab.teacher_run_id"]] == "FINISHED"


def test_cache_list_and_clear(write_config, capsys):
    assert main(["run", str(write_config(untracked())), "-q"]) == 0
    capsys.readouterr()
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert "teachers     1 entry" in out and "outputs      1 entry" in out and "mlp  val_accuracy" in out
    assert main(["cache", "clear", "--outputs"]) == 0
    assert "outputs: 1 entry" in capsys.readouterr().out
    assert not list(cache_dir("outputs").iterdir()) and list(cache_dir("teachers").iterdir())
    assert main(["cache", "clear"]) == 0
    assert not list(cache_dir("teachers").iterdir())
