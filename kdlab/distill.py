"""One distillation run: the data, the teacher (trained once, or loaded) and its cached outputs, the student
trained with the configured loss under one tracked lifecycle, evaluation, and the run's record in MLflow.

Run modes that chain or schedule several runs (a teacher assistant, continual learning) are composed above this
in :mod:`kdlab.modes`; a study calls :func:`kdlab.modes.run` once per trial with a shared :class:`Session`."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from kdlab import batch
from kdlab.augment import Augment
from kdlab.config import LoadedConfig, dump_yaml
from kdlab.contracts import Part, watch
from kdlab.costs import LATENCY_BATCH, compression, model_costs
from kdlab.errors import KdlabError, PluginError
from kdlab.lifecycle import LiveRun, RunOptions, tracked_run
from kdlab.loading import Concat, Rows, Views, eval_batches, head
from kdlab.models import apply_init, build_model, model_builder
from kdlab.provenance import dataset_record, log_dataset
from kdlab.rescue import Unrecorded
from kdlab.run_record import REGISTERED, export_check, register, run_params, run_tags
from kdlab.session import Session, data_fingerprint
from kdlab.teachers import Teacher, get_teacher, teacher_builder
from kdlab.teachers.outputs import outputs_for_run, run_augment, views_for_run
from kdlab.training import (
    FitResult,
    TrainSet,
    accuracy_of,
    count_params,
    fit,
    predict_batches,
    predict_split,
    resolve_device,
    seed_everything,
)
from kdlab.types import UNLABELED, Data, Loss, LossSetup, RunInfo


@dataclass
class RunResult:
    metrics: dict[str, float]
    run_id: str | None
    student: nn.Module
    fit: FitResult | None
    teacher: Teacher | None = None


def build_loss(loaded: LoadedConfig) -> Loss:
    comp = loaded.components["loss"]
    loss = comp.build(loaded.params["loss"])
    if not isinstance(loss, Loss):
        raise PluginError(f"loss {comp.name!r} from {comp.origin} returned {type(loss).__name__}, expected a "
                          "kdlab.Loss")
    return loss


@dataclass
class Prepared:
    """A student run made ready to train: everything :func:`distil` builds before the first step (data, teacher and
    its outputs, the seeded student, the loss after its setup, the shared training rows) and what its MLflow run will
    record. A stacked study (:mod:`kdlab.study.stacked`) prepares each member as a lone run would, then trains the
    members together."""

    loaded: LoadedConfig
    options: RunOptions
    session: Session
    device: torch.device
    data: Data
    loss: Loss
    teacher: Teacher | None
    outputs: dict[str, torch.Tensor] | None
    augment: Augment | None
    views: Views | None
    student: nn.Module
    train: TrainSet
    parts: list[Part]
    info: RunInfo
    tracker: Any
    log_model: bool
    export_problem: str | None
    params: dict[str, Any]
    extra_metrics: dict[str, float]

    @property
    def cfg(self):
        return self.loaded.config


def prepare(loaded: LoadedConfig, options: RunOptions | None = None, session: Session | None = None,
            loss: Loss | None = None) -> Prepared:
    """Everything a student run builds before training (see :class:`Prepared`); nothing is recorded yet. ``loss``:
    the run's loss built already (by :func:`build_loss`, not set up yet), as a stacked study builds it to decide
    whether the trial can stack."""
    options = options or RunOptions()
    session = session or Session()
    cfg = loaded.config
    tcfg = cfg.training
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    device = resolve_device(options.device or tcfg.device)
    track = cfg.tracking.enabled
    data = session.get_data(loaded)
    loss = loss if loss is not None else build_loss(loaded)
    if loss.uses_teacher and cfg.teacher is None:
        raise KdlabError(f"{loaded.name}: loss {cfg.loss.name!r} distils from a teacher: add a `teacher:` section")
    teacher = get_teacher(loaded, data, device, session, track=track) if cfg.teacher else None
    augment = run_augment(loaded, data)
    randomly = augment is not None and augment.random
    if augment is not None:
        _check_augment(augment, loss, cfg.loss.name, data)
    outputs = outputs_for_run(loaded, teacher, data, device, session) if teacher is not None else None
    views = None
    if teacher is not None and randomly and cfg.teacher.mode == "views" and loss.uses_teacher and not loss.live_teacher:
        if loss.teacher_layers:
            raise KdlabError(f"{loaded.name}: teacher.mode: views stores the teacher's logits only, and loss "
                             f"{cfg.loss.name!r} reads teacher features: use teacher.mode: live")
        views = Views(views_for_run(loaded, teacher, data, device, session,
                                    use_transfer=_transfer_used(data, loss, True, tcfg.use_transfer)), seed=tcfg.seed)
    # the teacher's outputs for the training rows: cached over the fixed rows, or (under random augmentation)
    # replayed views or the live teacher
    row_outputs = None if randomly else outputs
    has_rows = row_outputs is not None or (teacher is not None and randomly)

    seed_everything(tcfg.seed)
    student = build_model(loaded.components["student"], loaded.params["student"], data).to(device)
    extra_metrics = apply_init(cfg.student.init, student, "student", cfg.tracking.uri)
    if tcfg.channels_last:
        student.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher.model.to(memory_format=torch.channels_last)
    train = _shared_train_set(session, loaded, teacher, data, loss, row_outputs, device,
                              _transfer_used(data, loss, has_rows, tcfg.use_transfer))
    if (loss.uses_teacher and not loss.live_teacher and loss.teacher_layers and teacher is not None
            and train.teacher_logits is not None and not train.streamed):
        _, feats = predict_batches(teacher.model, eval_batches(train.x, tcfg.eval_batch_size, device, augment=augment),
                                   tuple(loss.teacher_layers), key="loss.params", owner="the teacher")
        train.teacher_features = feats
    example = batch.to(head(train.x, 64), device)
    parts = [Part(student, "student", loaded.components["student"]), Part(loss, "loss", loaded.components["loss"])]
    if teacher is not None:
        parts.append(Part(teacher.model, "teacher", teacher.component))
    with watch(parts, data.num_classes, check_first_call=False):
        loss.setup(LossSetup(
            student=student, teacher=teacher.model if teacher else None, input_shape=data.input_shape,
            num_classes=data.num_classes, device=device, build_model=model_builder(loaded.registry, data, device),
            student_config=cfg.student.model_dump(mode="json"),
            example_x=augment.eval(example) if augment is not None else example,
            build_teacher=teacher_builder(loaded, data, device, session, track=track), num_examples=len(train),
        ))
    loss.to(device)

    name = options.run_name or cfg.tracking.run_name or f"{cfg.student.name}-{cfg.loss.name}-seed{tcfg.seed}"
    info = RunInfo(role=options.role, config=cfg, device=str(device), trial_number=options.trial_number, name=name,
                   epochs=tcfg.epochs)
    tracker = session.tracker(loaded) if track else None
    log_model = bool(tracker) and (cfg.tracking.log_model if options.log_model is None else options.log_model)
    # checked before training, so that a model torch.export cannot export is logged another way, not lost
    export_problem = export_check(student, head(train.x, 8), cfg.student.name) if log_model else None
    return Prepared(loaded, options, session, device, data, loss, teacher, outputs, augment, views, student, train,
                    parts, info, tracker, log_model, export_problem, {**run_params(loaded), **options.params},
                    extra_metrics)


@contextlib.contextmanager
def opened(prep: Prepared) -> Iterator[LiveRun]:
    """The prepared run's tracked lifecycle (:func:`kdlab.lifecycle.tracked_run`, under :class:`Unrecorded`, with its
    dataset logged): what the run's training and :func:`finish` happen inside."""
    loaded, options = prep.loaded, prep.options
    keep = Unrecorded(prep.info.name, loaded.config.resolved_dict())
    tags = run_tags(loaded, options, prep.teacher, prep.session, prep.params)
    with keep, tracked_run(prep.info, tracker=prep.tracker, tags=tags, params=prep.params,
                           parent_run_id=options.parent_run_id,
                           observers=[*prep.session.observers, *options.observers],
                           flush_every_s=loaded.config.tracking.flush_every_s) as live:
        keep.watch(live, prep.student)
        if live.tracked:
            dataset = dataset_record(loaded, prep.data, data_fingerprint(loaded))
            log_dataset(live.tracked, dataset)
            live.dataset = dataset.key
        yield live


