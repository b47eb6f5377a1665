"""Teachers: trained once and reused (by fingerprint of their config and data), or loaded from a checkpoint or an
MLflow model URI; and their outputs over the data, computed once and cached on disk."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlab import paths
from kdlab.config import LoadedConfig, dump_yaml
from kdlab.errors import KdlabError
from kdlab.registry import Component
from kdlab.types import Data

CACHE_VERSION = 1


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def data_fingerprint(loaded: LoadedConfig) -> str:
    comp = loaded.components["data"]
    cfg = loaded.config.data
    return _digest({"v": CACHE_VERSION, "name": cfg.name, "params": cfg.params, "seed": cfg.seed,
                    "plugin": comp.distribution, "version": comp.version})


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:20]


def teacher_fingerprint(loaded: LoadedConfig) -> str:
    t = loaded.config.teacher
    assert t is not None
    comp = loaded.components["teacher"]
    source: dict[str, Any]
    if t.checkpoint:
        source = {"checkpoint": file_digest(_checkpoint_path(t.checkpoint))}
    elif t.mlflow_uri:
        source = {"mlflow_uri": t.mlflow_uri}
    else:
        source = {"training": t.training.model_dump(mode="json")}
        if t.init is not None:  # a teacher fine-tuned from a source model is another teacher
            init = t.init.model_dump(mode="json")
            if t.init.checkpoint:
                init["checkpoint"] = file_digest(_checkpoint_path(t.init.checkpoint))
            source["init"] = init
    return _digest({"v": CACHE_VERSION, "name": t.name, "params": t.params, "source": source,
                    "plugin": comp.distribution, "version": comp.version, "data": data_fingerprint(loaded)})


@dataclass
class Teacher:
    model: nn.Module
    fingerprint: str
    source: str  # "trained", "cache", "checkpoint", "mlflow"
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def build_model(comp: Component, params: Any, data: Data) -> nn.Module:
    model = comp.build(params, input_shape=data.input_shape, num_classes=data.num_classes)
    if not isinstance(model, nn.Module):
        raise KdlabError(f"{comp.kind} {comp.name!r} from {comp.origin} returned {type(model).__name__}, "
                         "expected a torch.nn.Module")
    return model


def _checkpoint_path(p: str) -> Path:
    path = Path(p).expanduser()
    if not path.exists():
        raise KdlabError(f"teacher.checkpoint = {p!r}: no such file")
    return path


def load_state_dict_file(path: Path, key: str) -> dict[str, torch.Tensor]:
    """``torch.load(..., weights_only=True)``; accepts a bare state_dict or ``{"state_dict": ...}``."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise KdlabError(f"{key} = {str(path)!r}: not a loadable weights-only checkpoint ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:300]})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise KdlabError(f"{key} = {str(path)!r}: expected a state_dict (a mapping of names to tensors)")
    return obj


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], *, key: str, value: str, strict: bool = True) -> list[str]:
    """Load ``state`` into ``model``; mismatches are an error naming the key and listing what did not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if shape or (strict and (missing or unexpected)):
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:8])}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:8])}")
        if shape:
            parts.append(f"shape mismatch {', '.join(shape[:8])}")
        raise KdlabError(f"{key} = {value!r}: the weights do not fit the model ({'; '.join(parts)})")
    loaded = [k for k in own if k in state]
    model.load_state_dict({**own, **{k: state[k] for k in loaded}})
    return loaded


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
        except Exception:  # noqa: BLE001
            local = None
        if local is not None and model is not None:
            load_weights(model, load_state_dict_file(local, key), key=key, value=uri)
            return model
        return mlflow.pytorch.load_model(uri, map_location="cpu")
    except KdlabError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise KdlabError(f"{key} = {uri!r}: could not load from MLflow ({type(exc).__name__}: {str(exc)[:300]})") from None


def teacher_cache_dir() -> Path:
    return paths.cache_dir("teachers")


def cached_teacher(fp: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    d = teacher_cache_dir() / fp
    if (d / "state_dict.pt").exists() and (d / "meta.json").exists():
        return load_state_dict_file(d / "state_dict.pt", "teacher cache"), json.loads((d / "meta.json").read_text())
    return None


def store_teacher(fp: str, model: nn.Module, meta: dict[str, Any]) -> Path:
    d = teacher_cache_dir() / fp
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f"state_dict.{os.getpid()}.tmp"
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(d / "state_dict.pt")
    (d / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return d / "state_dict.pt"


# ---------------------------------------------------------------------------------------------------------------
# Teacher outputs
# ---------------------------------------------------------------------------------------------------------------


def outputs_path(teacher_fp: str) -> Path:
    return paths.cache_dir("outputs") / f"{teacher_fp}.pt"


def teacher_outputs(teacher: Teacher, data: Data, device: torch.device, batch_size: int = 4096) -> dict[str, torch.Tensor]:
    """Teacher logits over every split, computed once per teacher and data and cached on disk in float16
    (``2 * num_classes`` bytes per example); returned as float32 on ``device``."""
    from kdlab.training import predict

    path = outputs_path(teacher.fingerprint)
    if path.exists():
        stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if all(name in stored and len(stored[name]) == len(split) for name, split in data.splits().items()):
            return {k: v.to(device=device, dtype=torch.float32) for k, v in stored.items()}
    teacher.model.to(device)
    out = {name: predict(teacher.model, split.x.to(device), batch_size)[0] for name, split in data.splits().items()}
    compact = {k: v.to(torch.float16).cpu().contiguous() for k, v in out.items()}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(compact, tmp)
    tmp.replace(path)
    # return what the cache holds, so a first run and a cached rerun see identical teacher outputs
    return {k: v.to(device=device, dtype=torch.float32) for k, v in compact.items()}


def resolved_teacher_yaml(loaded: LoadedConfig) -> str:
    cfg = loaded.config
    return dump_yaml({"data": cfg.data.model_dump(mode="json"), "teacher": cfg.teacher.model_dump(mode="json")})
