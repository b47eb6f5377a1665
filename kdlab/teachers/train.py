"""Training a teacher with cross-entropy on the labelled train split, as a tracked run of its own (role
``teacher``), and recording a cached teacher in a tracking store that has no run of it yet."""

from __future__ import annotations

from typing import Any

import torch

from kdlab import __version__, batch
from kdlab.config import LoadedConfig, dump_yaml, flatten
from kdlab.contracts import Part, watch
from kdlab.functional import accuracy, masked_cross_entropy
from kdlab.lifecycle import tracked_run
from kdlab.models import apply_init, build_model
from kdlab.rescue import Unrecorded
from kdlab.session import Session
from kdlab.teachers.cache import store_teacher, teacher_cache_dir
from kdlab.training import TrainSet, count_params, fit, predict, seed_everything
from kdlab.types import Data, Loss, LossInputs, LossOutput, RunInfo


class _LabelsOnly(Loss):
    """Cross-entropy on the labels: how a teacher is trained (no plugin needed for it)."""

    uses_teacher = False

    def forward(self, inputs: LossInputs) -> LossOutput:
        ce = masked_cross_entropy(inputs.student_logits, inputs.labels)
        return LossOutput(ce, {"ce": ce})


def teacher_params(loaded: LoadedConfig) -> dict[str, Any]:
    """The config sections that define a teacher (its MLflow params and ``config.yaml``)."""
    cfg = loaded.config
    return {"data": cfg.data.model_dump(mode="json"), "teacher": cfg.teacher.model_dump(mode="json")}


def train_teacher(loaded: LoadedConfig, data: Data, device: torch.device, session: Session, fp: str, *,
                  track: bool) -> tuple[torch.nn.Module, str | None, dict[str, float]]:
    """Train the configured teacher; cache its weights under ``fp`` once its run is recorded. Returns the model, its
    MLflow run id (or ``None``) and its metrics."""
    cfg = loaded.config.teacher
    tcfg = cfg.training
    comp, params = loaded.components["teacher"], loaded.params["teacher"]
    seed_everything(tcfg.seed)
    model = build_model(comp, params, data).to(device)
    init_metrics = apply_init(cfg.init, model, "teacher", loaded.config.tracking.uri)
    ce = _LabelsOnly().to(device)
    info = RunInfo(role="teacher", config=loaded.config, device=str(device), name=f"teacher-{cfg.name}-{fp[:8]}",
                   epochs=tcfg.epochs)
    tags = {"kdlab.role": "teacher", "kdlab.teacher_fingerprint": fp, "kdlab.version": __version__}
    keep = Unrecorded(info.name, teacher_params(loaded))
    with keep, tracked_run(info, tracker=session.tracker(loaded) if track else None, tags=tags,
                           params=flatten(teacher_params(loaded)), observers=session.observers,
                           flush_every_s=loaded.config.tracking.flush_every_s) as live:
        keep.watch(live, model)
        train = TrainSet(batch.to(data.train.x, device), data.train.y.to(device))
        with watch([Part(model, "teacher", comp), Part(ce, "loss")], data.num_classes):
            result = fit(model, ce, train, data.val.to(device), optimizer=tcfg.optimizer, epochs=tcfg.epochs,
                         batch_size=tcfg.batch_size, seed=tcfg.seed, device=device,
                         keep_best=loaded.config.training.keep_best,
                         eval_batch_size=loaded.config.training.eval_batch_size, on_epoch=live.epoch)
            test_logits, _ = predict(model, batch.to(data.test.x, device))
            val_logits, _ = predict(model, batch.to(data.val.x, device))
        metrics = {
            "teacher_test_accuracy": float(accuracy(test_logits, data.test.y.to(device))),
            "teacher_val_accuracy": float(accuracy(val_logits, data.val.y.to(device))),
            "teacher_params": float(count_params(model)),
            "train_time_s": result.train_time_s,
            "best_epoch": float(result.best_epoch),
            **init_metrics,
        }
        live.finish({**metrics, "test_accuracy": metrics["teacher_test_accuracy"]}, step=result.epochs_run)
        tracked = live.tracked
        meta = {"run_id": info.run_id, "metrics": metrics, "name": cfg.name, "params": cfg.params,
                "tracking_uri": tracked.tracker.uri if tracked else None}
        if tracked:
            tracked.log_text(dump_yaml(teacher_params(loaded)), "config.yaml")
            tracked.log_state_dict(model, "teacher")
            if loaded.config.tracking.log_model:
                tracked.log_model(model, "teacher", batch.index(data.train.x, slice(0, 8)))
                model.to(device)
    # cached only now that its run has ended FINISHED: a teacher whose record failed is never reused, and no
    # student links to a FAILED teacher run
    store_teacher(fp, model, meta)
    return model, info.run_id, metrics


def record_cached_teacher(loaded: LoadedConfig, session: Session, fp: str, meta: dict[str, Any]) -> str | None:
    """The cached teacher's run in the current tracking store. A teacher trained while tracking to another store
    gets a run here too (its params, metrics and weights; tag ``kdlab.teacher_source=cache``, no retraining), so that
    students' ``kdlab.teacher_run_id`` links resolve."""
    tracker = session.tracker(loaded)
    if tracker is None:
        return None
    run_id = meta.get("run_id")
    if run_id and meta.get("tracking_uri") in (None, tracker.uri):
        found = tracker.run_info(run_id)
        if found is not None and found.info.status == "FINISHED":
            return run_id
    cfg = loaded.config.teacher
    tracked = tracker.start(f"teacher-{cfg.name}-{fp[:8]}", tags={
        "kdlab.role": "teacher", "kdlab.teacher_fingerprint": fp, "kdlab.version": __version__,
        "kdlab.teacher_source": "cache", **({"kdlab.original_run_id": run_id} if run_id else {})})
    tracked.log_params(flatten(teacher_params(loaded)))
    if meta.get("metrics"):
        tracked.log_metrics(meta["metrics"])
    tracked.log_artifact(teacher_cache_dir() / fp / "state_dict.pt", "teacher")
    tracked.log_text(dump_yaml(teacher_params(loaded)), "config.yaml")
    tracked.end("FINISHED")
    return tracked.run_id
