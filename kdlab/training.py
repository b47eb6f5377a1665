"""The training loop shared by teachers and students.

Small data lives on the run's device; an epoch is one permutation gather and contiguous slices (no DataLoader);
streamed data comes through a DataLoader in the same batches (:mod:`kdlab.loading`). Per-step loss terms
accumulate on the device and are read once per epoch (no host sync per step).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab import batch
from kdlab.augment import Augment
from kdlab.batch import Inputs
from kdlab.capture import FeatureCapture
from kdlab.config import LoaderConfig, OptimizerConfig
from kdlab.errors import KdlabError, NonFiniteLoss
from kdlab.functional import count_correct
from kdlab.loading import Evaluation, MemoryFeed, StreamFeed, Views, num_rows, streamed
from kdlab.types import Loss, LossInputs, Split

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainSet:
    """Training rows: inputs (tensors on the device, or a streamed :class:`kdlab.loading.Rows`), labels (-1 =
    unlabeled) and, when cached, the teacher's outputs (indexable by row: a tensor, or for streamed rows a
    memory-mapped float16 tensor or :class:`kdlab.loading.Concat` on the CPU)."""

    x: Inputs | Any
    y: Tensor
    teacher_logits: Tensor | Any | None = None
    teacher_features: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return num_rows(self.x)

    @property
    def streamed(self) -> bool:
        return streamed(self.x)


@dataclass
class FitResult:
    epochs_run: int
    best_epoch: int
    best_val_accuracy: float
    history: list[dict[str, float]]
    train_time_s: float
    #: the last epoch's weights when the model was given back with an earlier (best) epoch's, else None
    last_state: dict[str, Tensor] | None = None


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise KdlabError(f"training.device = {spec!r}: CUDA is not available on this machine (use cpu or auto)")
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise KdlabError(f"training.device = {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if spec == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise KdlabError("training.device = 'mps': MPS is not available on this machine")
    return torch.device(spec)


def build_optimizer(params: list[nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """The configured optimizer, fused (one kernel per parameter for the whole update) where torch has a fused
    implementation for the parameters' device and dtype: for small models the per-tensor Python loop of the default
    implementation is a large share of each step (benchmarks/README.md). Same update rule; falls back to the default
    implementation where fused is unavailable."""
    if cfg.name == "sgd":
        cls, kwargs = torch.optim.SGD, {"lr": cfg.lr, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay}
    else:
        cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
        kwargs = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if params and all(p.is_floating_point() for p in params) and len({p.device for p in params}) == 1:
        try:
            return cls(params, fused=True, **kwargs)
        except (RuntimeError, ValueError, TypeError):  # no fused kernel for this device, dtype or torch version
            pass
    return cls(params, **kwargs)


def build_scheduler(opt: torch.optim.Optimizer, cfg: OptimizerConfig, epochs: int, steps_per_epoch: int = 1):
    """The schedule and whether it steps per batch (``onecycle``) rather than per epoch."""
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=epochs * steps_per_epoch)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.scheduler == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=cfg.milestones, gamma=cfg.gamma)
    return None


def predict(model: nn.Module, x: Inputs, batch_size: int = 4096, layers: tuple[str, ...] = (),
            key: str = "", owner: str = "model") -> tuple[Tensor, dict[str, Tensor]]:
    """Logits (float32) over ``x`` (tensors) in chunks, in eval mode; plus captured features of ``layers``."""
    chunks = (batch.index(x, slice(i, i + batch_size)) for i in range(0, batch.rows(x), batch_size))
    return predict_batches(model, chunks, layers, key=key, owner=owner)


def predict_split(model: nn.Module, x: Any, device: torch.device, batch_size: int = 4096, *,
                  augment: Augment | None = None, loader: LoaderConfig | None = None,
                  channels_last: bool = False) -> Tensor:
    """Logits (float32, on ``device``) over a split's inputs ``x`` — tensors or a streamed dataset — with the
    deterministic ops of ``augment`` (``normalize``) applied, as evaluation sees them."""
    if not streamed(x) and (augment is None or not augment.ops) and not channels_last:
        return predict(model, batch.to(x, device), batch_size)[0]
    chunks = Evaluation(x, batch_size, device, augment=augment, loader=loader, channels_last=channels_last)
    try:
        return predict_batches(model, chunks.batches())[0]
    finally:
        chunks.close()


@torch.inference_mode()
def predict_batches(model: nn.Module, chunks: Iterable[Inputs], layers: tuple[str, ...] = (), *, key: str = "",
                    owner: str = "model", autocast: Any = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Logits (float32) over batches of inputs, in eval mode; plus captured features of ``layers``."""
    was_training = model.training
    model.eval()
    capture = FeatureCapture(model, layers, key=key, owner=owner) if layers else None
    outs, feats = [], {name: [] for name in layers}
    try:
        for xb in chunks:
            with autocast or contextlib.nullcontext():
                outs.append(batch.forward(model, xb).float())
            if capture:
                for name, f in capture.take().items():
                    feats[name].append(f.float())
    finally:
        if capture:
            capture.close()
        model.train(was_training)
    logits = torch.cat(outs) if outs else torch.empty(0)
    return logits, {k: torch.cat(v) for k, v in feats.items()}


