"""Progressive distillation through a teacher assistant (Mirzadeh et al. AAAI 2020, "Improved Knowledge
Distillation via Teacher Assistant"): teacher -> assistant -> student as a chain of distillations in one run.

A config with an ``assistant:`` section (``{name, params, epochs}``, a student architecture) runs two stages with
the configured loss, each an ordinary :func:`kdlab.engine.run` and so its own MLflow run (the teacher, when trained,
has its own run as always):

1. the teacher distilled into the assistant (role ``assistant``);
2. the assistant, loaded from the weights of stage 1 as the teacher, distilled into the student (the configured role).

The result is stage 2's, with ``assistant_test_accuracy`` and ``assistant_val_accuracy`` added. Epoch callbacks
(pruning) apply to stage 2 only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import torch

from kdlab import paths
from kdlab.config import LoadedConfig
from kdlab.errors import KdlabError
from kdlab.multiteacher import derive_config


def run_progressive(loaded: LoadedConfig, options, session):
    from kdlab.engine import run

    cfg = loaded.config
    assistant = cfg.assistant
    if cfg.teacher is None:
        raise KdlabError(f"{loaded.name}: assistant: a teacher assistant needs a `teacher:` section to distil from")
    arch = {"name": assistant.name, "params": assistant.params}
    training = {**cfg.training.model_dump(mode="json"), "epochs": assistant.epochs or cfg.training.epochs}
    stage1 = derive_config(loaded, {"student": arch, "training": training}, f"{loaded.name} (assistant)")
    first = run(stage1, dataclasses.replace(
        options, role="assistant", run_name=f"assistant-{assistant.name}-{cfg.loss.name}-seed{cfg.training.seed}",
        epoch_callbacks=[], log_model=False, tags={**options.tags, "kdlab.stage": "assistant"},
    ), session)

    digest = hashlib.sha256(json.dumps(stage1.config.resolved_dict(), sort_keys=True).encode()).hexdigest()[:20]
    path = paths.cache_dir("assistants") / f"{digest}.pt"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({k: v.detach().cpu() for k, v in first.student.state_dict().items()}, tmp)
    tmp.replace(path)

    stage2 = derive_config(loaded, {"teacher": {**arch, "checkpoint": str(path)}}, f"{loaded.name} (student)")
    tags = {**options.tags, "kdlab.stage": "student", "kdlab.chain": f"{cfg.teacher.name} -> {assistant.name} -> "
                                                                     f"{cfg.student.name}"}
    if first.run_id:
        tags["kdlab.assistant_run_id"] = first.run_id
    if first.teacher is not None and first.teacher.run_id:
        tags["kdlab.original_teacher_run_id"] = first.teacher.run_id
    second = run(stage2, dataclasses.replace(options, tags=tags), session)
    second.metrics["assistant_test_accuracy"] = first.metrics["test_accuracy"]
    second.metrics["assistant_val_accuracy"] = first.metrics["val_accuracy"]
    if "teacher_test_accuracy" in first.metrics:
        second.metrics["original_teacher_test_accuracy"] = first.metrics["teacher_test_accuracy"]
    return second
