"""MLflow tracking through the client API (no thread-local active run), with per-epoch metrics sent in batches.

MLflow is imported only when a tracked run starts, so commands that do not track never pay for it. A store is
checked and opened when its :class:`Tracker` is made (:mod:`kdlab.store_checks`: seconds, one clear error); later calls
retry transient errors (a locked SQLite file, a dropped database connection) a bounded number of times, and HTTP
stores use MLflow's own retries, bounded by kdlab's defaults of ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (3),
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` (1) and ``MLFLOW_HTTP_REQUEST_TIMEOUT`` (30 s) where the environment sets
none. A call that still fails raises :class:`TrackingError`.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from kdlab import paths, store
from kdlab import store_checks as stores
from kdlab.errors import shorten
from kdlab.signals import deferred

#: MLflow run statuses used by kdlab
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"
#: tags of every run kdlab starts: the process that writes it (a run left RUNNING by a dead process is ended KILLED
#: by the next command on the same host)
TAG_HOST, TAG_PID = "kdlab.host", "kdlab.pid"
#: the tag MLflow shows as the description of a run, an experiment or a logged model
NOTE = "mlflow.note.content"
#: tags of the experiments kdlab creates: the UI opens them as model training (runs, charts), not as GenAI (traces)
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}

#: at most this many tries of one call, and this many seconds of waiting between them in all
RETRY_ATTEMPTS, RETRY_BUDGET_S = 8, 30.0
_TRANSIENT = ("database is locked", "locked", "busy", "server closed the connection", "connection reset",
              "could not connect", "temporarily unavailable", "too many connections", "deadlock")
#: MLflow's HTTP retries, where the environment says nothing (MLflow's own default retries for about 4 minutes)
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


class TrackingError(stores.StoreError):
    """A call to the tracking store failed for good (after bounded retries)."""


#: MLflow's answers to a request that a caller handles (no such run, a name taken, a param logged twice)
_ANSWERS = ("RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "INVALID_PARAMETER_VALUE", "BAD_REQUEST",
            "INVALID_STATE", "PERMISSION_DENIED", "NOT_FOUND", "ENDPOINT_NOT_FOUND")


def _retry(fn, *args, attempts: int = RETRY_ATTEMPTS, **kwargs):
    """Call ``fn``; transient store errors are retried with backoff (``attempts`` tries, at most
    :data:`RETRY_BUDGET_S` seconds of waiting). A failure that persists is a :class:`TrackingError` naming the
    store and the call."""
    delay, waited = 0.05, 0.0
    for i in range(attempts):
        try:
            with deferred():  # a signal waits for the call to end: no transaction is cut in half
                return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            transient = any(s in str(exc).lower() for s in _TRANSIENT)
            if transient and i < attempts - 1 and waited < RETRY_BUDGET_S:
                time.sleep(delay)
                waited += delay
                delay = min(delay * 2, 5.0)
                continue
            if getattr(exc, "error_code", None) in _ANSWERS:
                raise
            name = getattr(fn, "__name__", "call")
            tries = f" after {i + 1} tries" if i else ""
            raise TrackingError(f"MLflow tracking store {stores.mask(_uri_of(fn))!r}: {name} failed{tries}: "
                                f"{type(exc).__name__}: {shorten(str(exc), 500)}") from exc


def _dataset_taken(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) is MLflow inserting a dataset that another run inserted a moment before: the
    key of its ``datasets`` table (SQLite's and PostgreSQL's wording; MySQL names the key too)."""
    text = f"{exc} {exc.__cause__ or ''}".lower()
    return ("unique constraint failed: datasets." in text or "dataset_pk" in text
            or ("duplicate" in text and "datasets" in text))


def _uri_of(fn) -> str:
    client = getattr(fn, "__self__", None)
    uri = getattr(client, "_tracking_uri", None) or getattr(client, "tracking_uri", None)
    if uri is None:
        import mlflow

        uri = mlflow.get_tracking_uri()
    return str(uri)


def host_id() -> str:
    """This machine (and PID namespace: containers on one host do not see each other's processes), as tagged on
    runs: a run's process can be checked for life only from the same host id."""
    try:
        ns = os.readlink("/proc/self/ns/pid").split("[", 1)[1].rstrip("]")
    except (OSError, IndexError):
        ns = ""
    return f"{socket.gethostname()}{'/' + ns if ns else ''}"