def autocast_for(precision: str, device: torch.device) -> Any:
    """The autocast context of ``training.precision`` (``fp32``: none)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def fit(
    model: nn.Module,
    loss_fn: Loss,
    train: TrainSet,
    val: Split,
    *,
    optimizer: OptimizerConfig,
    epochs: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    teacher: nn.Module | None = None,
    keep_best: bool = True,
    precision: str = "fp32",
    eval_batch_size: int = 4096,
    on_epoch: EpochCallback | None = None,
    augment: Augment | None = None,
    views: Views | None = None,
    loader: LoaderConfig | None = None,
    channels_last: bool = False,
) -> FitResult:
    """Train ``model`` (and the loss's own parameters) with ``loss_fn``; validate every epoch.

    ``augment`` augments each training batch (seeded by ``seed``, the epoch and each row's index) and applies its
    deterministic ops to validation batches. The teacher's outputs come from ``train.teacher_logits`` (cached over
    fixed rows), from ``views`` (replayed views: the batch shows the view whose outputs were cached), or from
    ``teacher`` run on each batch (live: a loss that asks for it, or no cached outputs). ``loader`` reads streamed
    rows. ``precision`` is ``fp32``, ``bf16`` (autocast) or ``fp16`` (autocast and a gradient scaler).

    ``on_epoch(epoch, metrics)`` is called after each epoch's validation (a run's lifecycle hands its epoch end to
    every observer through it) and may raise to stop training. Raises :class:`NonFiniteLoss` when the epoch's loss
    is NaN or infinite.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    params += [p for p in loss_fn.parameters() if p.requires_grad and all(p is not q for q in params)]
    opt = build_optimizer(params, optimizer)
    n = len(train)
    sched = build_scheduler(opt, optimizer, epochs, steps_per_epoch=(n + batch_size - 1) // batch_size)
    per_step = optimizer.scheduler == "onecycle"
    gen = torch.Generator().manual_seed(seed)
    s_capture = FeatureCapture(model, loss_fn.student_layers, key="loss.params", owner="the student") \
        if loss_fn.student_layers else None
    live = teacher is not None and loss_fn.uses_teacher and views is None and (
        loss_fn.live_teacher or train.teacher_logits is None)
    t_capture = FeatureCapture(teacher, loss_fn.teacher_layers, key="loss.params", owner="the teacher") \
        if live and loss_fn.teacher_layers else None
    autocast = autocast_for(precision, device)
    # fp16 needs its gradients scaled; with a fused optimizer the scaler's inf check stays on the device
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    if train.streamed:
        feed = StreamFeed(train.x, train.y, train.teacher_logits, batch_size, loader or LoaderConfig(), device,
                          augment=augment, seed=seed, views=views, channels_last=channels_last)
    else:
        feed = MemoryFeed(train.x, train.y, train.teacher_logits, train.teacher_features, batch_size,
                          augment=augment, seed=seed, views=views, channels_last=channels_last)
    val_batches = Evaluation(val.x, eval_batch_size, device, augment=augment, loader=loader,
                             channels_last=channels_last)
    val_y = val.y.to(device)
    best_acc, best_epoch, best_state = -1.0, 0, None
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    try:
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            model.train()
            loss_fn.train()
            perm_cpu = torch.randperm(n, generator=gen)
            perm = perm_cpu.to(device)
            # per-step terms are kept (detached, on the device) and summed once per epoch: no host sync and no
            # arithmetic per step
            totals: list[Tensor] = []
            terms: dict[str, tuple[list[Tensor], list[int]]] = {}
            for k, step in enumerate(feed.epoch(epoch, perm_cpu, perm, cached=not live)):
                i = k * batch_size
                xb = step.x
                with autocast:
                    if live:
                        with torch.inference_mode():
                            t_out = batch.forward(teacher, xb)
                            t_feat = t_capture.take() if t_capture else {}
                        # clones made outside inference mode: ordinary tensors a loss may save for backward
                        tb = t_out.float().clone()
                        tfeat = {k: v.clone() for k, v in t_feat.items()}
                    else:
                        tb, tfeat = step.teacher_logits, step.teacher_features
                    logits = batch.forward(model, xb)
                    out = loss_fn(LossInputs(
                        x=xb, labels=step.y, student_logits=logits.float(), teacher_logits=tb,
                        student_features=s_capture.take() if s_capture else {}, teacher_features=tfeat,
                        epoch=epoch, epochs=epochs, index=step.index, soft_labels=step.soft_labels,
                    ))
                for p in params:  # opt.zero_grad(set_to_none=True) without its per-call profiler/dynamo wrappers
                    p.grad = None
                if scaler is None:
                    out.total.backward()
                    opt.step()
                else:
                    scaler.scale(out.total).backward()
                    scaler.step(opt)
                    scaler.update()
                if per_step:
                    sched.step()
                totals.append(out.total.detach())
                for name, term in out.terms.items():
                    values, steps = terms.setdefault(name, ([], []))
                    values.append(term.detach())
                    steps.append(i)
            if sched is not None and not per_step:
                sched.step()
            val_logits = predict_batches(model, val_batches.batches())[0]
            # batch means weighted by the batch's rows (the last batch may be short)
            starts = range(0, n, batch_size)
            rows = torch.tensor([min(batch_size, n - i) for i in starts], dtype=torch.float32, device=device)
            names = list(terms)
            sums = [torch.dot(torch.stack(totals).float().reshape(-1), rows)]
            for k in names:
                values, steps = terms[k]
                weights = rows if len(steps) == len(rows) else rows[[i // batch_size for i in steps]]
                sums.append(torch.dot(torch.stack(values).float().reshape(-1), weights))
            # the one host sync per epoch; float64 (where the device has it) keeps the hit count exact
            wide = torch.float32 if device.type == "mps" else torch.float64
            stacked = torch.stack([s.to(wide) for s in (*sums, count_correct(val_logits, val_y),
                                                        F.cross_entropy(val_logits, val_y))]).tolist()
            train_loss = stacked[0] / n
            if not math.isfinite(train_loss):
                raise NonFiniteLoss(f"the training loss became {train_loss} in epoch {epoch}")
            metrics = {"train_loss": train_loss}
            metrics.update({f"train_{k}": v / n for k, v in zip(names, stacked[1:-2])})
            metrics["val_accuracy"] = exact_fraction(round(stacked[-2]), len(val_y))
            metrics["val_loss"] = stacked[-1]
            metrics["lr"] = opt.param_groups[0]["lr"]
            metrics["epoch_time_s"] = time.perf_counter() - t0
            history.append(metrics)
            if metrics["val_accuracy"] > best_acc:
                best_acc, best_epoch = metrics["val_accuracy"], epoch
                if keep_best and epoch < epochs:
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                elif keep_best:
                    best_state = None  # the final weights are the best
            if on_epoch is not None:
                on_epoch(epoch, metrics)
    finally:
        feed.close()
        val_batches.close()
        if s_capture:
            s_capture.close()
        if t_capture:
            t_capture.close()
    last_state = None
    if keep_best and best_state is not None:
        last_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(len(history), best_epoch, best_acc, history, time.perf_counter() - start, last_state)


def exact_fraction(hits: int, total: int) -> float:
    """``hits / total`` as the nearest double (941/1000 reads 0.941): accuracies are counts over counts."""
    return int(hits) / int(total) if total else float("nan")


def accuracy_of(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of ``logits`` against ``labels``, exact (see :func:`exact_fraction`)."""
    return exact_fraction(int(count_correct(logits, labels)), len(labels))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:  # pragma: no cover
        pass

