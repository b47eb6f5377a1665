"""A relocatable local MLflow store: a SQLite file with its artifacts in the folder ``artifacts/`` beside it, named in
the database by ``mlflow-artifacts:/`` URIs instead of absolute ``file:///...`` paths.

MLflow writes an absolute ``file:///`` artifact location into the database when an experiment is created (it even
turns a relative path into an absolute one), so a ``kdlab-runs/`` folder copied or shared elsewhere lists no
artifacts once the original is gone. ``mlflow-artifacts:/`` URIs name no place: an MLflow server resolves them
against its ``--artifacts-destination``, and a client that talks to the SQLite file directly resolves them with
:func:`artifact_repository` against the folder beside the file. kdlab registers that function for the
``mlflow-artifacts`` scheme through MLflow's ``mlflow.artifact_repository`` entry-point group, so any MLflow client
in an environment where kdlab is installed reads a moved store; with an HTTP tracking URI (a server) it defers to
MLflow's own repository, unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

#: the artifact location kdlab gives the experiments it creates in a SQLite store
LOCATION = "mlflow-artifacts:/"
#: the folder beside the SQLite file that holds its artifacts
FOLDER = "artifacts"


def sqlite_path(tracking_uri: str | None) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI, else ``None``."""
    if tracking_uri and tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///"))
    return None


def artifact_root(tracking_uri: str) -> Path | None:
    """Where the ``mlflow-artifacts:/`` artifacts of the SQLite store ``tracking_uri`` live, else ``None``."""
    db = sqlite_path(tracking_uri)
    return None if db is None else db.parent / FOLDER


def artifact_repository(artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None) -> Any:
    """MLflow's artifact repository for a ``mlflow-artifacts:`` URI: the folder beside the SQLite file when the
    tracking URI is a SQLite store (MLflow itself would refuse) and the URI names no server, MLflow's HTTP repository
    otherwise (an ``mlflow server --serve-artifacts`` proxies them)."""
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    if tracking_uri is None:
        from mlflow.tracking import get_tracking_uri

        tracking_uri = get_tracking_uri()
    # a URI that names its server (``mlflow-artifacts://host:port/...``) is that server's, whatever store this
    # process tracks to: it is proxied by that server, never a folder here
    root = None if urlparse(artifact_uri).netloc else artifact_root(tracking_uri)
    if root is None:
        return MlflowArtifactsRepository(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    path = urlparse(artifact_uri).path.lstrip("/")
    local = (root / path) if path else root
    return LocalArtifactRepository(local.resolve().as_uri(), tracking_uri=tracking_uri, registry_uri=registry_uri)


def relocatable(tracking_uri: str) -> bool:
    """Whether this process resolves ``mlflow-artifacts:/`` in the SQLite store ``tracking_uri`` to the folder
    beside it (kdlab's entry point is registered: true wherever kdlab is installed)."""
    if sqlite_path(tracking_uri) is None:
        return False
    try:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
        from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

        return isinstance(get_artifact_repository(LOCATION, tracking_uri=tracking_uri), LocalArtifactRepository)
    except Exception:  # noqa: BLE001 - MLflow refuses the scheme without the entry point
        return False