def finish(prep: Prepared, live: LiveRun, result: FitResult) -> dict[str, float]:
    """The trained student's final metrics (evaluated, recorded at the run's last epoch) and its artifacts."""
    cfg, tcfg = prep.cfg, prep.cfg.training
    metrics = evaluate(prep.student, prep.teacher, prep.data, prep.outputs, prep.device, tcfg.eval_batch_size,
                       augment=prep.augment, loader=cfg.data.loader, channels_last=tcfg.channels_last)
    metrics.update(prep.extra_metrics)
    metrics.update(best_epoch_metrics(result))
    metrics["train_time_s"] = result.train_time_s
    live.finish(metrics, step=result.epochs_run)  # recorded even if an artifact below fails
    if live.tracked:
        live.tracked.log_text(dump_yaml(cfg.resolved_dict()), "config.yaml")
        live.tracked.log_state_dict(prep.student, "student")
        if prep.log_model:
            live.model_id = live.tracked.log_model_or_warn(prep.student, "student", head(prep.data.train.x, 8),
                                                           export_problem=prep.export_problem)
    return metrics


def registered(prep: Prepared, live: LiveRun, metrics: dict[str, float]) -> None:
    """Register the run's logged student where ``tracking.register_model`` asks for it (after the run ended)."""
    cfg = prep.cfg
    if live.model_id and cfg.tracking.register_model and prep.options.role == "student":
        register(prep.tracker, cfg.tracking, live.model_id, prep.info.run_id,
                 f"run {prep.info.name} ({prep.loaded.name})",
                 {"kdlab.config_file": prep.loaded.name, **{f"metric.{k}": metrics[k] for k in REGISTERED
                                                             if k in metrics}})


