"""The local teacher cache (``$KDLAB_CACHE_DIR/teachers/<fingerprint>/``: weights and metadata) and the cache of
teacher outputs (``outputs/<fingerprint>.pt``: logits over every split in float16)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlab import batch, paths
from kdlab.files import atomic_torch_save, atomic_write_text
from kdlab.training import predict
from kdlab.types import Data
from kdlab.weights import load_state_dict_file, state_dict_cpu


def teacher_cache_dir() -> Path:
    return paths.cache_dir("teachers")


def cached_teacher(fp: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The cached weights and metadata of teacher ``fp``, or ``None``."""
    d = teacher_cache_dir() / fp
    if (d / "state_dict.pt").exists() and (d / "meta.json").exists():
        return load_state_dict_file(d / "state_dict.pt", "teacher cache"), json.loads((d / "meta.json").read_text())
    return None


def store_teacher(fp: str, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Cache a trained teacher's weights and metadata; returns the weights file."""
    d = teacher_cache_dir() / fp
    path = atomic_torch_save(state_dict_cpu(model), d / "state_dict.pt")
    atomic_write_text(d / "meta.json", json.dumps(meta, indent=2, sort_keys=True))
    return path


def outputs_path(teacher_fp: str) -> Path:
    return paths.cache_dir("outputs") / f"{teacher_fp}.pt"


def teacher_outputs(teacher: Any, data: Data, device: torch.device, batch_size: int = 4096) -> dict[str, torch.Tensor]:
    """Teacher logits over every split, computed once per teacher and data and cached on disk in float16
    (``2 * num_classes`` bytes per example); returned as float32 on ``device``."""
    path = outputs_path(teacher.fingerprint)
    if path.exists():
        stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if all(name in stored and len(stored[name]) == len(split) for name, split in data.splits().items()):
            return {k: v.to(device=device, dtype=torch.float32) for k, v in stored.items()}
    teacher.model.to(device)
    out = {name: predict(teacher.model, batch.to(split.x, device), batch_size)[0]
           for name, split in data.splits().items()}
    compact = {k: v.to(torch.float16).cpu().contiguous() for k, v in out.items()}
    atomic_torch_save(compact, path)
    # return what the cache holds, so a first run and a cached rerun see identical teacher outputs
    return {k: v.to(device=device, dtype=torch.float32) for k, v in compact.items()}
