"""One distillation run: data, teacher (trained once, or loaded), cached teacher outputs, student training,
evaluation and MLflow tracking. Studies call :func:`run` once per trial with a shared :class:`Session`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import nn

from kdlab import __version__
from kdlab.config import LoadedConfig, dump_yaml, flatten
from kdlab.errors import KdlabError
from kdlab.multiteacher import teacher_builder
from kdlab.plugins import get_plugins
from kdlab.teacher import (
    Teacher, build_model, cached_teacher, data_fingerprint, load_from_mlflow, load_state_dict_file, load_weights,
    resolved_teacher_yaml, store_teacher, teacher_fingerprint, teacher_outputs, _checkpoint_path,
)
from kdlab.training import (
    FitResult, TrainSet, count_params, find_module, fit, predict, resolve_device, seed_everything,
)
from kdlab.types import UNLABELED, Data, Loss, LossSetup, RunInfo

#: final metric names (public interface)
FINAL_METRICS = ("test_accuracy", "val_accuracy", "teacher_test_accuracy", "teacher_val_accuracy",
                 "student_params", "teacher_params", "compression_ratio", "agreement", "train_time_s", "best_epoch")


class Reporter(Protocol):
    def stage(self, description: str, epochs: int) -> None: ...
    def epoch(self, epoch: int, metrics: dict[str, float]) -> None: ...
    def message(self, text: str) -> None: ...
    def done(self) -> None: ...


class NullReporter:
    def stage(self, description: str, epochs: int) -> None: ...
    def epoch(self, epoch: int, metrics: dict[str, float]) -> None: ...
    def message(self, text: str) -> None: ...
    def done(self) -> None: ...


@dataclass
class RunOptions:
    role: str = "student"
    tracker: Any = None  # kdlab.tracking.Tracker; None: made from the config (unless tracking.enabled is false)
    parent_run_id: str | None = None
    run_name: str | None = None
    trial_number: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    epoch_callbacks: list[Callable[[int, dict[str, float]], None]] = field(default_factory=list)
    reporter: Reporter = field(default_factory=NullReporter)
    log_model: bool | None = None  # None: tracking.log_model
    device: str | None = None  # overrides training.device (study workers)
    params: dict[str, Any] = field(default_factory=dict)  # extra MLflow params (e.g. trial_number)


@dataclass
class RunResult:
    metrics: dict[str, float]
    run_id: str | None
    student: nn.Module
    fit: FitResult | None
    teacher: Teacher | None = None


class Session:
    """Caches shared by the runs of one process: data, teachers and teacher outputs, by fingerprint."""

    def __init__(self) -> None:
        self.data: dict[str, Data] = {}
        self.teachers: dict[str, Teacher] = {}
        self.outputs: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self.trackers: dict[tuple[str | None, str], Any] = {}
        #: training rows (train + transfer, with the teacher's logits) on a device, built once and shared by trials
        self.train_sets: dict[tuple, TrainSet] = {}

    def get_data(self, loaded: LoadedConfig) -> Data:
        fp = data_fingerprint(loaded)
        if fp not in self.data:
            comp = loaded.components["data"]
            data = comp.build(loaded.params["data"], seed=loaded.config.data.seed)
            if not isinstance(data, Data):
                raise KdlabError(f"data {comp.name!r} from {comp.origin} returned {type(data).__name__}, expected kdlab.Data")
            self.data[fp] = data
        return self.data[fp]

    def tracker(self, loaded: LoadedConfig, experiment: str | None = None):
        from kdlab.tracking import Tracker

        cfg = loaded.config.tracking
        name = experiment or cfg.experiment or f"kdlab-{loaded.config.data.name}"
        key = (cfg.uri, name)
        if key not in self.trackers:
            self.trackers[key] = Tracker(cfg.uri, name)
        return self.trackers[key]


def default_experiment(loaded: LoadedConfig) -> str:
    return loaded.config.tracking.experiment or f"kdlab-{loaded.config.data.name}"


def build_loss(loaded: LoadedConfig) -> Loss:
    comp = loaded.components["loss"]
    loss = comp.build(loaded.params["loss"])
    if not isinstance(loss, Loss):
        raise KdlabError(f"loss {comp.name!r} from {comp.origin} returned {type(loss).__name__}, expected a kdlab.Loss")
    return loss


# ---------------------------------------------------------------------------------------------------------------
# Teacher
# ---------------------------------------------------------------------------------------------------------------


def get_teacher(loaded: LoadedConfig, data: Data, device: torch.device, session: Session, *,
                track: bool = True, reporter: Reporter | None = None) -> Teacher:
    """The configured teacher: from the session, the local cache, a checkpoint, an MLflow URI, or trained now."""
    cfg = loaded.config.teacher
    if cfg is None:
        raise KdlabError("this run needs a teacher: add a `teacher:` section")
    reporter = reporter or NullReporter()
    fp = teacher_fingerprint(loaded)
    if fp in session.teachers:
        return session.teachers[fp]
    comp, params = loaded.components["teacher"], loaded.params["teacher"]
    if cfg.checkpoint:
        model = build_model(comp, params, data)
        load_weights(model, load_state_dict_file(_checkpoint_path(cfg.checkpoint), "teacher.checkpoint"),
                     key="teacher.checkpoint", value=cfg.checkpoint)
        teacher = Teacher(model, fp, "checkpoint")
    elif cfg.mlflow_uri:
        try:
            model = build_model(comp, params, data)
        except KdlabError:
            model = None
        teacher = Teacher(load_from_mlflow(cfg.mlflow_uri, model, "teacher.mlflow_uri"), fp, "mlflow")
        if cfg.mlflow_uri.startswith("runs:/"):
            teacher.run_id = cfg.mlflow_uri.split("/")[1]
    elif (hit := cached_teacher(fp)) is not None:
        state, meta = hit
        model = build_model(comp, params, data)
        load_weights(model, state, key="teacher cache", value=fp)
        teacher = Teacher(model, fp, "cache", meta.get("run_id"), meta.get("metrics", {}))
        if track and loaded.config.tracking.enabled:
            teacher.run_id = _teacher_run_in_store(loaded, session, teacher, meta)
        reporter.message(f"teacher {cfg.name} reused from cache ({fp[:8]})")
    else:
        teacher = train_teacher(loaded, data, device, session, fp, track=track, reporter=reporter)
    teacher.model.to(device).eval()
    for p in teacher.model.parameters():
        p.requires_grad_(False)
    session.teachers[fp] = teacher
    return teacher


def train_teacher(loaded: LoadedConfig, data: Data, device: torch.device, session: Session, fp: str, *,
                  track: bool, reporter: Reporter) -> Teacher:
    """Train the teacher with cross-entropy on the labelled train split; log it as its own MLflow run."""
    cfg = loaded.config.teacher
    tcfg = cfg.training
    comp, params = loaded.components["teacher"], loaded.params["teacher"]
    seed_everything(tcfg.seed)
    model = build_model(comp, params, data).to(device)
    init_metrics = apply_init(cfg.init, model, "teacher")
    tracked = None
    if track and loaded.config.tracking.enabled:
        tracker = session.tracker(loaded)
        tracked = tracker.start(f"teacher-{cfg.name}-{fp[:8]}", tags={
            "kdlab.role": "teacher", "kdlab.teacher_fingerprint": fp, "kdlab.version": __version__,
        }, flush_every_s=loaded.config.tracking.flush_every_s)
        tracked.log_params(flatten({"data": loaded.config.data.model_dump(mode="json"),
                                    "teacher": cfg.model_dump(mode="json")}), defer=True)
    info = RunInfo(role="teacher", config=loaded.config, device=str(device), run_id=tracked.run_id if tracked else None)
    hook = get_plugins().hook
    hook.kdlab_run_start(run=info)
    reporter.stage(f"teacher {cfg.name}", tcfg.epochs)
    status, metrics = "FAILED", {}
    try:
        callbacks = [lambda e, m: reporter.epoch(e, m), lambda e, m: hook.kdlab_epoch_end(run=info, epoch=e, metrics=m)]
        if tracked:
            callbacks.insert(0, tracked.log_epoch)
        train = TrainSet(data.train.x.to(device), data.train.y.to(device))
        result = fit(model, _ce_loss().to(device), train, data.val.to(device), optimizer=tcfg.optimizer,
                     epochs=tcfg.epochs, batch_size=tcfg.batch_size, seed=tcfg.seed, device=device,
                     keep_best=loaded.config.training.keep_best, eval_batch_size=loaded.config.training.eval_batch_size,
                     on_epoch=callbacks)
        test_logits, _ = predict(model, data.test.x.to(device))
        val_logits, _ = predict(model, data.val.x.to(device))
        metrics = {
            "teacher_test_accuracy": _acc(test_logits, data.test.y.to(device)),
            "teacher_val_accuracy": _acc(val_logits, data.val.y.to(device)),
            "teacher_params": float(count_params(model)),
            "train_time_s": result.train_time_s,
            "best_epoch": float(result.best_epoch),
            **init_metrics,
        }
        path = store_teacher(fp, model, {"run_id": tracked.run_id if tracked else None, "metrics": metrics,
                                         "name": cfg.name, "params": cfg.params,
                                         "tracking_uri": tracked.tracker.uri if tracked else None})
        if tracked:
            # val_accuracy is not re-logged: its per-epoch series already holds it (at step best_epoch)
            tracked.log_metrics({**metrics, "test_accuracy": metrics["teacher_test_accuracy"]})
            tracked.log_text(resolved_teacher_yaml(loaded), "config.yaml")
            tracked.log_artifact(path, "teacher")
            if loaded.config.tracking.log_model:
                tracked.log_model(model, "teacher", data.train.x[:8].to(device))
                model.to(device)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        reporter.done()
        if tracked:
            tracked.end(status)
        hook.kdlab_run_end(run=info, metrics=metrics, status=status)
    return Teacher(model, fp, "trained", tracked.run_id if tracked else None, metrics)


def _teacher_run_in_store(loaded: LoadedConfig, session: Session, teacher: Teacher, meta: dict[str, Any]) -> str | None:
    """The cached teacher's run in the current tracking store. A teacher trained while tracking to another store
    gets a run here too (its params, metrics and weights; tag ``kdlab.teacher_source=cache``, no retraining), so that
    students' ``kdlab.teacher_run_id`` links resolve."""
    tracker = session.tracker(loaded)
    run_id = meta.get("run_id")
    if run_id and meta.get("tracking_uri") in (None, tracker.uri):
        try:
            tracker.client.get_run(run_id)
            return run_id
        except Exception:  # noqa: BLE001 - deleted, or from another store: record it here
            pass
    cfg = loaded.config.teacher
    tracked = tracker.start(f"teacher-{cfg.name}-{teacher.fingerprint[:8]}", tags={
        "kdlab.role": "teacher", "kdlab.teacher_fingerprint": teacher.fingerprint, "kdlab.version": __version__,
        "kdlab.teacher_source": "cache", **({"kdlab.original_run_id": run_id} if run_id else {})})
    tracked.log_params(flatten({"data": loaded.config.data.model_dump(mode="json"), "teacher": cfg.model_dump(mode="json")}))
    if teacher.metrics:
        tracked.log_metrics(teacher.metrics)
    from kdlab.teacher import teacher_cache_dir

    tracked.log_artifact(teacher_cache_dir() / teacher.fingerprint / "state_dict.pt", "teacher")
    tracked.log_text(resolved_teacher_yaml(loaded), "config.yaml")
    tracked.end("FINISHED")
    return tracked.run_id