def distil(loaded: LoadedConfig, options: RunOptions | None = None, session: Session | None = None) -> RunResult:
    """Distil the configured teacher into the configured student with the configured loss; track it."""
    prep = prepare(loaded, options, session)
    cfg, tcfg = prep.cfg, prep.cfg.training
    fit_model = torch.compile(prep.student) if tcfg.compile else prep.student
    with opened(prep) as live:
        with watch(prep.parts, prep.data.num_classes, check_first_call=not tcfg.compile):  # first batch's contracts
            result = fit(fit_model, prep.loss, prep.train, prep.data.val.to(prep.device), optimizer=cfg.optimizer,
                         epochs=tcfg.epochs, batch_size=tcfg.batch_size, seed=tcfg.seed, device=prep.device,
                         teacher=prep.teacher.model if prep.teacher else None, keep_best=tcfg.keep_best,
                         precision=tcfg.precision, eval_batch_size=tcfg.eval_batch_size, on_epoch=live.epoch,
                         augment=prep.augment, views=prep.views, loader=cfg.data.loader,
                         channels_last=tcfg.channels_last)
            metrics = finish(prep, live, result)
    registered(prep, live, metrics)
    return RunResult(metrics, prep.info.run_id, prep.student, result, prep.teacher)


def best_epoch_metrics(result: FitResult) -> dict[str, float]:
    """``best_epoch``, ``best_val_accuracy`` and ``best_val_loss`` of a training run."""
    out = {"best_epoch": float(result.best_epoch), "best_val_accuracy": result.best_val_accuracy}
    if 0 < result.best_epoch <= len(result.history):
        out["best_val_loss"] = result.history[result.best_epoch - 1]["val_loss"]
    return out


