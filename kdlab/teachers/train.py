"""Training a teacher with cross-entropy on the labelled train split, as a tracked run of its own (role
``teacher``), and recording a cached teacher in a tracking store that has no run of it yet."""

from __future__ import annotations

import logging
from typing import Any

import torch

from kdlab import __version__, batch
from kdlab.augment import Augment
from kdlab.config import LoadedConfig, dump_yaml, flatten
from kdlab.contracts import Part, watch
from kdlab.costs import LATENCY_BATCH, model_costs
from kdlab.exporting import export_problem
from kdlab.functional import masked_cross_entropy
from kdlab.lifecycle import tracked_run
from kdlab.loading import Rows, head
from kdlab.models import apply_init, build_model
from kdlab.provenance import dataset_record, log_dataset, source_tags, teacher_description
from kdlab.rescue import Unrecorded
from kdlab.session import Session, data_fingerprint
from kdlab.teachers.cache import store_teacher, teacher_cache_dir
from kdlab.tracking import NOTE
from kdlab.training import TrainSet, accuracy_of, count_params, fit, predict_split, seed_everything
from kdlab.types import Data, Loss, LossInputs, LossOutput, RunInfo

log = logging.getLogger("kdlab")


class _LabelsOnly(Loss):
    """Cross-entropy on the labels: how a teacher is trained (no plugin needed for it)."""

    uses_teacher = False
    uses_soft_labels = True

    def forward(self, inputs: LossInputs) -> LossOutput:
        ce = masked_cross_entropy(inputs.student_logits, inputs.labels, soft_labels=inputs.soft_labels)
        return LossOutput(ce, {"ce": ce})


def teacher_params(loaded: LoadedConfig) -> dict[str, Any]:
    """The config sections that define a teacher (its MLflow params and ``config.yaml``)."""
    cfg = loaded.config
    return {"data": cfg.data.model_dump(mode="json"), "teacher": cfg.teacher.model_dump(mode="json")}


