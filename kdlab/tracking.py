"""MLflow tracking through the client API (no thread-local active run), with per-epoch metrics sent in batches.

MLflow is imported only when a tracked run starts, so commands that do not track never pay for it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from kdlab import paths

#: MLflow run statuses used by kdlab
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"


def _retry(fn, *args, attempts: int = 8, **kwargs):
    """SQLite stores shared by worker processes can be briefly locked; retry with backoff."""
    delay = 0.05
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            if i == attempts - 1 or "locked" not in str(exc).lower():
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _quiet_mlflow() -> None:
    import logging

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "View run at ..." from a server store
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _store_engine(tracker: Tracker) -> tuple[bool, Any]:
    """(whether the store's connections are known, the SQLAlchemy engine holding them or None)."""
    try:
        store = tracker.client._tracking_client.store
    except AttributeError:
        return False, None
    engine = getattr(store, "engine", None)
    if engine is None:
        # a file store holds no connection; an HTTP store's sessions are cached per process id by MLflow
        return not type(store).__name__.lower().startswith("sqlalchemy"), None
    return True, engine


def can_release_connections(tracker: Tracker) -> bool:
    """Whether :func:`release_connections` can close every database connection of ``tracker``'s store."""
    return _store_engine(tracker)[0]


def release_connections(tracker: Tracker) -> None:
    """Close the pooled database connections of ``tracker``'s store, so that a process forked next opens its own
    (SQLAlchemy's rule for ``fork``: no connection may cross into the child). This process reconnects on its next
    call."""
    engine = _store_engine(tracker)[1]
    if engine is not None:
        engine.dispose()


class Tracker:
    """One MLflow experiment on one tracking URI."""

    def __init__(self, uri: str | None, experiment: str):
        _quiet_mlflow()
        import mlflow

        _quiet_mlflow()  # mlflow configures its loggers on import
        from mlflow import MlflowClient

        self.uri = uri or paths.default_tracking_uri()
        if self.uri.startswith("sqlite:///"):
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(self.uri)
        self.experiment_name = experiment
        self.experiment_id = self._experiment(experiment)
        mlflow.set_tracking_uri(self.uri)

    def _experiment(self, name: str) -> str:
        exp = _retry(self.client.get_experiment_by_name, name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:") and not os.environ.get("MLFLOW_ARTIFACT_ROOT"):
            location = paths.default_artifact_root().as_uri()
        try:
            return _retry(self.client.create_experiment, name, artifact_location=location)
        except Exception:  # noqa: BLE001 - another worker created it first
            exp = _retry(self.client.get_experiment_by_name, name)
            if exp is None:
                raise
            return exp.experiment_id

    def start(self, name: str, *, tags: dict[str, str] | None = None, parent_run_id: str | None = None,
              flush_every_s: float = 15.0) -> TrackedRun:
        tags = dict(tags or {})
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = _retry(self.client.create_run, self.experiment_id, run_name=name, tags=tags)
        return TrackedRun(self, run.info.run_id, flush_every_s)

    def run(self, run_id: str, flush_every_s: float = 15.0) -> TrackedRun:
        """A handle to an existing run of this store (to add tags, metrics, artifacts, or end it)."""
        return TrackedRun(self, run_id, flush_every_s)

    def run_info(self, run_id: str) -> Any | None:
        """The MLflow ``Run`` with id ``run_id`` (its ``info`` and ``data``), or ``None`` when this store has no
        such run (deleted, or from another store)."""
        try:
            return _retry(self.client.get_run, run_id)
        except Exception:  # noqa: BLE001 - MLflow raises its own error type for a missing run
            return None

    def child_runs(self, parent_run_id: str, status: str | None = None) -> list[str]:
        """Ids of the runs nested under ``parent_run_id`` in this experiment (with MLflow ``status``, if given)."""
        flt = f"tags.mlflow.parentRunId = '{parent_run_id}'"
        if status:
            flt += f" and attributes.status = '{status}'"
        return [r.info.run_id for r in _retry(self.client.search_runs, [self.experiment_id], filter_string=flt)]

    def search_runs(self, filter_string: str, order_by: list[str] | None = None, max_results: int = 100) -> list[Any]:
        """Runs of this experiment matching an MLflow filter (``tags.kdlab.role = 'teacher'``), as MLflow ``Run``s."""
        return _retry(self.client.search_runs, [self.experiment_id], filter_string=filter_string,
                      order_by=order_by, max_results=max_results)

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[Any]:
        return _retry(self.client.list_artifacts, run_id, path)

    def download(self, run_id: str, path: str) -> Path:
        """A run's artifact, downloaded to a local temporary folder."""
        import mlflow

        return Path(_retry(mlflow.artifacts.download_artifacts, f"runs:/{run_id}/{path}", tracking_uri=self.uri))

    def run_url(self, run_id: str) -> str:
        return f"#/experiments/{self.experiment_id}/runs/{run_id}"


class TrackedRun:
    """An MLflow run being written. Params and per-epoch metrics are buffered and sent together with ``log_batch``
    (every ``flush_every_s`` seconds and when the run ends): each SQLite transaction costs milliseconds, which a short
    study trial would otherwise spend on tracking (benchmarks/README.md)."""

    def __init__(self, tracker: Tracker, run_id: str, flush_every_s: float = 15.0):
        self.tracker = tracker
        self.client = tracker.client
        self.run_id = run_id
        self.flush_every_s = flush_every_s
        self._buffer: list[Any] = []
        self._params: list[Any] = []
        self._last_flush = time.monotonic()
        self.ended = False

    def log_params(self, params: dict[str, Any], *, defer: bool = False) -> None:
        """Log params now, or with ``defer`` at the next flush (in at most ``flush_every_s`` seconds, or when the run
        ends): one transaction fewer for a run that is sure to call :meth:`end`."""
        from mlflow.entities import Param

        self._params.extend(Param(k, _param_str(v)) for k, v in params.items())
        if not defer:
            self.flush(metrics=False)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        if items:
            _retry(self.client.log_batch, self.run_id, tags=items)

    def log_epoch(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), ts, step) for k, v in metrics.items())
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """Log ``metrics`` at ``step`` now (with anything buffered)."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), ts, step) for k, v in metrics.items())
        self.flush()

    def flush(self, metrics: bool = True) -> None:
        """Send the buffered params (and, unless ``metrics`` is false, metrics) in as few ``log_batch`` calls as
        MLflow's limits allow (100 params, 1000 entries per call)."""
        params, self._params = self._params, []
        values: list[Any] = []
        if metrics:
            values, self._buffer = self._buffer, []
            self._last_flush = time.monotonic()
        while params or values:
            p, params = params[:100], params[100:]
            m, values = values[: 1000 - len(p)], values[1000 - len(p) :]
            _retry(self.client.log_batch, self.run_id, metrics=m, params=p)

    def log_text(self, text: str, artifact_file: str) -> None:
        _retry(self.client.log_text, self.run_id, text, artifact_file)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        _retry(self.client.log_artifact, self.run_id, str(local_path), artifact_path)

    def log_state_dict(self, model: Any, folder: str) -> None:
        """The model's weights as ``<folder>/state_dict.pt`` (cheap; loadable with ``weights_only``, e.g. as a
        later teacher)."""
        import tempfile

        import torch

        from kdlab.weights import state_dict_cpu

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "state_dict.pt"
            torch.save(state_dict_cpu(model), path)
            self.log_artifact(path, folder)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        _retry(self.client.log_figure, self.run_id, figure, artifact_file)

    def log_model(self, model: Any, name: str, example_x: Any) -> None:
        """``mlflow.pytorch.log_model`` with a signature inferred from numpy example inputs and outputs."""
        import mlflow
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        model = model.eval().cpu()
        example = example_x.detach().cpu()
        with torch.inference_mode():
            out = model(example)
        signature = infer_signature(example.numpy(), out.float().numpy())
        # MLflow 3 files a new logged model under the process's *active* experiment (the Default one, with its
        # artifacts in the working directory's ./mlruns, unless set), not under its source run's experiment.
        # Create it in the run's experiment ourselves (as log_model would, with the run's params) and hand it over,
        # instead of setting global fluent state.
        mlflow.set_tracking_uri(self.tracker.uri)  # log_model writes through the fluent tracking URI
        run_params = _retry(self.client.get_run, self.run_id).data.params
        logged = _retry(self.client.create_logged_model, self.tracker.experiment_id, name=name,
                        source_run_id=self.run_id, params=dict(run_params))
        # pt2 (torch.export) is MLflow 3's default format: a traced graph, loadable without our classes
        _retry(
            mlflow.pytorch.log_model, model, name=name, signature=signature, run_id=self.run_id,
            input_example=example.numpy(), serialization_format="pt2", model_id=logged.model_id,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )

    def end(self, status: str = FINISHED) -> None:
        if self.ended:
            return
        self.flush()
        _retry(self.client.set_terminated, self.run_id, status)
        self.ended = True

    def reopen(self) -> None:
        """Mark an ended run ``RUNNING`` again (a resumed study's parent run)."""
        _retry(self.client.update_run, self.run_id, status="RUNNING")
        self.ended = False


def _param_str(v: Any) -> str:
    if isinstance(v, str):
        s = v
    elif v is None:
        s = "null"
    else:
        s = str(v).replace("'", '"') if isinstance(v, (list, dict)) else str(v)
    return s[:6000]
