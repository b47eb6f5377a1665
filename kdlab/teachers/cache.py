"""The local teacher cache (``$KDLAB_CACHE_DIR/teachers/<fingerprint>/``: weights and metadata) and the cache of
teacher outputs (``outputs/<fingerprint>.pt``: logits over every split in float16; for streamed data a folder
``outputs/<fingerprint>/`` of memory-mapped arrays, one per split, so that memory stays flat as the data grows)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlab import paths
from kdlab.arrays import ArrayWriter, open_arrays
from kdlab.augment import Augment
from kdlab.config import LoaderConfig
from kdlab.files import atomic_torch_save, atomic_write_text
from kdlab.loading import Evaluation
from kdlab.training import predict_batches, predict_split
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


def outputs_path(teacher_fp: str, splits: list[str] | None = None) -> Path:
    """The cache of a teacher's outputs over every split (or over ``splits`` only)."""
    name = teacher_fp if splits is None else f"{teacher_fp}.{'+'.join(splits)}"
    return paths.cache_dir("outputs") / f"{name}.pt"


def teacher_outputs(teacher: Any, data: Data, device: torch.device, batch_size: int = 4096, *,
                    augment: Augment | None = None, loader: LoaderConfig | None = None,
                    splits: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Teacher logits over every split (or over ``splits``), computed once per teacher and data and cached on disk
    in float16 (``2 * num_classes`` bytes per example), on inputs as evaluation sees them (``augment``'s
    deterministic ops applied); returned as float32 on ``device``. For streamed data the train and transfer rows'
    logits stay on disk: memory-mapped float16 CPU tensors, read by row index as training needs them."""
    wanted = {k: v for k, v in data.splits().items() if splits is None or k in splits}
    if data.streamed:
        return _streamed_outputs(teacher, wanted, device, batch_size, augment, loader, splits)
    path = outputs_path(teacher.fingerprint, splits)
    if path.exists():
        stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if all(name in stored and len(stored[name]) == len(split) for name, split in wanted.items()):
            return {k: v.to(device=device, dtype=torch.float32) for k, v in stored.items()}
    teacher.model.to(device)
    out = {name: predict_split(teacher.model, split.x, device, batch_size, augment=augment)
           for name, split in wanted.items()}
    compact = {k: v.to(torch.float16).cpu().contiguous() for k, v in out.items()}
    atomic_torch_save(compact, path)
    # return what the cache holds, so a first run and a cached rerun see identical teacher outputs
    return {k: v.to(device=device, dtype=torch.float32) for k, v in compact.items()}


#: splits whose teacher outputs are read by row while training (kept on disk for streamed data)
TRAINING_SPLITS = ("train", "transfer")


def _streamed_outputs(teacher: Any, splits: dict[str, Any], device: torch.device, batch_size: int,
                      augment: Augment | None, loader: LoaderConfig | None,
                      names: list[str] | None) -> dict[str, torch.Tensor]:
    folder = outputs_path(teacher.fingerprint, names).with_suffix("")
    arrays = open_arrays(folder)
    if arrays is None or any(k not in arrays or len(arrays[k]) != len(s) for k, s in splits.items()):
        teacher.model.to(device)
        num_classes = None
        writer = None
        try:
            for name, split in splits.items():
                ev = Evaluation(split.x, batch_size, device, augment=augment, loader=loader)
                row = 0
                try:
                    for xb in ev.batches():
                        logits = predict_batches(teacher.model, [xb])[0]
                        if writer is None:
                            num_classes = logits.shape[1]
                            writer = ArrayWriter(folder, {k: ((len(s), num_classes), "float16")
                                                          for k, s in splits.items()})
                        writer.write(name, slice(row, row + len(logits)), logits)
                        row += len(logits)
                finally:
                    ev.close()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        writer.commit()
        arrays = open_arrays(folder)
    return {k: v if k in TRAINING_SPLITS else v.to(device=device, dtype=torch.float32) for k, v in arrays.items()}
