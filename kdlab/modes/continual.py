"""Continual learning with distillation: Learning without Forgetting (Li and Hoiem, TPAMI 2017).

A config with a ``continual:`` section learns the data plugin's tasks (``Data.tasks``, e.g. digits 0-4 then 5-9)
one after another with the configured student. Each task is a head over its own classes (the paper's multi-head,
task-aware setting): training and evaluation on a task use the logits of that task's classes only.

* First task: cross-entropy on its classes.
* Each later task: before training, the model's current outputs on the new task's training inputs are recorded
  (the "old" responses). Training minimises ``CE(new labels, new head) + old_weight * T^2 * KL(old || current)``
  over the old tasks' heads (``method: lwf``), or the cross-entropy alone (``method: finetune``, the baseline that
  forgets). The paper's warm-up step (new head only) is not done.

Final metrics (public interface, ``kdlab.metrics.CONTINUAL``): ``old_task_accuracy``, ``new_task_accuracy``,
``forgetting`` and ``task<k>_accuracy``. The run is one lifecycle (role ``continual``, one MLflow run) whose
epochs run on across the tasks; per-epoch metrics are named ``task<k>_<metric>``. The ``teacher`` and ``loss``
sections are not used.
"""

from __future__ import annotations

import statistics

import torch
from torch import Tensor, nn

from kdlab import __version__, batch
from kdlab.config import LoadedConfig, dump_yaml, flatten
from kdlab.distill import RunResult
from kdlab.errors import KdlabError
from kdlab.functional import masked_cross_entropy, soft_kl
from kdlab.lifecycle import RunOptions, tracked_run
from kdlab.models import build_model
from kdlab.session import Session
from kdlab.training import TrainSet, accuracy_of, fit, predict, resolve_device, seed_everything
from kdlab.types import Data, Loss, LossInputs, LossOutput, RunInfo, Split


class TaskView(nn.Module):
    """The network seen through one task's head: the logits of ``classes`` only. The full logits are the output of
    the submodule ``net``, which a loss can capture by naming it in ``student_layers``."""

    def __init__(self, net: nn.Module, classes: list[int]):
        super().__init__()
        self.net = net
        self.register_buffer("classes", torch.tensor(classes, dtype=torch.int64))

    def forward(self, *args, **inputs) -> Tensor:  # one tensor, or named inputs
        return self.net(*args, **inputs)[:, self.classes]


class LwFLoss(Loss):
    """``CE(y, new head) + old_weight * T^2 * KL(softmax(old/T) || softmax(current/T))`` on the old heads; the old
    responses arrive as ``teacher_logits`` (recorded before the task, cached), the current ones as the captured
    full logits."""

    uses_teacher = True
    student_layers = ("net",)

    def __init__(self, old_classes: list[int], temperature: float, old_weight: float):
        super().__init__()
        self.register_buffer("old", torch.tensor(old_classes, dtype=torch.int64))
        self.temperature, self.old_weight = temperature, old_weight

    def forward(self, inputs: LossInputs) -> LossOutput:
        ce = masked_cross_entropy(inputs.student_logits, inputs.labels)
        if self.old_weight == 0:
            return LossOutput(ce, {"ce": ce})
        current = inputs.student_features["net"][:, self.old]
        old = soft_kl(current.float(), inputs.teacher_logits, self.temperature)
        return LossOutput(ce + self.old_weight * old, {"ce": ce, "lwf": old})


def task_split(split: Split, classes: list[int]) -> Split:
    """The rows of ``split`` whose label is in ``classes``, labels renumbered to positions in ``classes``."""
    cls = torch.tensor(classes)
    keep = torch.isin(split.y, cls)
    remap = torch.full((int(split.y.max()) + 1,), -1, dtype=torch.int64)
    remap[cls] = torch.arange(len(classes))
    return Split(batch.index(split.x, keep), remap[split.y[keep]])


def task_accuracy(net: nn.Module, split: Split, classes: list[int], device: torch.device, batch_size: int) -> float:
    part = task_split(split, classes)
    logits, _ = predict(TaskView(net, classes).to(device), batch.to(part.x, device), batch_size)
    return accuracy_of(logits, part.y.to(device))


