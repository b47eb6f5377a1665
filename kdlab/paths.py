"""Where kdlab keeps its local state. ``KDLAB_HOME`` (default ``./kdlab-runs``) holds the MLflow SQLite store and
artifacts, the Optuna storage and the caches (teachers, teacher outputs, generated data)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "KDLAB_HOME"
ENV_CACHE = "KDLAB_CACHE_DIR"


def home() -> Path:
    return Path(os.environ.get(ENV_HOME, "kdlab-runs")).resolve()


def cache_base() -> Path:
    """The kdlab cache: ``KDLAB_CACHE_DIR``, default ``$KDLAB_HOME/cache``."""
    return Path(os.environ[ENV_CACHE]).resolve() if os.environ.get(ENV_CACHE) else home() / "cache"


def cache_dir(*parts: str) -> Path:
    """A folder under the kdlab cache (:func:`cache_base`), created if missing."""
    path = cache_base().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"


def default_artifact_root() -> Path:
    return home() / "artifacts"