def train_teacher(loaded: LoadedConfig, data: Data, device: torch.device, session: Session, fp: str, *,
                  track: bool) -> tuple[torch.nn.Module, str | None, dict[str, float]]:
    """Train the configured teacher; cache its weights under ``fp`` once its run is recorded. Returns the model, its
    MLflow run id (or ``None``) and its metrics.

    The teacher is trained under ``data.augment`` (unless ``teacher.training.augment`` is false; its deterministic
    ops always apply), with the run's speed switches (``training.precision``, ``channels_last``) and loader."""
    cfg = loaded.config.teacher
    tcfg = cfg.training
    run = loaded.config.training
    comp, params = loaded.components["teacher"], loaded.params["teacher"]
    seed_everything(tcfg.seed)
    model = build_model(comp, params, data).to(device)
    if run.channels_last:
        model.to(memory_format=torch.channels_last)
    ops = loaded.config.data.augment
    if ops and not tcfg.augment:
        ops = [op for op in ops if op.op == "normalize"]
    augment = Augment(ops, data.num_classes) if ops else None
    if augment is not None:
        augment.check(head(data.train.x, 2))
    evaluation = {"augment": augment, "loader": loaded.config.data.loader, "channels_last": run.channels_last}
    init_metrics = apply_init(cfg.init, model, "teacher", loaded.config.tracking.uri)
    ce = _LabelsOnly().to(device)
    info = RunInfo(role="teacher", config=loaded.config, device=str(device), name=f"teacher-{cfg.name}-{fp[:8]}",
                   epochs=tcfg.epochs)
    tracker = session.tracker(loaded) if track else None
    log_model = bool(tracker) and loaded.config.tracking.log_model
    problem = export_problem(model, head(data.train.x, 8)) if log_model else None
    if problem:
        log.warning("teacher %s cannot be exported with torch.export (%s); it will be logged in MLflow's pickle "
                    "format instead of pt2", cfg.name, problem)
    keep = Unrecorded(info.name, teacher_params(loaded))
    with keep, tracked_run(info, tracker=tracker, tags=teacher_tags(loaded, fp), params=teacher_run_params(loaded),
                           observers=session.observers, flush_every_s=loaded.config.tracking.flush_every_s) as live:
        keep.watch(live, model)
        if live.tracked:
            dataset = dataset_record(loaded, data, data_fingerprint(loaded))
            log_dataset(live.tracked, dataset)
            live.dataset = dataset.key
        if data.train.streamed:
            train = TrainSet(Rows([data.train.x]), data.train.y)
        else:
            train = TrainSet(batch.to(data.train.x, device), data.train.y.to(device))
        with watch([Part(model, "teacher", comp), Part(ce, "loss")], data.num_classes):
            result = fit(model, ce, train, data.val.to(device), optimizer=tcfg.optimizer, epochs=tcfg.epochs,
                         batch_size=tcfg.batch_size, seed=tcfg.seed, device=device, keep_best=run.keep_best,
                         eval_batch_size=run.eval_batch_size, on_epoch=live.epoch, precision=run.precision,
                         **evaluation)
            test_logits = predict_split(model, data.test.x, device, run.eval_batch_size, **evaluation)
            val_logits = predict_split(model, data.val.x, device, run.eval_batch_size, **evaluation)
        metrics = {
            "teacher_test_accuracy": accuracy_of(test_logits, data.test.y.to(device)),
            "teacher_val_accuracy": accuracy_of(val_logits, data.val.y.to(device)),
            "teacher_params": float(count_params(model)),
            "train_time_s": result.train_time_s,
            "best_epoch": float(result.best_epoch),
            "best_val_accuracy": result.best_val_accuracy,
            **init_metrics,
        }
        if 0 < result.best_epoch <= len(result.history):
            metrics["best_val_loss"] = result.history[result.best_epoch - 1]["val_loss"]
        example = batch.to(head(data.val.x, LATENCY_BATCH), device)
        metrics.update(model_costs(model, augment.eval(example) if augment is not None else example, "teacher"))
        live.finish({**metrics, "test_accuracy": metrics["teacher_test_accuracy"]}, step=result.epochs_run)
        tracked = live.tracked
        meta = {"run_id": info.run_id, "metrics": metrics, "name": cfg.name, "params": cfg.params,
                "tracking_uri": tracked.tracker.uri if tracked else None}
        if tracked:
            tracked.log_text(dump_yaml(teacher_params(loaded)), "config.yaml")
            tracked.log_state_dict(model, "teacher")
            if log_model:
                live.model_id = tracked.log_model_or_warn(model, "teacher", head(data.train.x, 8),
                                                          export_problem=problem)
    # cached only now that its run has ended FINISHED: a teacher whose record failed is never reused, and no
    # student links to a FAILED teacher run
    store_teacher(fp, model, meta)
    return model, info.run_id, metrics


def teacher_tags(loaded: LoadedConfig, fp: str, **extra: str) -> dict[str, str]:
    """A teacher run's tags: role, fingerprint, version, source file and commit, and its description."""
    return {"kdlab.role": "teacher", "kdlab.teacher_fingerprint": fp, "kdlab.version": __version__,
            **source_tags(loaded), NOTE: teacher_description(loaded), **extra}


def teacher_run_params(loaded: LoadedConfig) -> dict[str, Any]:
    """A teacher run's params: the sections that define it, flattened, without unset keys."""
    return {k: v for k, v in flatten(teacher_params(loaded)).items() if v is not None}


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
    tracked = tracker.start(f"teacher-{cfg.name}-{fp[:8]}", tags=teacher_tags(
        loaded, fp, **{"kdlab.teacher_source": "cache", **({"kdlab.original_run_id": run_id} if run_id else {})}))
    tracked.log_params(teacher_run_params(loaded))
    if meta.get("metrics"):
        tracked.log_metrics(meta["metrics"], step=cfg.training.epochs)  # as a trained teacher's: at its last epoch
    tracked.log_artifact(teacher_cache_dir() / fp / "state_dict.pt", "teacher")
    tracked.log_text(dump_yaml(teacher_params(loaded)), "config.yaml")
    tracked.end("FINISHED")
    return tracked.run_id
