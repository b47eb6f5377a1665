"""Building model components (teachers, students) for the data at hand, and starting one from a source model's
weights (``teacher.init`` / ``student.init``: transfer learning, frozen modules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from kdlab.capture import find_module
from kdlab.config import InitConfig
from kdlab.errors import KdlabError
from kdlab.registry import Component, Registry
from kdlab.types import Data
from kdlab.weights import existing_file, load_state_dict_file, load_weights


def build_model(comp: Component, params: Any, data: Data) -> nn.Module:
    """The architecture ``comp`` with ``params`` for ``data``'s input shape, number of classes and metadata (each
    given to the factory only when it takes that keyword)."""
    model = comp.build(params, input_shape=data.input_shape, num_classes=data.num_classes, metadata=data.metadata)
    if not isinstance(model, nn.Module):
        raise KdlabError(f"{comp.kind} {comp.name!r} from {comp.origin} returned {type(model).__name__}, "
                         "expected a torch.nn.Module")
    return model


def model_builder(registry: Registry, data: Data,
                  device: torch.device) -> Callable[[str, str, dict[str, Any]], nn.Module]:
    """The ``build_model(kind, name, params)`` callback of :class:`kdlab.LossSetup` (online peers)."""

    def build(kind: str, name: str, params: dict[str, Any]) -> nn.Module:
        comp = registry.get(kind, name)
        return build_model(comp, comp.validate_params(params), data).to(device)

    return build


def load_from_mlflow(uri: str, model: nn.Module | None, key: str) -> nn.Module:
    """A state_dict artifact (``.pt``/``.pth``, loaded weights-only into ``model``) or an MLflow PyTorch model."""
    import mlflow

    try:
        if uri.endswith((".pt", ".pth")):
            local = Path(mlflow.artifacts.download_artifacts(uri))
            if model is None:
                raise KdlabError(f"{key} = {uri!r}: a state_dict needs the architecture (name and params)")
            load_weights(model, load_state_dict_file(local, key), key=key, value=uri)
            return model
        # a kdlab-made model carries its weights as state_dict.pt beside it: prefer the weights-only path
        try:
            local = Path(mlflow.artifacts.download_artifacts(uri.rstrip("/") + "/state_dict.pt"))
        except Exception:  # noqa: BLE001 - not a kdlab-made model: load it as MLflow's model
            local = None
        if local is not None and model is not None:
            load_weights(model, load_state_dict_file(local, key), key=key, value=uri)
            return model
        return mlflow.pytorch.load_model(uri, map_location="cpu")
    except KdlabError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever MLflow raised, the user's URI is the culprit
        raise KdlabError(f"{key} = {uri!r}: could not load from MLflow "
                         f"({type(exc).__name__}: {str(exc)[:300]})") from None


def apply_init(init: InitConfig | None, model: nn.Module, section: str) -> dict[str, float]:
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
        source = load_from_mlflow(init.mlflow_uri, model if init.mlflow_uri.endswith((".pt", ".pth")) else None, key)
        if source is model:
            loaded_keys = list(model.state_dict())
        else:
            loaded_keys = load_weights(model, source.state_dict(), key=key, value=init.mlflow_uri, strict=init.strict)
    else:
        loaded_keys = []
    frozen = 0
    for path in init.freeze:
        module = find_module(model, path, key=f"{section}.init.freeze", owner=f"the {section}")
        for p in module.parameters():
            p.requires_grad_(False)
            frozen += p.numel()
    return {"init_loaded_tensors": float(len(loaded_keys)), "frozen_params": float(frozen)}

