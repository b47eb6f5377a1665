"""Progressive distillation through a teacher assistant (Mirzadeh et al. AAAI 2020, "Improved Knowledge
Distillation via Teacher Assistant"): teacher -> assistant -> student as a chain of distillations in one run.

A config with an ``assistant:`` section (``{name, params, epochs}``, a student architecture) runs two stages with
the configured loss, each an ordinary :func:`kdlab.distill.distil` and so its own MLflow run (the teacher, when
trained, has its own run as always):

1. the teacher distilled into the assistant (role ``assistant``);
2. the assistant, loaded from the weights of stage 1 as the teacher, distilled into the student (the configured role).

The result is stage 2's, with ``assistant_test_accuracy`` and ``assistant_val_accuracy`` added. The run's own
observers (a study's pruner) watch stage 2 only.
"""

from __future__ import annotations

import dataclasses

from kdlab import paths
from kdlab.config import LoadedConfig, derive_config
from kdlab.distill import RunResult, distil
from kdlab.errors import KdlabError
from kdlab.files import atomic_torch_save, digest
from kdlab.lifecycle import RunOptions
from kdlab.session import Session
from kdlab.weights import state_dict_cpu


def run_assistant_chain(loaded: LoadedConfig, options: RunOptions, session: Session) -> RunResult:
    cfg = loaded.config
    assistant = cfg.assistant
    if cfg.teacher is None:
        raise KdlabError(f"{loaded.name}: assistant: a teacher assistant needs a `teacher:` section to distil from")
    arch = {"name": assistant.name, "params": assistant.params}
    training = {**cfg.training.model_dump(mode="json"), "epochs": assistant.epochs or cfg.training.epochs}
    stage1 = derive_config(loaded, {"student": arch, "training": training}, f"{loaded.name} (assistant)")
    first = distil(stage1, dataclasses.replace(
        options, role="assistant", run_name=f"assistant-{assistant.name}-{cfg.loss.name}-seed{cfg.training.seed}",
        observers=[], log_model=False, tags={**options.tags, "kdlab.stage": "assistant"},
    ), session)

    # the assistant's weights become stage 2's teacher checkpoint, named by stage 1's whole config
    path = atomic_torch_save(state_dict_cpu(first.student),
                             paths.cache_dir("assistants") / f"{digest(stage1.config.resolved_dict())}.pt")
    stage2 = derive_config(loaded, {"teacher": {**arch, "checkpoint": str(path)}}, f"{loaded.name} (student)")
    tags = {**options.tags, "kdlab.stage": "student",
            "kdlab.chain": f"{cfg.teacher.name} -> {assistant.name} -> {cfg.student.name}"}
    if first.run_id:
        tags["kdlab.assistant_run_id"] = first.run_id
    if first.teacher is not None and first.teacher.run_id:
        tags["kdlab.original_teacher_run_id"] = first.teacher.run_id
    second = distil(stage2, dataclasses.replace(options, tags=tags), session)
    second.metrics["assistant_test_accuracy"] = first.metrics["test_accuracy"]
    second.metrics["assistant_val_accuracy"] = first.metrics["val_accuracy"]
    if "teacher_test_accuracy" in first.metrics:
        second.metrics["original_teacher_test_accuracy"] = first.metrics["teacher_test_accuracy"]
    return second