def evaluate(student: nn.Module, teacher: Teacher | None, data: Data, outputs: dict[str, torch.Tensor] | None,
             device: torch.device, batch_size: int, *, augment: Augment | None = None,
             **inputs: Any) -> dict[str, float]:
    """The student's final metrics (``kdlab.metrics.FINAL`` and ``COSTS``) on the validation and test splits
    (``augment``'s deterministic ops applied; ``inputs``: the other keywords of
    :func:`kdlab.training.predict_split`, the loader and channels-last)."""
    test_y, val_y = data.test.y.to(device), data.val.y.to(device)
    test_logits = predict_split(student, data.test.x, device, batch_size, augment=augment, **inputs)
    val_logits = predict_split(student, data.val.x, device, batch_size, augment=augment, **inputs)
    m = {"test_accuracy": accuracy_of(test_logits, test_y), "val_accuracy": accuracy_of(val_logits, val_y),
         "val_loss": float(F.cross_entropy(val_logits, val_y)), "student_params": float(count_params(student))}
    example = batch.to(head(data.val.x, LATENCY_BATCH), device)
    if augment is not None:
        example = augment.eval(example)
    m.update(model_costs(student, example, "student"))
    if teacher is not None and outputs is not None:
        t_params = float(count_params(teacher.model))
        if str(device) not in teacher.costs:  # measured once per teacher and device
            teacher.costs[str(device)] = model_costs(teacher.model, example, "teacher")
        m.update({
            "teacher_test_accuracy": accuracy_of(outputs["test"], test_y),
            "teacher_val_accuracy": accuracy_of(outputs["val"], val_y),
            "teacher_params": t_params,
            "compression_ratio": t_params / m["student_params"],
            "agreement": accuracy_of(test_logits, outputs["test"].argmax(1)),
            **teacher.costs[str(device)],
        })
        m.update(compression(m, m))
    return m


def _check_augment(augment: Augment, loss: Loss, loss_name: str, data: Data) -> None:
    augment.check(head(data.train.x, 2))
    if augment.mixes and not loss.uses_soft_labels:
        raise KdlabError(f"data.augment: mixup/cutmix give soft labels, and loss {loss_name!r} does not read "
                         "kdlab.LossInputs.soft_labels (it would learn the unmixed labels): drop the op or use a loss "
                         "that reads them (docs/images.md)")


def _transfer_used(data: Data, loss: Loss, teacher_rows: bool, use_transfer: bool) -> bool:
    """Whether the transfer rows train: they are used only through the teacher's outputs (``teacher_rows``: cached,
    replayed or live)."""
    return bool(use_transfer and data.transfer is not None and loss.uses_teacher
                and (teacher_rows or loss.live_teacher))


def _train_set(data: Data, loss: Loss, outputs: dict[str, torch.Tensor] | None, device: torch.device,
               transfer: bool) -> TrainSet:
    xs, ys, ts = [data.train.x], [data.train.y], [outputs["train"]] if outputs is not None else None
    if transfer:
        xs.append(data.transfer.x)
        ys.append(torch.full((len(data.transfer),), UNLABELED, dtype=torch.int64))
        if ts is not None:
            ts.append(outputs["transfer"])
    if data.streamed:  # rows read lazily; labels and the teacher's (memory-mapped) logits stay on the CPU
        t = (ts[0] if len(ts) == 1 else Concat(ts)) if (ts is not None and loss.uses_teacher) else None
        return TrainSet(Rows(xs), torch.cat([y.cpu() for y in ys]), t)

    def joined(parts: list[Any]) -> Any:  # no copy when there is one part on the device already
        return batch.to(batch.cat(parts), device)

    t = joined(ts) if (ts is not None and loss.uses_teacher) else None
    return TrainSet(joined(xs), joined(ys), t)


def _shared_train_set(session: Session, loaded: LoadedConfig, teacher: Teacher | None, data: Data, loss: Loss,
                      outputs: dict[str, torch.Tensor] | None, device: torch.device, transfer: bool) -> TrainSet:
    """The run's training rows: built once per session (no copy of the data per trial), in a new
    :class:`TrainSet` each time (a run may attach teacher features to it)."""
    key = (data_fingerprint(loaded), teacher.fingerprint if teacher is not None and outputs is not None else None,
           str(device), transfer, loss.uses_teacher)
    if key not in session.train_sets:
        session.train_sets[key] = _train_set(data, loss, outputs, device, transfer)
    shared = session.train_sets[key]
    teacher_logits = shared.teacher_logits
    if shared.streamed and loss.teacher_layers:
        teacher_logits = None  # teacher features over streamed rows are not cached: the teacher runs live
    return TrainSet(shared.x, shared.y, teacher_logits)
