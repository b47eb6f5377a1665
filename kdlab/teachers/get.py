"""The configured teacher, from the first place that has it: this session, a checkpoint file, an MLflow URI, a
finished teacher run with its fingerprint in the tracking store (shared by every machine of a study: weights taken
from the local cache or downloaded), the local cache, or trained now (by one process of a study, under its lock).
Also the ``build_teacher`` callback that gives multi-teacher losses more teachers, each handled the same way."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from kdlab import batch
from kdlab.config import LoadedConfig, derive_config
from kdlab.contracts import Part, check_logits, forward_of, who
from kdlab.errors import KdlabError
from kdlab.functional import accuracy
from kdlab.models import build_model, load_from_mlflow
from kdlab.registry import Component
from kdlab.session import Session
from kdlab.teachers.cache import cached_teacher, store_teacher
from kdlab.teachers.fingerprint import teacher_fingerprint
from kdlab.teachers.shared import claim, end_orphans, fetch_weights, find_teacher_run
from kdlab.teachers.train import record_cached_teacher, train_teacher
from kdlab.training import predict
from kdlab.types import Data
from kdlab.weights import existing_file, load_state_dict_file, load_weights

log = logging.getLogger("kdlab")


@dataclass
class Teacher:
    model: nn.Module
    fingerprint: str
    #: "trained", "cache" (the local cache), "shared" (downloaded from its teacher run), "checkpoint", "mlflow"
    source: str
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    #: what it costs to run (``kdlab.costs.model_costs``), by device: measured once per session
    costs: dict[str, dict[str, float]] = field(default_factory=dict)
    #: the registered architecture (for error messages)
    component: Component | None = None
    #: why this teacher is suspect (``teacher.on_chance_accuracy: warn``), tagged ``kdlab.teacher_warning``
    warning: str | None = None


def get_teacher(loaded: LoadedConfig, data: Data, device: torch.device, session: Session, *,
                track: bool = True) -> Teacher:
    """The configured teacher, frozen, in eval mode, on ``device``; kept in ``session`` for the next run."""
    cfg = loaded.config.teacher
    if cfg is None:
        raise KdlabError("this run needs a teacher: add a `teacher:` section")
    fp = teacher_fingerprint(loaded)
    if fp in session.teachers:
        return session.teachers[fp]
    comp, params = loaded.components["teacher"], loaded.params["teacher"]
    track = track and loaded.config.tracking.enabled
    if cfg.checkpoint:
        model = build_model(comp, params, data)
        path = existing_file(cfg.checkpoint, "teacher.checkpoint")
        load_weights(model, load_state_dict_file(path, "teacher.checkpoint"), key="teacher.checkpoint",
                     value=cfg.checkpoint)
        teacher = Teacher(model, fp, "checkpoint")
    elif cfg.mlflow_uri:
        try:
            model = build_model(comp, params, data)
        except KdlabError:
            model = None
        teacher = Teacher(load_from_mlflow(cfg.mlflow_uri, model, "teacher.mlflow_uri", loaded.config.tracking.uri),
                          fp, "mlflow")
        if cfg.mlflow_uri.startswith("runs:/"):
            teacher.run_id = cfg.mlflow_uri.split("/")[1]
    else:
        teacher = _shared_cached_or_trained(loaded, data, device, session, fp, track)
    teacher.component = comp
    teacher.model.to(device).eval()
    for p in teacher.model.parameters():
        p.requires_grad_(False)
    if teacher.source == "mlflow" or (teacher.source == "checkpoint" and not _made_here(cfg.checkpoint)):
        check_not_chance(teacher, data, device, cfg.checkpoint or cfg.mlflow_uri or "", cfg.on_chance_accuracy,
                         "teacher.checkpoint" if cfg.checkpoint else "teacher.mlflow_uri")
    session.teachers[fp] = teacher
    return teacher


def _shared_cached_or_trained(loaded: LoadedConfig, data: Data, device: torch.device, session: Session, fp: str,
                              track: bool) -> Teacher:
    cfg = loaded.config.teacher
    tracker = session.tracker(loaded) if track else None
    found = find_teacher_run(tracker, fp) if tracker is not None else None
    if found is None:
        with claim(session, f"teacher:{fp}", f"training teacher {cfg.name} ({fp[:8]})") as locked:
            found = find_teacher_run(tracker, fp) if tracker is not None else None
            if found is None:
                if locked and tracker is not None:
                    end_orphans(tracker, fp)
                return _cached_or_trained(loaded, data, device, session, fp, track)
    return _from_run(loaded, data, session, fp, found, tracker)


def _cached_or_trained(loaded: LoadedConfig, data: Data, device: torch.device, session: Session, fp: str,
                       track: bool) -> Teacher:
    cfg = loaded.config.teacher
    comp, params = loaded.components["teacher"], loaded.params["teacher"]
    if (hit := cached_teacher(fp)) is not None:
        state, meta = hit
        model = build_model(comp, params, data)
        load_weights(model, state, key="teacher cache", value=fp)
        teacher = Teacher(model, fp, "cache", meta.get("run_id"), meta.get("metrics", {}))
        if track:
            teacher.run_id = record_cached_teacher(loaded, session, fp, meta)
        log.info("teacher %s reused from cache (%s)", cfg.name, fp[:8])
        return teacher
    model, run_id, metrics = train_teacher(loaded, data, device, session, fp, track=track)
    return Teacher(model, fp, "trained", run_id, metrics)


def _from_run(loaded: LoadedConfig, data: Data, session: Session, fp: str, run: Any, tracker) -> Teacher:
    """The teacher of a finished teacher run: weights from the local cache when it has them, else downloaded from
    the run's artifacts (and cached)."""
    cfg = loaded.config.teacher
    comp, params = loaded.components["teacher"], loaded.params["teacher"]
    run_id = run.info.run_id
    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("teacher_")}
    model = build_model(comp, params, data)
    if (hit := cached_teacher(fp)) is not None:
        load_weights(model, hit[0], key="teacher cache", value=fp)
        log.info("teacher %s reused from cache (%s)", cfg.name, fp[:8])
        return Teacher(model, fp, "cache", run_id, hit[1].get("metrics") or metrics)
    path = fetch_weights(tracker, run_id)
    load_weights(model, load_state_dict_file(path, "teacher run"), key="teacher run", value=run_id)
    store_teacher(fp, model, {"run_id": run_id, "metrics": metrics, "name": cfg.name, "params": cfg.params,
                              "tracking_uri": tracker.uri})
    log.info("teacher %s (%s) downloaded from run %s", cfg.name, fp[:8], run_id)
    return Teacher(model, fp, "shared", run_id, metrics)


