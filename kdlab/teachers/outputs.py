"""The teacher's outputs a run needs, as its config asks for them: over the fixed rows (cached once per teacher and
data), and under ``teacher.mode: views`` over K augmented views of the training rows. Kept in the session, so a
study prepares them once for all its trials (:func:`kdlab.study.runner.prepare`)."""

from __future__ import annotations

from typing import Any

import torch

from kdlab import batch
from kdlab.augment import Augment
from kdlab.config import LoadedConfig
from kdlab.errors import KdlabError
from kdlab.loading import Rows, ViewTable, num_rows
from kdlab.session import Session
from kdlab.teachers.cache import outputs_path, teacher_outputs
from kdlab.teachers.shared import shared_outputs
from kdlab.teachers.views import teacher_views, views_key
from kdlab.tracking import Tracker
from kdlab.types import Data


def run_augment(loaded: LoadedConfig, data: Data) -> Augment | None:
    """The run's ``data.augment`` for ``data``, or ``None`` without one."""
    ops = loaded.config.data.augment
    return Augment(ops, data.num_classes) if ops else None


def augmented(loaded: LoadedConfig) -> bool:
    """Whether training batches are randomly augmented (then the teacher's outputs over the fixed training rows do
    not match what the student sees)."""
    return any(op.op != "normalize" for op in loaded.config.data.augment)


def outputs_for_run(loaded: LoadedConfig, teacher: Any, data: Data, device: torch.device,
                    session: Session, tracker: Tracker | None = None) -> dict[str, torch.Tensor]:
    """The teacher's logits over the splits: all of them, or under random augmentation only validation and test
    (training then runs the teacher live or replays views); computed once per session and cached on disk. With
    ``tracker`` (a study), the cache file is shared through the teacher's run: downloaded when another process
    published it, else computed by one process and published (:func:`kdlab.teachers.shared.shared_outputs`)."""
    fixed = not augmented(loaded)
    key = (teacher.fingerprint, str(device)) if fixed else (teacher.fingerprint, f"{device}:eval")
    if key not in session.outputs:
        cfg = loaded.config
        splits = None if fixed else ["val", "test"]

        def compute() -> dict[str, torch.Tensor]:
            return teacher_outputs(teacher, data, device, cfg.training.eval_batch_size,
                                   augment=run_augment(loaded, data), loader=cfg.data.loader, splits=splits)

        if tracker is None or data.streamed:  # streamed outputs are a folder of arrays: each machine makes its own
            session.outputs[key] = compute()
        else:
            session.outputs[key] = shared_outputs(teacher, outputs_path(teacher.fingerprint, splits), session,
                                                  tracker, compute)
    return session.outputs[key]


def training_inputs(data: Data, use_transfer: bool) -> Any:
    """The training rows' inputs (train, then transfer when used) as one :class:`kdlab.loading.Rows`."""
    parts = [data.train.x] + ([data.transfer.x] if use_transfer and data.transfer is not None else [])
    return Rows(parts)


def views_for_run(loaded: LoadedConfig, teacher: Any, data: Data, device: torch.device, session: Session, *,
                  use_transfer: bool) -> ViewTable:
    """The teacher's cached views of the training rows (``teacher.mode: views``), computed once and shared."""
    cfg = loaded.config
    aug = run_augment(loaded, data)
    if aug is None or not aug.random:
        raise KdlabError("teacher.mode: views needs random ops in data.augment (without them the teacher's outputs "
                         "are cached over the fixed rows anyway)")
    if aug.mixes:
        raise KdlabError("teacher.mode: views cannot replay mixup or cutmix (they mix the examples of each batch, "
                         "which views cannot know in advance): use teacher.mode: live")
    rows = training_inputs(data, use_transfer)
    sizes = [num_rows(p) for p in rows.parts]
    key = views_key(teacher.fingerprint, aug, cfg.teacher.views, cfg.teacher.topk, cfg.data.seed, sizes)
    skey = (key, str(device))
    if skey not in session.views:
        x = rows if data.streamed else (rows.parts[0] if len(rows.parts) == 1 else _joined(rows))
        session.views[skey] = teacher_views(
            teacher.model, x, aug, key=key, count=cfg.teacher.views, topk=cfg.teacher.topk, seed=cfg.data.seed,
            num_classes=data.num_classes, device=device, batch_size=cfg.training.eval_batch_size,
            loader=cfg.data.loader, precision=cfg.training.precision, channels_last_=cfg.training.channels_last,
            component=getattr(teacher, "component", None))
    return session.views[skey]


def _joined(rows: Rows) -> Any:
    return batch.cat(rows.parts)


def prepare_outputs(loaded: LoadedConfig, teacher: Any, data: Data, device: torch.device,
                    session: Session, tracker: Tracker | None = None) -> dict[str, torch.Tensor]:
    """Everything of the teacher's that the runs of ``loaded`` will read, made once before a study's trials: its
    outputs (:func:`outputs_for_run`, shared through ``tracker`` when given) and, under ``teacher.mode: views``, its
    views of the training rows (with the transfer rows when ``training.use_transfer`` is on). Returns the outputs."""
    outputs = outputs_for_run(loaded, teacher, data, device, session, tracker)
    cfg = loaded.config
    if cfg.teacher is not None and cfg.teacher.mode == "views" and augmented(loaded):
        views_for_run(loaded, teacher, data, device, session,
                      use_transfer=cfg.training.use_transfer and data.transfer is not None)
    return outputs
