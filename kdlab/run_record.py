"""How one student run describes itself in MLflow: its tags (role, seed, plugins, teacher link, description), its
params (the config's dotted keys), the export check before training, and registering its logged model."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdlab import __version__
from kdlab.config import LoadedConfig, flatten
from kdlab.exporting import export_problem
from kdlab.lifecycle import RunOptions
from kdlab.provenance import run_description, source_tags
from kdlab.session import Session
from kdlab.teachers import Teacher
from kdlab.tracking import NOTE

#: the final metrics copied onto a registered model version as tags (``metric.<name>``)
REGISTERED = ("val_accuracy", "test_accuracy", "agreement", "student_params", "student_flops", "compression_ratio",
              "flops_compression_ratio", "student_latency_ms")


def register(tracker, tracking, model_id: str, run_id: str | None, what: str, tags: dict[str, Any]) -> None:
    """Register ``model_id`` as ``tracking.register_model`` with alias ``tracking.register_alias``; a failure is a
    warning (the run and its logged model stand)."""
    import logging

    try:
        version = tracker.register_model(tracking.register_model, model_id, alias=tracking.register_alias,
                                         run_id=run_id, tags=tags, description=f"The student of {what}.")
        logging.getLogger("kdlab").info("registered %s version %s (alias %s)", tracking.register_model, version,
                                        tracking.register_alias)
    except Exception as exc:  # noqa: BLE001
        logging.getLogger("kdlab").warning("model not registered as %r: %s: %s", tracking.register_model,
                                           type(exc).__name__, exc)


def export_check(model: nn.Module, example: torch.Tensor, name: str) -> str | None:
    import logging

    problem = export_problem(model, example)
    if problem:
        logging.getLogger("kdlab").warning("%s cannot be exported with torch.export (%s); it will be logged in "
                                           "MLflow's pickle format instead of pt2", name, problem)
    return problem


def run_tags(loaded: LoadedConfig, options: RunOptions, teacher: Teacher | None, session: Session,
             params: dict[str, Any] | None = None) -> dict[str, str]:
    """A student run's MLflow tags: role, version, seed, loss, config file and its git commit, plugins, teacher
    link, trial, and its description (one line: student, teacher, loss, searched params)."""
    cfg = loaded.config
    tags = {"kdlab.role": options.role, "kdlab.version": __version__, "kdlab.seed": str(cfg.training.seed),
            "kdlab.loss": cfg.loss.name, "kdlab.config_file": loaded.name, **source_tags(loaded)}
    for kind, comp in loaded.components.items():
        tags[f"kdlab.plugin.{kind}"] = f"{comp.plugin} {comp.distribution or ''} {comp.version or ''}".strip()
    tracker = session.tracker(loaded)
    teacher_link = None
    if teacher is not None:
        tags["kdlab.teacher_fingerprint"] = teacher.fingerprint
        tags["kdlab.teacher_source"] = teacher.source
        if teacher.warning:
            tags["kdlab.teacher_warning"] = teacher.warning[:5000]
        if teacher.run_id:
            tags["kdlab.teacher_run_id"] = teacher.run_id
            if tracker is not None:
                teacher_link = tracker.run_url(teacher.run_id)
    if options.trial_number is not None:
        tags["kdlab.trial_number"] = str(options.trial_number)
    study = options.tags.get("kdlab.study")
    study_link = tracker.run_url(options.parent_run_id) if tracker is not None and options.parent_run_id else None
    tags[NOTE] = run_description(loaded, options.role, flat=params if params is not None else run_params(loaded),
                                 teacher_link=teacher_link, study=study, study_link=study_link,
                                 trial_number=options.trial_number)
    if tracker is not None and options.role == "student":
        tracker.describe_experiment(f"kdlab runs on `{cfg.data.name}`: one run per `kdlab run`, each linked to its "
                                    "teacher's run (tag `kdlab.teacher_run_id`).")
    tags.update(options.tags)
    return tags


def run_params(loaded: LoadedConfig) -> dict[str, Any]:
    """A run's MLflow params: its config flattened to the YAML's dotted keys (without study and tracking, and
    without the keys the config leaves unset)."""
    skip = ("study", "compare", "tracking")
    flat = flatten({k: v for k, v in loaded.config.resolved_dict().items() if k not in skip})
    return {k: v for k, v in flat.items() if v is not None}


