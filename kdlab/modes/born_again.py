"""Born-again networks (Furlanello et al. ICML 2018, "Born-Again Neural Networks"): self-distillation over
generations. Generation 0 is the configured teacher — or, without a ``teacher:`` section, the student's own
architecture trained on the labels (the paper's setting: teacher and student are the same network). Each generation
``k = 1..G`` is the student architecture distilled from generation ``k-1`` with the configured loss, as an ordinary
:func:`kdlab.distill.distil` (its own MLflow run, role ``generation`` except for the last, tag
``kdlab.generation``). The result is the last generation's, with ``generation<k>_test_accuracy`` for every
generation and, with ``ensemble``, ``ensemble_test_accuracy`` of the generations' averaged softmax (BANE). The run's
own observers (a study's pruner) watch the last generation only.
"""

from __future__ import annotations

import dataclasses

import torch

from kdlab import paths
from kdlab.config import LoadedConfig, derive_config
from kdlab.distill import RunResult, distil
from kdlab.files import atomic_torch_save, digest
from kdlab.functional import accuracy
from kdlab.lifecycle import RunOptions
from kdlab.session import Session
from kdlab.teachers.outputs import run_augment
from kdlab.training import predict_split, resolve_device
from kdlab.weights import state_dict_cpu


def run_born_again(loaded: LoadedConfig, options: RunOptions, session: Session) -> RunResult:
    cfg, ban = loaded.config, loaded.config.born_again
    arch = {"name": cfg.student.name, "params": cfg.student.params}
    base_seed = cfg.training.seed
    teacher_section = None  # generation 0: the configured teacher, as configured
    results: list[RunResult] = []
    if cfg.teacher is None:
        gen0 = derive_config(loaded, {"loss": {"name": "ce", "params": {}}}, f"{loaded.name} (generation 0)")
        first = distil(gen0, _stage(options, 0, "generation", log_model=False), session)
        results.append(first)
        teacher_section = _checkpoint(first, gen0, arch)
    for k in range(1, ban.generations + 1):
        last = k == ban.generations
        changes = {"training": {**cfg.training.model_dump(mode="json"), "seed": base_seed + k}}
        if teacher_section is not None:
            changes["teacher"] = teacher_section
        stage = derive_config(loaded, changes, f"{loaded.name} (generation {k})")
        result = distil(stage, _stage(options, k, options.role if last else "generation", log_model=None if last
                                      else False, keep_observers=last), session)
        results.append(result)
        teacher_section = _checkpoint(result, stage, arch)
    final = results[-1]
    for k, result in enumerate(results, start=0 if cfg.teacher is None else 1):
        final.metrics[f"generation{k}_test_accuracy"] = result.metrics["test_accuracy"]
    if ban.ensemble:  # every generation trained here (generation 0 too when it is the student's architecture)
        final.metrics["ensemble_test_accuracy"] = _ensemble_accuracy(loaded, results, options, session)
    return final


def _stage(options: RunOptions, k: int, role: str, log_model: bool | None,
           keep_observers: bool = False) -> RunOptions:
    last = keep_observers  # the last generation is the run the caller asked for: its name, role and observers
    return dataclasses.replace(options, role=role, run_name=options.run_name if last else f"generation-{k}",
                               observers=options.observers if keep_observers else [], log_model=log_model,
                               tags={**options.tags, "kdlab.generation": str(k), "kdlab.mode": "born_again"})


def _checkpoint(result: RunResult, stage: LoadedConfig, arch: dict) -> dict:
    """The generation's weights as the next generation's teacher section (a checkpoint named by its config)."""
    path = atomic_torch_save(state_dict_cpu(result.student),
                             paths.cache_dir("generations") / f"{digest(stage.config.resolved_dict())}.pt")
    return {**arch, "checkpoint": str(path)}


def _ensemble_accuracy(loaded: LoadedConfig, results: list[RunResult], options: RunOptions, session: Session) -> float:
    data = session.get_data(loaded)
    device = resolve_device(options.device or loaded.config.training.device)
    cfg = loaded.config
    augment = run_augment(loaded, data)
    probs = torch.stack([predict_split(r.student.to(device), data.test.x, device, cfg.training.eval_batch_size,
                                       augment=augment, loader=cfg.data.loader).softmax(1)
                         for r in results]).mean(0)
    return float(accuracy(probs, data.test.y.to(device)))