def _quiet_mlflow() -> None:
    import logging

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "View run at ..." from a server store
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
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
        stores.check_tracking_uri(self.uri)
        with stores.opening(self.uri):
            self.client = MlflowClient(self.uri)
            self.experiment_name = experiment
            self.experiment_id = self._experiment(experiment)
            end_orphaned_runs(self)
        mlflow.set_tracking_uri(self.uri)

    def _experiment(self, name: str) -> str:
        exp = _retry(self.client.get_experiment_by_name, name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:") and not os.environ.get("MLFLOW_ARTIFACT_ROOT"):
            # mlflow-artifacts:/ names no place: the artifacts stay with the SQLite file when the store is copied
            # (kdlab/store.py); without kdlab's resolver, the absolute folder as before
            location = store.LOCATION if store.relocatable(self.uri) else paths.default_artifact_root().as_uri()
        try:
            return _retry(self.client.create_experiment, name, artifact_location=location, tags=EXPERIMENT_TAGS)
        except Exception:  # noqa: BLE001 - another worker created it first
            exp = _retry(self.client.get_experiment_by_name, name)
            if exp is None:
                raise
            return exp.experiment_id

    def start(self, name: str, *, tags: dict[str, str] | None = None, parent_run_id: str | None = None,
              flush_every_s: float = 15.0) -> TrackedRun:
        tags = {TAG_HOST: host_id(), TAG_PID: str(os.getpid()), **(tags or {})}
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

    def find_runs(self, tags: dict[str, str], name: str | None = None) -> list[str]:
        """Ids of this experiment's runs with all of ``tags`` (and run name ``name``), newest first."""
        flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        if name is not None:
            flt = f"{flt} and attributes.run_name = '{name}'" if flt else f"attributes.run_name = '{name}'"
        runs = _retry(self.client.search_runs, [self.experiment_id], filter_string=flt,
                      order_by=["attributes.start_time DESC"])
        return [r.info.run_id for r in runs]

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[Any]:
        return _retry(self.client.list_artifacts, run_id, path)

    def download(self, run_id: str, path: str) -> Path:
        """A run's artifact, downloaded to a local temporary folder."""
        import mlflow

        return Path(_retry(mlflow.artifacts.download_artifacts, f"runs:/{run_id}/{path}", tracking_uri=self.uri))

    def run_url(self, run_id: str, experiment_id: str | None = None) -> str:
        return f"#/experiments/{experiment_id or self.experiment_id}/runs/{run_id}"

    def describe_experiment(self, text: str, *, replace: bool = False) -> None:
        """Set the experiment's description (the UI's ``mlflow.note.content``), unless it has one and not
        ``replace``."""
        exp = _retry(self.client.get_experiment, self.experiment_id)
        for key, value in EXPERIMENT_TAGS.items():
            if key not in exp.tags:  # an experiment made before kdlab set it
                _retry(self.client.set_experiment_tag, self.experiment_id, key, value)
        if replace or not exp.tags.get(NOTE):
            _retry(self.client.set_experiment_tag, self.experiment_id, NOTE, text)

    def register_model(self, name: str, model_id: str, *, alias: str | None, run_id: str | None,
                       tags: dict[str, Any] | None = None, description: str | None = None) -> str:
        """Register the logged model ``model_id`` as a new version of the registered model ``name`` (created if
        missing; a version of the same model is reused), with ``tags``, ``description`` and ``alias`` pointing at
        it. Returns the version."""
        import mlflow
        from mlflow.exceptions import MlflowException

        mlflow.set_tracking_uri(self.uri)  # the SQL registry reads the logged model through the fluent URI
        try:
            _retry(self.client.create_registered_model, name)
        except MlflowException as exc:
            if "already exists" not in str(exc).lower():
                raise
        source = f"models:/{model_id}"
        same = [v for v in _retry(self.client.search_model_versions, f"name='{name}'") if v.source == source]
        version = same[0] if same else _retry(
            self.client.create_model_version, name, source=source, run_id=run_id,
            tags={k: str(v) for k, v in (tags or {}).items()}, description=description, model_id=model_id)
        if not same:  # the logged model's page lists its versions (as mlflow.register_model records them)
            import json

            key = "mlflow.modelVersions"
            linked = json.loads(_retry(self.client.get_logged_model, model_id).tags.get(key) or "[]")
            linked.append({"name": name, "version": version.version})
            _retry(self.client.set_logged_model_tags, model_id, {key: json.dumps(linked)})
        if alias:
            _retry(self.client.set_registered_model_alias, name, alias, version.version)
        if description:
            _retry(self.client.update_registered_model, name, description=description)
        return str(version.version)


def end_orphaned_runs(tracker: Tracker) -> list[str]:
    """End ``KILLED`` the runs of this store left ``RUNNING`` by a process of this host that is gone (killed with
    SIGKILL, out of memory, a power cut), with the reason in ``kdlab.status_reason``; a study trial's run also gets
    ``kdlab.trial_state=FAIL`` and ``kdlab.fail_reason=interrupted``. Returns their ids."""
    from mlflow.entities import RunTag, ViewType

    host = host_id()
    client = tracker.client
    ids = [e.experiment_id for e in _retry(client.search_experiments, view_type=ViewType.ACTIVE_ONLY,
                                               max_results=1000)]
    ended: list[str] = []
    for i in range(0, len(ids), 100):
        runs = _retry(client.search_runs, ids[i: i + 100], max_results=1000,
                      filter_string=f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{host}'")
        for run in runs:
            pid = run.data.tags.get(TAG_PID, "")
            if not pid.isdigit() or _alive(int(pid)):
                continue
            tags = [RunTag("kdlab.status_reason", f"interrupted: its process {pid} on {host} was gone when the "
                                                  "next kdlab command started")]
            if run.data.tags.get("kdlab.trial_state") == "RUNNING":
                tags += [RunTag("kdlab.trial_state", "FAIL"), RunTag("kdlab.fail_reason", "interrupted")]
            _retry(client.log_batch, run.info.run_id, tags=tags)
            _retry(client.set_terminated, run.info.run_id, KILLED)
            ended.append(run.info.run_id)
    return ended


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is gone too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


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

    def log_epoch(self, step: int, metrics: dict[str, float], timestamp_ms: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = timestamp_ms or int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), ts, step) for k, v in metrics.items())
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def log_metrics(self, metrics: dict[str, float], step: int = 0, *, model_id: str | None = None,
                    dataset: tuple[str, str] | None = None, timestamp_ms: int | None = None) -> None:
        """Log ``metrics`` at ``step`` now (with anything buffered); with ``model_id`` they are also the logged
        model's metrics (its page in the UI), evaluated on ``dataset`` (``(name, digest)`` of a logged input)."""
        from mlflow.entities import Metric

        ts = timestamp_ms or int(time.time() * 1000)
        name, digest = dataset or (None, None)
        self._buffer.extend(Metric(k, float(v), ts, step, model_id=model_id, dataset_name=name, dataset_digest=digest)
                            for k, v in metrics.items())
        self.flush()

    def link_metrics(self, model_id: str, keys: list[str], dataset: tuple[str, str] | None = None) -> None:
        """Make the latest values of the run's metrics ``keys`` the logged model ``model_id``'s too: each is
        logged again with its own step and timestamp, which MLflow keeps once in the run's history (for a model
        logged after its run's metrics, e.g. a study's best student)."""
        from mlflow.entities import Metric

        name, digest = dataset or (None, None)
        latest = []
        for key in keys:
            history = _retry(self.client.get_metric_history, self.run_id, key)
            if history:
                m = max(history, key=lambda m: (m.step, m.timestamp))
                latest.append(Metric(key, m.value, m.timestamp, m.step, model_id=model_id, dataset_name=name,
                                     dataset_digest=digest))
        for i in range(0, len(latest), 1000):
            _retry(self.client.log_batch, self.run_id, metrics=latest[i : i + 1000])

    def log_dataset(self, name: str, digest: str, source: str, *, schema: dict[str, Any] | None = None,
                    profile: dict[str, Any] | None = None, context: str = "training",
                    source_type: str = "kdlab") -> None:
        """Record the run's data as an MLflow dataset input (the UI's Dataset column): ``name`` and ``digest``
        identify it, ``source`` says where it comes from, ``profile`` holds e.g. the split sizes."""
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        ds = Dataset(name=name, digest=digest, source_type=source_type, source=source,
                     schema=json.dumps(schema) if schema is not None else None,
                     profile=json.dumps(profile) if profile is not None else None)
        inputs = [DatasetInput(ds, [InputTag("mlflow.data.context", context)])]
        try:
            _retry(self.client.log_inputs, self.run_id, inputs)
        except Exception as exc:  # noqa: BLE001 - only the race below is answered; the rest is raised
            if not _dataset_taken(exc):
                raise
            # MLflow looks the dataset up, then inserts it: the first runs of a study's workers, starting together,
            # all miss it and all insert it, and all but one fail on the dataset's key (experiment, name, digest).
            # It exists now: logging again links it to this run.
            _retry(self.client.log_inputs, self.run_id, inputs)

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

    def log_model(self, model: Any, name: str, example: Any, *, export_problem: str | None = None,
                  tags: dict[str, Any] | None = None) -> str:
        """Log ``model`` as an MLflow LoggedModel of this run named ``name``, with a signature and input example
        from ``example`` (see :func:`kdlab.exporting.model_inputs`); returns its ``model_id``, so that the run's
        final metrics can be linked to it.

        Format: ``pt2`` (``torch.export``, loadable without the model's classes); ``pickle`` when
        ``export_problem`` says the model cannot be exported or the export fails here (the reason is the logged
        model's tag ``kdlab.pt2_skipped``). A model that cannot be logged at all is marked FAILED and the error
        raised; the caller decides whether that costs anything (kdlab's runs only warn)."""
        import mlflow
        import mlflow.pytorch
        import torch
        from mlflow.entities import LoggedModelStatus
        from mlflow.models import infer_signature

        from kdlab.exporting import model_inputs

        model = model.eval().cpu()
        args, kwargs, np_example = model_inputs(example)
        with torch.inference_mode():
            out = model(*args, **kwargs)
        signature = infer_signature(np_example, out.float().numpy())
        # MLflow 3 files a new logged model under the process's *active* experiment (the Default one, with its
        # artifacts in the working directory's ./mlruns, unless set), not under its source run's experiment.
        # Create it in the run's experiment ourselves (as log_model would, with the run's params) and hand it over,
        # instead of setting global fluent state.
        mlflow.set_tracking_uri(self.tracker.uri)  # log_model writes through the fluent tracking URI
        run_params = _retry(self.client.get_run, self.run_id).data.params
        tags = {k: str(v) for k, v in (tags or {}).items()}
        if export_problem:
            tags["kdlab.pt2_skipped"] = export_problem[:5000]
        logged = _retry(self.client.create_logged_model, self.tracker.experiment_id, name=name,
                        source_run_id=self.run_id, params=dict(run_params), tags=tags or None)

        def log(fmt: str) -> None:
            _retry(
                mlflow.pytorch.log_model, model, name=name, signature=signature, run_id=self.run_id,
                # MLflow's PyTorch flavour takes no dict input example (named inputs): their signature describes them
                input_example=None if isinstance(np_example, dict) else np_example, serialization_format=fmt,
                model_id=logged.model_id,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )

        try:
            if export_problem:
                log("pickle")
            else:
                try:
                    log("pt2")
                except Exception as exc:  # noqa: BLE001 - exported but not saved as pt2: fall back to pickle
                    _retry(self.client.set_logged_model_tags, logged.model_id,
                           {"kdlab.pt2_skipped": f"{type(exc).__name__}: {exc}"[:5000]})
                    log("pickle")
        except BaseException:
            _retry(self.client.finalize_logged_model, logged.model_id, LoggedModelStatus.FAILED)
            raise
        return logged.model_id

    def log_model_or_warn(self, model: Any, name: str, example: Any, *, export_problem: str | None = None,
                          tags: dict[str, Any] | None = None) -> str | None:
        """:meth:`log_model`, never raising: a model that cannot be logged costs its run nothing but a warning and
        the run's tag ``kdlab.model_error``. ``model`` keeps its device and mode. Returns the model id or ``None``."""
        import logging

        device = next((p.device for p in model.parameters()), None)
        was_training = model.training
        try:
            return self.log_model(model, name, example, export_problem=export_problem, tags=tags)
        except Exception as exc:  # noqa: BLE001 - the run's results stand without the model copy
            reason = f"{type(exc).__name__}: {exc}"
            logging.getLogger("kdlab").warning("%s model of run %s not logged: %s", name, self.run_id, reason[:500])
            try:
                self.set_tags({"kdlab.model_error": reason[:5000]})
            except Exception:  # noqa: BLE001
                pass
            return None
        finally:
            if device is not None:
                model.to(device)
            model.train(was_training)

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