def run_continual(loaded: LoadedConfig, options: RunOptions, session: Session) -> RunResult:
    cfg, ccfg, tcfg = loaded.config, loaded.config.continual, loaded.config.training
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    device = resolve_device(options.device or tcfg.device)
    data: Data = session.get_data(loaded)
    if data.streamed:
        raise KdlabError(f"{loaded.name}: continual: learning tasks in sequence needs the data in memory (data "
                         f"{cfg.data.name!r} is streamed: leave out its stream option)")
    if cfg.data.augment:
        raise KdlabError(f"{loaded.name}: continual: runs that learn tasks in sequence do not augment their data "
                         "(Learning without Forgetting reads the old model's outputs on fixed inputs): leave out "
                         "data.augment")
    tasks = data.tasks
    if not tasks or len(tasks) < 2:
        raise KdlabError(f"{loaded.name}: continual: data {cfg.data.name!r} defines no sequence of tasks "
                         "(kdlab.Data.tasks needs at least two)")
    seed_everything(tcfg.seed)
    net = build_model(loaded.components["student"], loaded.params["student"], data).to(device)
    epochs = [(ccfg.first_task_epochs or tcfg.epochs) if k == 0 else tcfg.epochs for k in range(len(tasks))]
    info = RunInfo(role=options.role if options.role != "student" else "continual", config=cfg, device=str(device),
                   trial_number=options.trial_number, epochs=sum(epochs),
                   name=options.run_name or f"continual-{cfg.student.name}-{ccfg.method}-seed{tcfg.seed}")
    tags = {"kdlab.role": info.role, "kdlab.version": __version__, "kdlab.seed": str(tcfg.seed),
            "kdlab.continual_method": ccfg.method, **options.tags}
    params = flatten({k: v for k, v in cfg.resolved_dict().items()
                      if k not in ("study", "tracking", "teacher", "loss", "assistant")})
    params = {k: v for k, v in params.items() if v is not None}
    with tracked_run(info, tracker=session.tracker(loaded), tags=tags, params={**params, **options.params},
                     parent_run_id=options.parent_run_id, observers=[*session.observers, *options.observers],
                     flush_every_s=cfg.tracking.flush_every_s) as live:
        step = 0
        just_learned: list[float] = []
        for k, classes in enumerate(tasks):
            train, val = task_split(data.train, classes), task_split(data.val, classes)
            old_classes = [c for task in tasks[:k] for c in task]
            teacher_logits = None
            if k and ccfg.method == "lwf":
                teacher_logits, _ = predict(net, batch.to(train.x, device), tcfg.eval_batch_size)
                teacher_logits = teacher_logits[:, old_classes]
            loss = LwFLoss(old_classes, ccfg.temperature, ccfg.old_weight if teacher_logits is not None else 0.0)

            def on_epoch(epoch: int, m: dict[str, float], k=k, offset=step) -> None:
                live.epoch(offset + epoch, {f"task{k}_{name}": v for name, v in m.items()})

            fit(TaskView(net, classes).to(device), loss.to(device),
                TrainSet(batch.to(train.x, device), train.y.to(device), teacher_logits), val.to(device),
                optimizer=cfg.optimizer, epochs=epochs[k], batch_size=tcfg.batch_size, seed=tcfg.seed + k,
                device=device, keep_best=tcfg.keep_best, eval_batch_size=tcfg.eval_batch_size, on_epoch=on_epoch)
            step += epochs[k]
            just_learned.append(task_accuracy(net, data.test, classes, device, tcfg.eval_batch_size))
        final = [task_accuracy(net, data.test, c, device, tcfg.eval_batch_size) for c in tasks]
        metrics = {f"task{k}_accuracy": a for k, a in enumerate(final)}
        metrics["old_task_accuracy"] = statistics.mean(final[:-1])
        metrics["new_task_accuracy"] = final[-1]
        metrics["forgetting"] = statistics.mean(b - a for b, a in zip(just_learned[:-1], final[:-1]))
        live.finish(metrics, step=step)
        if live.tracked:
            live.tracked.log_text(dump_yaml(cfg.resolved_dict()), "config.yaml")
    return RunResult(metrics, info.run_id, net, None, None)