def _acc(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


def _ce_loss() -> Loss:
    from kdlab.functional import masked_cross_entropy
    from kdlab.types import LossOutput

    class _CE(Loss):
        uses_teacher = False

        def forward(self, inputs):
            ce = masked_cross_entropy(inputs.student_logits, inputs.labels)
            return LossOutput(ce, {"ce": ce})

    return _CE()


# ---------------------------------------------------------------------------------------------------------------
# Student
# ---------------------------------------------------------------------------------------------------------------


def init_student(loaded: LoadedConfig, student: nn.Module) -> dict[str, Any]:
    """Transfer-learning initialisation: load a source model's weights, freeze the named modules."""
    return apply_init(loaded.config.student.init, student, "student")


def apply_init(init: Any, student: nn.Module, section: str) -> dict[str, Any]:
    """Load ``init``'s source weights into the model of config ``section`` (student or teacher), freeze modules."""
    if init is None:
        return {}
    if init.checkpoint:
        state = load_state_dict_file(_checkpoint_path(init.checkpoint), f"{section}.init.checkpoint")
        loaded_keys = load_weights(student, state, key=f"{section}.init.checkpoint", value=init.checkpoint,
                                   strict=init.strict)
    elif init.mlflow_uri:
        source = load_from_mlflow(init.mlflow_uri, None if not init.mlflow_uri.endswith((".pt", ".pth")) else student,
                                  f"{section}.init.mlflow_uri")
        if source is student:
            loaded_keys = list(student.state_dict())
        else:
            loaded_keys = load_weights(student, source.state_dict(), key=f"{section}.init.mlflow_uri",
                                       value=init.mlflow_uri, strict=init.strict)
    else:
        loaded_keys = []
    frozen = 0
    for path in init.freeze:
        module = find_module(student, path, key=f"{section}.init.freeze", owner=f"the {section}")
        for p in module.parameters():
            p.requires_grad_(False)
            frozen += p.numel()
    return {"init_loaded_tensors": float(len(loaded_keys)), "frozen_params": float(frozen)}


def run(loaded: LoadedConfig, options: RunOptions | None = None, session: Session | None = None) -> RunResult:
    """Distil the configured teacher into the configured student with the configured loss; track it."""
    options = options or RunOptions()
    session = session or Session()
    if loaded.config.continual is not None:
        from kdlab.continual import run_continual

        return run_continual(loaded, options, session)
    if loaded.config.assistant is not None:
        from kdlab.progressive import run_progressive

        return run_progressive(loaded, options, session)
    cfg = loaded.config
    tcfg = cfg.training
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    device = resolve_device(options.device or tcfg.device)
    reporter = options.reporter
    track = cfg.tracking.enabled
    data = session.get_data(loaded)
    loss = build_loss(loaded)
    if loss.uses_teacher and cfg.teacher is None:
        raise KdlabError(f"{loaded.name}: loss {cfg.loss.name!r} distils from a teacher: add a `teacher:` section")
    teacher = get_teacher(loaded, data, device, session, track=track, reporter=reporter) if cfg.teacher else None

    outputs = None
    if teacher is not None:
        key = (teacher.fingerprint, str(device))
        if key not in session.outputs:
            session.outputs[key] = teacher_outputs(teacher, data, device)
        outputs = session.outputs[key]

    seed_everything(tcfg.seed)
    comp, params = loaded.components["student"], loaded.params["student"]
    student = build_model(comp, params, data).to(device)
    extra_metrics = init_student(loaded, student)
    train = _shared_train_set(session, loaded, teacher, data, loss, outputs, device, tcfg.use_transfer)
    if loss.uses_teacher and not loss.live_teacher and loss.teacher_layers and teacher is not None:
        rows = torch.cat([data.train.x] + ([data.transfer.x] if _transfer_used(data, loss, outputs, tcfg.use_transfer) else []))
        _, feats = predict(teacher.model, rows.to(device), tcfg.eval_batch_size, tuple(loss.teacher_layers),
                           key="loss.params", owner="the teacher")
        train.teacher_features = feats
    loss.setup(LossSetup(
        student=student, teacher=teacher.model if teacher else None, input_shape=data.input_shape,
        num_classes=data.num_classes, device=device, build_model=_model_builder(data, device),
        student_config=cfg.student.model_dump(mode="json"), example_x=train.x[: min(len(train), 64)],
        build_teacher=teacher_builder(loaded, data, device, session, track=track, reporter=reporter),
        num_examples=len(train),
    ))
    loss.to(device)
    fit_model = torch.compile(student) if tcfg.compile else student

    tracked = _start_run(loaded, options, session, teacher) if track else None
    info = RunInfo(role=options.role, config=cfg, device=str(device), run_id=tracked.run_id if tracked else None,
                   trial_number=options.trial_number)
    hook = get_plugins().hook
    hook.kdlab_run_start(run=info)
    reporter.stage(f"{options.role} {cfg.student.name} ({cfg.loss.name})", tcfg.epochs)
    callbacks = []
    if tracked:
        callbacks.append(tracked.log_epoch)
    callbacks += [lambda e, m: reporter.epoch(e, m), lambda e, m: hook.kdlab_epoch_end(run=info, epoch=e, metrics=m)]
    callbacks += options.epoch_callbacks
    status, metrics = "FAILED", {}
    try:
        result = fit(fit_model, loss, train, data.val.to(device), optimizer=cfg.optimizer, epochs=tcfg.epochs,
                     batch_size=tcfg.batch_size, seed=tcfg.seed, device=device,
                     teacher=teacher.model if teacher else None, keep_best=tcfg.keep_best,
                     precision=tcfg.precision, eval_batch_size=tcfg.eval_batch_size, on_epoch=callbacks)
        metrics = evaluate(student, teacher, data, outputs, device, tcfg.eval_batch_size)
        metrics.update(extra_metrics)
        metrics["train_time_s"] = result.train_time_s
        metrics["best_epoch"] = float(result.best_epoch)
        if tracked:
            # Final metrics go at the last epoch's step. val_accuracy also has a per-epoch curve: its final value
            # (of the kept, best-epoch weights) is logged again only when it differs from the last epoch's, so that
            # the run's summary value in the MLflow table is the kept model's (the value a study optimises).
            last = result.history[-1]
            tracked.log_metrics({k: v for k, v in metrics.items() if k not in last or last[k] != v},
                                step=result.epochs_run)
            tracked.log_text(dump_yaml(cfg.resolved_dict()), "config.yaml")
            _log_state_dict(tracked, student, "student")
            log_model = cfg.tracking.log_model if options.log_model is None else options.log_model
            if log_model:
                tracked.log_model(student, "student", data.train.x[:8].to(device))
                student.to(device)
        status = "FINISHED"
        return RunResult(metrics, tracked.run_id if tracked else None, student, result, teacher)
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "TrialPruned" else "FAILED"
        if tracked:
            tracked.set_tags({"kdlab.status_reason": f"{type(exc).__name__}: {exc}"[:5000]})
            exc.kdlab_run_id = tracked.run_id  # lets a study tag the failed trial's run
        raise
    finally:
        reporter.done()
        if tracked:
            tracked.end(status)
        hook.kdlab_run_end(run=info, metrics=metrics, status=status)


def evaluate(student: nn.Module, teacher: Teacher | None, data: Data, outputs: dict[str, torch.Tensor] | None,
             device: torch.device, batch_size: int) -> dict[str, float]:
    test_y, val_y = data.test.y.to(device), data.val.y.to(device)
    test_logits, _ = predict(student, data.test.x.to(device), batch_size)
    val_logits, _ = predict(student, data.val.x.to(device), batch_size)
    m = {"test_accuracy": _acc(test_logits, test_y), "val_accuracy": _acc(val_logits, val_y),
         "student_params": float(count_params(student))}
    if teacher is not None and outputs is not None:
        t_params = float(count_params(teacher.model))
        m.update({
            "teacher_test_accuracy": _acc(outputs["test"], test_y),
            "teacher_val_accuracy": _acc(outputs["val"], val_y),
            "teacher_params": t_params,
            "compression_ratio": t_params / m["student_params"],
            "agreement": float((test_logits.argmax(1) == outputs["test"].argmax(1)).float().mean()),
        })
    return m


def _transfer_used(data: Data, loss: Loss, outputs: Any, use_transfer: bool) -> bool:
    return bool(use_transfer and data.transfer is not None and loss.uses_teacher
                and (outputs is not None or loss.live_teacher))


def _train_set(data: Data, loss: Loss, outputs: dict[str, torch.Tensor] | None, device: torch.device,
               use_transfer: bool) -> TrainSet:
    xs, ys, ts = [data.train.x], [data.train.y], [outputs["train"]] if outputs is not None else None
    if _transfer_used(data, loss, outputs, use_transfer):
        xs.append(data.transfer.x)
        ys.append(torch.full((len(data.transfer),), UNLABELED, dtype=torch.int64))
        if ts is not None:
            ts.append(outputs["transfer"])

    def joined(parts: list[torch.Tensor]) -> torch.Tensor:  # no copy when there is one part on the device already
        return (parts[0] if len(parts) == 1 else torch.cat(parts)).to(device)

    t = joined(ts) if (ts is not None and loss.uses_teacher) else None
    return TrainSet(joined(xs), joined(ys), t)


def _shared_train_set(session: Session, loaded: LoadedConfig, teacher: Teacher | None, data: Data, loss: Loss,
                      outputs: dict[str, torch.Tensor] | None, device: torch.device, use_transfer: bool) -> TrainSet:
    """The trial's training rows: built once per session (no copy of the data per trial), in a new
    :class:`TrainSet` each time (a run may attach teacher features to it)."""
    key = (data_fingerprint(loaded), teacher.fingerprint if teacher is not None and outputs is not None else None,
           str(device), _transfer_used(data, loss, outputs, use_transfer), loss.uses_teacher)
    if key not in session.train_sets:
        session.train_sets[key] = _train_set(data, loss, outputs, device, use_transfer)
    shared = session.train_sets[key]
    return TrainSet(shared.x, shared.y, shared.teacher_logits)


def _model_builder(data: Data, device: torch.device):
    def build(kind: str, name: str, params: dict[str, Any]) -> nn.Module:
        comp = get_plugins().registry.get(kind, name)
        return build_model(comp, comp.validate_params(params), data).to(device)

    return build


def _start_run(loaded: LoadedConfig, options: RunOptions, session: Session, teacher: Teacher | None):
    cfg = loaded.config
    tracker = options.tracker or session.tracker(loaded)
    name = options.run_name or cfg.tracking.run_name or f"{cfg.student.name}-{cfg.loss.name}-seed{cfg.training.seed}"
    plugins = get_plugins()
    tags = {"kdlab.role": options.role, "kdlab.version": __version__, "kdlab.seed": str(cfg.training.seed),
            "kdlab.loss": cfg.loss.name, "kdlab.config_file": loaded.name}
    for kind, comp in loaded.components.items():
        tags[f"kdlab.plugin.{kind}"] = f"{comp.plugin} {comp.distribution or ''} {comp.version or ''}".strip()
    if teacher is not None:
        tags["kdlab.teacher_fingerprint"] = teacher.fingerprint
        tags["kdlab.teacher_source"] = teacher.source
        if teacher.run_id:
            tags["kdlab.teacher_run_id"] = teacher.run_id
            tags["mlflow.note.content"] = f"Teacher run: [{teacher.run_id}]({tracker.run_url(teacher.run_id)})"
    if options.trial_number is not None:
        tags["kdlab.trial_number"] = str(options.trial_number)
    tags.update(options.tags)
    tracked = tracker.start(name, tags=tags, parent_run_id=options.parent_run_id,
                            flush_every_s=cfg.tracking.flush_every_s)
    flat = flatten({k: v for k, v in cfg.resolved_dict().items() if k not in ("study", "tracking")})
    tracked.log_params({**flat, **options.params}, defer=True)  # sent with the metrics: one transaction less
    del plugins
    return tracked


def _log_state_dict(tracked: Any, model: nn.Module, folder: str) -> None:
    """The weights as ``<folder>/state_dict.pt`` (cheap; loadable with weights_only, e.g. as a later teacher)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state_dict.pt"
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
        tracked.log_artifact(path, folder)
