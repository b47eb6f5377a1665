"""Shared fixtures. Every test gets its own KDLAB_HOME (MLflow store, Optuna storage, caches) in a temp folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

# real PostgreSQL and MLflow servers for the tests of studies on many machines (started on first use)
from servers import mlflow_server, postgres_server, postgres_url  # noqa: F401

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Tiny models train fastest single-threaded; two OpenMP threads on a busy 2-core machine are ~10-100x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("MLFLOW_TRACKING_URI", None)
#: Tests load kdlab's own plugins by name, never whatever else happens to be installed; a test that needs another
#: plugin registers it itself (the `kdlab_plugins` fixture of kdlab.testing unregisters it afterwards).
FIRST_PARTY = "kdlab-data,kdlab-models,kdlab-losses,kdlab-vision,kdlab-text"
os.environ["KDLAB_PLUGINS"] = FIRST_PARTY
os.environ.pop("KDLAB_DISABLE_PLUGINS", None)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def kdlab_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "kdlab-home"
    monkeypatch.setenv("KDLAB_HOME", str(home))
    monkeypatch.delenv("KDLAB_CACHE_DIR", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


@pytest.fixture
def shared_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data cache shared by the tests of one worker (generated MNIST-1D is slow to make)."""
    path = tmp_path_factory.getbasetemp() / "shared-cache"
    monkeypatch.setenv("KDLAB_CACHE_DIR", str(path))
    return path


@pytest.fixture
def plugins(kdlab_plugins):
    """The process's plugin manager (kdlab.testing's ``kdlab_plugins`` fixture): plugins a test registers are
    unregistered afterwards."""
    return kdlab_plugins


@pytest.fixture
def all_installed_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """For tests of plugin discovery itself: kdlab loads every installed plugin (the test's own included), as it
    does outside the tests; subprocesses started by the test inherit this."""
    monkeypatch.delenv("KDLAB_PLUGINS", raising=False)


def load_config(source, overrides=None):
    """A run config validated against the loaded plugins' registry (as the command line does)."""
    from kdlab.config import load_config as load
    from kdlab.plugins import get_registry

    return load(source, registry=get_registry(), overrides=overrides)


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a dict (or YAML text) as a config file and return its path."""

    def write(data: dict | str, name: str = "run.yaml") -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return path

    return write


def tiny_digits_config(**overrides) -> dict:
    """A digits run that takes a second or two: small teacher, few epochs."""
    cfg = {
        "data": {"name": "digits", "params": {"test_size": 360, "val_size": 180}},
        "teacher": {"name": "mlp", "params": {"hidden": [64]},
                    "training": {"epochs": 3, "batch_size": 64, "optimizer": {"lr": 0.01}}},
        "student": {"name": "mlp", "params": {"hidden": [16]}},
        "loss": {"name": "kd", "params": {"temperature": 4.0, "alpha": 0.9}},
        "optimizer": {"name": "adam", "lr": 0.01},
        "training": {"epochs": 3, "batch_size": 128, "seed": 0, "device": "cpu"},
        "tracking": {"experiment": "test", "log_model": False},
    }
    return set_dotted(cfg, overrides)


def set_dotted(cfg: dict, overrides: dict) -> dict:
    """``cfg`` with each dotted key of ``overrides`` (``training.epochs``) set, parents created as needed."""
    for key, value in overrides.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


sys.modules.setdefault("kdlab_test_helpers", sys.modules[__name__])
