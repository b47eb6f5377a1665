"""Building model components (teachers, students) for the data at hand, and starting one from a source model's
weights (``teacher.init`` / ``student.init``: transfer learning, frozen modules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from kdlab.capture import find_module
from kdlab.config import InitConfig
from kdlab.errors import KdlabError, PluginError
from kdlab.paths import default_tracking_uri
from kdlab.registry import Component, Registry
from kdlab.tracking import _quiet_mlflow
from kdlab.types import Data
from kdlab.weights import existing_file, load_state_dict_file, load_weights


def build_model(comp: Component, params: Any, data: Data) -> nn.Module:
    """The architecture ``comp`` with ``params`` for ``data``'s input shape, number of classes and metadata (each
    given to the factory only when it takes that keyword)."""
    model = comp.build(params, input_shape=data.input_shape, num_classes=data.num_classes, metadata=data.metadata)
    if not isinstance(model, nn.Module):
        raise PluginError(f"{comp.kind} {comp.name!r} from {comp.origin} returned {type(model).__name__}, "
                          "expected a torch.nn.Module")
    return model


def model_builder(registry: Registry, data: Data,
                  device: torch.device) -> Callable[[str, str, dict[str, Any]], nn.Module]:
    """The ``build_model(kind, name, params)`` callback of :class:`kdlab.LossSetup` (online peers)."""

    def build(kind: str, name: str, params: dict[str, Any]) -> nn.Module:
        comp = registry.get(kind, name)
        return build_model(comp, comp.validate_params(params), data).to(device)

    return build


def load_from_mlflow(uri: str, model: nn.Module | None, key: str, tracking_uri: str | None = None) -> nn.Module:
    """``model`` with the weights at ``uri`` (see :func:`mlflow_weights`), or, when ``model`` is ``None`` (its
    architecture cannot be built) and ``uri`` is an exported program, the program as a module."""
    weights = mlflow_weights(uri, key, tracking_uri)
    if isinstance(weights, nn.Module):
        if model is None:
            return weights
        weights = weights.state_dict()
    if model is None:
        raise KdlabError(f"{key} = {uri!r}: a state_dict needs the architecture (name and params)")
    load_weights(model, weights, key=key, value=uri)
    return model


def mlflow_weights(uri: str, key: str, tracking_uri: str | None = None) -> dict[str, torch.Tensor] | nn.Module:
    """Weights from MLflow, never by unpickling: a ``.pt``/``.pth`` state_dict artifact, the ``state_dict.pt``
    logged beside a kdlab-made model (both loaded with ``weights_only``), or a model logged as an exported program
    (``serialization_format='pt2'``), which MLflow checks holds no pickle before loading it. A model that offers
    only a pickle is refused, naming what to log instead. ``runs:/`` URIs resolve in ``tracking_uri`` (default:
    :func:`kdlab.paths.default_tracking_uri`), whether or not the run is tracked."""
    _quiet_mlflow()
    import mlflow

    tracking_uri = tracking_uri or default_tracking_uri()

    def download(path: str) -> Path:
        return Path(mlflow.artifacts.download_artifacts(path, tracking_uri=tracking_uri))

    try:
        if uri.endswith((".pt", ".pth")):
            return load_state_dict_file(download(uri), key)
        try:  # a kdlab-made model carries its weights as state_dict.pt beside it
            local = download(uri.rstrip("/") + "/state_dict.pt")
        except Exception:  # noqa: BLE001 - not a kdlab-made model: look at what MLflow logged
            local = None
        if local is not None:
            return load_state_dict_file(local, key)
        return _exported_program(download(uri), uri, key)
    except KdlabError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever MLflow raised, the user's URI is the culprit
        raise KdlabError(f"{key} = {uri!r}: could not load from MLflow "
                         f"({type(exc).__name__}: {str(exc)[:300]})") from None


_PICKLE_REFUSED = ("this MLflow model is stored as a Python pickle (serialization_format='pickle'), which kdlab "
                   "never loads: unpickling runs whatever code the file names. Log it as an exported program "
                   "(mlflow.pytorch.log_model(model, name=..., serialization_format='pt2', input_example=...), "
                   "MLflow 3's default), or log its weights (torch.save(model.state_dict(), 'state_dict.pt'), then "
                   "mlflow.log_artifact('state_dict.pt', NAME)) and point at runs:/RUN_ID/NAME/state_dict.pt")


def _exported_program(folder: Path, uri: str, key: str) -> nn.Module:
    import os

    import yaml

    mlmodel = folder / "MLmodel" if folder.is_dir() else None
    if mlmodel is None or not mlmodel.is_file():
        raise KdlabError(f"{key} = {uri!r}: neither an MLflow model (no MLmodel file) nor a folder with a "
                         "state_dict.pt; point at a logged model (runs:/RUN_ID/NAME, models:/...) or at a .pt "
                         "state_dict artifact")
    flavor = ((yaml.safe_load(mlmodel.read_text()) or {}).get("flavors") or {}).get("pytorch")
    if not isinstance(flavor, dict):
        raise KdlabError(f"{key} = {uri!r}: not an MLflow PyTorch model (its MLmodel has no pytorch flavor)")
    data = folder / str(flavor.get("model_data") or "data")
    if not (data / "model.pt2").is_file():
        raise KdlabError(f"{key} = {uri!r}: {_PICKLE_REFUSED}")
    import mlflow.pytorch

    if not hasattr(mlflow.pytorch, "_validate_pt2_archive_is_pickle_free"):
        raise KdlabError(f"{key} = {uri!r}: this MLflow version ({mlflow.__version__}) cannot check that an exported "
                         "program holds no pickle; upgrade MLflow, or point at a state_dict artifact")
    previous = os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"  # MLflow refuses any record that is not plain data
    try:
        module = mlflow.pytorch.load_model(str(folder), map_location="cpu")
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", None)
        else:
            os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = previous
    if not isinstance(module, nn.Module):
        raise KdlabError(f"{key} = {uri!r}: the exported program did not load as a torch module")
    return module


def apply_init(init: InitConfig | None, model: nn.Module, section: str,
               tracking_uri: str | None = None) -> dict[str, float]:
    """Load ``init``'s source weights into the model of config ``section`` (``teacher`` or ``student``) and freeze
    the named modules; returns the metrics ``init_loaded_tensors`` and ``frozen_params`` (empty without init)."""
    if init is None:
        return {}
    if init.checkpoint:
        key = f"{section}.init.checkpoint"
        state = load_state_dict_file(existing_file(init.checkpoint, key), key)
        loaded_keys = load_weights(model, state, key=key, value=init.checkpoint, strict=init.strict)
    elif init.mlflow_uri:
        key = f"{section}.init.mlflow_uri"
        weights = mlflow_weights(init.mlflow_uri, key, tracking_uri)
        state = weights.state_dict() if isinstance(weights, nn.Module) else weights
        loaded_keys = load_weights(model, state, key=key, value=init.mlflow_uri, strict=init.strict)
    else:
        loaded_keys = []
    frozen = 0
    for path in init.freeze:
        module = find_module(model, path, key=f"{section}.init.freeze", owner=f"the {section}")
        for p in module.parameters():
            p.requires_grad_(False)
            frozen += p.numel()
    return {"init_loaded_tensors": float(len(loaded_keys)), "frozen_params": float(frozen)}