def _made_here(checkpoint: str) -> bool:
    """A checkpoint kdlab wrote itself under its cache (an assistant, a born-again generation), not a user's file."""
    from pathlib import Path

    from kdlab import paths

    return Path(checkpoint).expanduser().resolve().is_relative_to(paths.cache_base())


def check_not_chance(teacher: Teacher, data: Data, device: torch.device, source: str, action: str, key: str) -> None:
    """A loaded teacher must do better than chance on the validation split: damaged weights (a flipped byte in a
    checkpoint) or weights of another task load without complaint and teach nothing. "Chance" is the accuracy of
    always answering the most frequent class, plus two standard errors."""
    import math
    import sys

    name = who("teacher", teacher.component)
    y = data.val.y.to(device)
    with forward_of(Part(teacher.model, "teacher", teacher.component)):
        logits, _ = predict(teacher.model, batch.to(data.val.x, device))
    check_logits(logits, len(y), data.num_classes, name, "over the val split")
    acc = float(accuracy(logits, y))
    majority = float(torch.bincount(y, minlength=data.num_classes).max()) / max(1, len(y))
    threshold = majority + 2 * math.sqrt(majority * (1 - majority) / max(1, len(y)))
    if acc > threshold:
        return
    message = (f"{key} = {source!r}: the loaded teacher's validation accuracy is {acc:.3f}, no better than chance "
               f"({majority:.3f}, always answering the most frequent class): its weights are damaged or belong to "
               "other data or another architecture")
    if action != "warn":
        raise KdlabError(f"{message}. Check the file or URI; to use it anyway set teacher.on_chance_accuracy: warn")
    teacher.warning = message
    print(f"kdlab: warning: {message}; going on (teacher.on_chance_accuracy: warn)", file=sys.stderr)


def teacher_builder(loaded: LoadedConfig, data: Data, device: torch.device, session: Session, *,
                    track: bool) -> Callable[[dict[str, Any]], nn.Module]:
    """The ``build_teacher(spec)`` callback of :class:`kdlab.LossSetup`: ``spec`` is a ``teacher:`` section."""
    count = [0]

    def build(spec: dict[str, Any]) -> nn.Module:
        label = f"{loaded.name} (loss.params.teachers.{count[0]}, as a teacher section)"
        count[0] += 1
        derived = derive_config(loaded, {"teacher": dict(spec)}, label)
        return get_teacher(derived, data, device, session, track=track).model

    return build
