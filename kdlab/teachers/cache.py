"""The local teacher cache (``$KDLAB_CACHE_DIR/teachers/<fingerprint>/``: ``state_dict.pt`` and ``meta.json``) and
the cache of teacher outputs (``outputs/<fingerprint>.pt`` with ``<fingerprint>.json``: logits over every split in
float16; for streamed data a folder ``outputs/<fingerprint>/`` of memory-mapped arrays, one per split, so that
memory stays flat as the data grows). ``docs/faults.md`` describes the layout and ``kdlab cache`` lists and clears it.

Each entry carries the SHA-256 of its weights or outputs file in its JSON file, which is written last (a folder of
arrays: of each array, in its ``meta.json``, :mod:`kdlab.arrays`): an entry whose file is missing, truncated,
damaged or does not match its checksum is removed with a warning and built again.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlab import paths
from kdlab.arrays import ArrayWriter, open_arrays
from kdlab.arrays import problem as arrays_problem
from kdlab.augment import Augment
from kdlab.config import LoaderConfig
from kdlab.contracts import Part, check_logits, forward_of, who
from kdlab.errors import KdlabError
from kdlab.files import atomic_torch_save, atomic_write_text, file_digest
from kdlab.loading import Evaluation
from kdlab.training import predict_batches, predict_split
from kdlab.types import Data
from kdlab.weights import load_state_dict_file, state_dict_cpu

log = logging.getLogger("kdlab")


def teacher_cache_dir() -> Path:
    return paths.cache_dir("teachers")


def _damaged(what: str, path: Path, reason: str) -> None:
    """Remove a damaged cache entry, saying so (it is built again)."""
    message = f"kdlab: warning: the cached {what} {path} was damaged ({reason}); removed, it is built again"
    print(message, file=sys.stderr)
    log.debug(message)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        for p in (path, path.with_suffix(".json")):
            p.unlink(missing_ok=True)


def cached_teacher(fp: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The cached weights and metadata of teacher ``fp``, or ``None`` (also when the entry was damaged: then it is
    removed)."""
    d = teacher_cache_dir() / fp
    weights, meta_file = d / "state_dict.pt", d / "meta.json"
    if not d.exists():
        return None
    if not meta_file.exists():
        _damaged("teacher", d, "no meta.json: its writing was cut short")
        return None
    try:
        meta = json.loads(meta_file.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        _damaged("teacher", d, f"meta.json: {exc}")
        return None
    if not weights.exists():
        _damaged("teacher", d, "state_dict.pt is missing")
        return None
    if meta.get("sha256") != file_digest(weights):
        _damaged("teacher", d, "state_dict.pt does not match its checksum")
        return None
    try:
        state = load_state_dict_file(weights, "teacher cache")
    except KdlabError as exc:
        _damaged("teacher", d, str(exc))
        return None
    return state, meta


def store_teacher(fp: str, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Cache a trained teacher's weights and metadata (with the weights' checksum, written last); returns the
    weights file."""
    d = teacher_cache_dir() / fp
    path = atomic_torch_save(state_dict_cpu(model), d / "state_dict.pt")
    atomic_write_text(d / "meta.json", json.dumps({**meta, "sha256": file_digest(path)}, indent=2, sort_keys=True))
    return path


def outputs_path(teacher_fp: str, splits: list[str] | None = None) -> Path:
    """The cache of a teacher's outputs over every split (or over ``splits`` only)."""
    name = teacher_fp if splits is None else f"{teacher_fp}.{'+'.join(splits)}"
    return paths.cache_dir("outputs") / f"{name}.pt"


def _cached_outputs(path: Path, splits: dict[str, Any], num_classes: int) -> dict[str, torch.Tensor] | None:
    if not path.exists():
        return None
    meta_file = path.with_suffix(".json")
    try:
        meta = json.loads(meta_file.read_text())
        if meta.get("sha256") != file_digest(path):
            raise ValueError("the file does not match its checksum")
        stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(stored, dict) or not all(isinstance(v, torch.Tensor) for v in stored.values()):
            raise ValueError("not a mapping of split names to tensors")
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with a cache file, it is rebuilt
        _damaged("teacher outputs", path, f"{type(exc).__name__}: {exc}"[:300])
        return None
    if all(name in stored and stored[name].dim() == 2 and len(stored[name]) == len(split)
           and stored[name].shape[1] == num_classes for name, split in splits.items()):
        return stored
    return None  # made for other data (a split added): computed again


def teacher_outputs(teacher: Any, data: Data, device: torch.device, batch_size: int = 4096, *,
                    augment: Augment | None = None, loader: LoaderConfig | None = None,
                    splits: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Teacher logits over every split (or over ``splits``), computed once per teacher and data and cached on disk
    in float16 (``2 * num_classes`` bytes per example), on inputs as evaluation sees them (``augment``'s
    deterministic ops applied); returned as float32 on ``device``. For streamed data the train and transfer rows'
    logits stay on disk: memory-mapped float16 CPU tensors, read by row index as training needs them. The teacher
    must give ``(N, num_classes)`` logits for every split before anything is cached."""
    wanted = {k: v for k, v in data.splits().items() if splits is None or k in splits}
    if data.streamed:
        return _streamed_outputs(teacher, wanted, data.num_classes, device, batch_size, augment, loader, splits)
    path = outputs_path(teacher.fingerprint, splits)
    stored = _cached_outputs(path, wanted, data.num_classes)
    if stored is not None:
        return {k: v.to(device=device, dtype=torch.float32) for k, v in stored.items()}
    teacher.model.to(device)
    comp = getattr(teacher, "component", None)
    name = who("teacher", comp)
    out = {}
    with forward_of(Part(teacher.model, "teacher", comp)):
        for split_name, split in wanted.items():
            out[split_name] = predict_split(teacher.model, split.x, device, batch_size, augment=augment)
            check_logits(out[split_name], len(split), data.num_classes, name, f"over the {split_name} split")
    compact = {k: v.to(torch.float16).cpu().contiguous() for k, v in out.items()}
    atomic_torch_save(compact, path)
    meta = {"sha256": file_digest(path), "teacher": teacher.fingerprint,
            "splits": {k: list(v.shape) for k, v in compact.items()}}
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta))
    # return what the cache holds, so a first run and a cached rerun see identical teacher outputs
    return {k: v.to(device=device, dtype=torch.float32) for k, v in compact.items()}


#: splits whose teacher outputs are read by row while training (kept on disk for streamed data)
TRAINING_SPLITS = ("train", "transfer")


def _streamed_outputs(teacher: Any, splits: dict[str, Any], num_classes: int, device: torch.device, batch_size: int,
                      augment: Augment | None, loader: LoaderConfig | None,
                      names: list[str] | None) -> dict[str, torch.Tensor]:
    """The streamed form of :func:`teacher_outputs`: a folder of arrays (one per split) with each array's checksum
    in its ``meta.json``; a damaged folder is removed with a warning and computed again, one made for other data
    (a split added, another number of classes) is computed again."""
    folder = outputs_path(teacher.fingerprint, names).with_suffix("")
    damage = arrays_problem(folder)
    if damage is not None:
        _damaged("teacher outputs", folder, damage)
    arrays = open_arrays(folder)
    if arrays is not None and all(k in arrays and arrays[k].dim() == 2 and len(arrays[k]) == len(s)
                                  and arrays[k].shape[1] == num_classes for k, s in splits.items()):
        return _placed(arrays, device)
    shutil.rmtree(folder, ignore_errors=True)  # made for other data: computed again
    teacher.model.to(device)
    comp = getattr(teacher, "component", None)
    name = who("teacher", comp)
    writer = ArrayWriter(folder, {k: ((len(s), num_classes), "float16") for k, s in splits.items()},
                         {"teacher": teacher.fingerprint})
    try:
        with forward_of(Part(teacher.model, "teacher", comp)):
            for split_name, split in splits.items():
                ev = Evaluation(split.x, batch_size, device, augment=augment, loader=loader)
                row = 0
                try:
                    for xb in ev.batches():
                        logits = predict_batches(teacher.model, [xb])[0]
                        check_logits(logits, _rows(xb), num_classes, name, f"over the {split_name} split")
                        writer.write(split_name, slice(row, row + len(logits)), logits)
                        row += len(logits)
                finally:
                    ev.close()
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    arrays = open_arrays(folder)
    if arrays is None:
        raise KdlabError(f"the teacher outputs just written to {folder} cannot be read back")
    return _placed(arrays, device)


def _rows(xb: Any) -> int:
    return len(xb) if isinstance(xb, torch.Tensor) else len(next(iter(xb.values())))


def _placed(arrays: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The training rows' logits stay memory-mapped on disk; the others (validation, test) go to ``device``."""
    return {k: v if k in TRAINING_SPLITS else v.to(device=device, dtype=torch.float32) for k, v in arrays.items()}
