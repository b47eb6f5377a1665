"""Where a run comes from, in MLflow's own terms: the source file and its git commit (the UI's Source and Version
columns), the data as an MLflow dataset input (the Dataset column), and one-line descriptions of experiments and
runs (``mlflow.note.content``) that name the teacher, the student, the loss and the searched params."""

from __future__ import annotations

import functools
import getpass
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdlab import batch
from kdlab.config import LoadedConfig
from kdlab.loading import head
from kdlab.types import Data


@functools.lru_cache(maxsize=32)
def git_state(folder: str) -> tuple[str, bool, str] | None:
    """``(commit, dirty, remote URL or "")`` of the git work tree holding ``folder``, or ``None`` outside one (or
    without git). Asked once per folder per process."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    try:
        remote = git("config", "--get", "remote.origin.url")
    except (OSError, subprocess.SubprocessError):
        remote = ""
    return commit, dirty, remote


def config_file(loaded: LoadedConfig) -> str:
    """The config file a run was read from (a derived config's label, e.g. ``run.yaml (assistant)``, names it)."""
    return loaded.name.split(" (", 1)[0]


def source_tags(loaded: LoadedConfig) -> dict[str, str]:
    """MLflow's source tags for a run read from ``loaded``'s file: the file (Source), its git commit (Version)
    where it lies in a git work tree, and the user."""
    path = config_file(loaded)
    tags = {"mlflow.source.name": path, "mlflow.source.type": "LOCAL"}
    try:
        tags["mlflow.user"] = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in this environment
        pass
    p = Path(path)
    if p.is_file():
        state = git_state(str(p.resolve().parent))
        if state is not None:
            commit, dirty, remote = state
            tags["mlflow.source.git.commit"] = commit
            tags["kdlab.git_dirty"] = str(dirty).lower()
            if remote:
                tags["mlflow.source.git.repoURL"] = remote
    return tags


@dataclass
class DatasetRecord:
    """An MLflow dataset input describing a run's data: its name and digest identify it."""

    name: str
    digest: str
    source: str
    schema: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return self.name, self.digest


def dataset_record(loaded: LoadedConfig, data: Data, fingerprint: str) -> DatasetRecord:
    """The data of ``loaded`` as an MLflow dataset: the data component's name, the data's fingerprint (component,
    params, seed, plugin version), the config that makes it as the source, the splits' sizes as the profile."""
    cfg = loaded.config.data
    comp = loaded.components["data"]
    source = {"data": cfg.name, "params": cfg.params, "seed": cfg.seed,
              "plugin": f"{comp.distribution or comp.plugin} {comp.version or ''}".strip()}
    profile: dict[str, Any] = {name: len(split) for name, split in data.splits().items()}
    profile["num_classes"] = data.num_classes
    inputs = {name: f"{str(t.dtype).replace('torch.', '')} {list(t.shape[1:])}"
              for name, t in batch.tensors(head(data.train.x, 1)).items()}
    schema: dict[str, Any] = {"input_shape": list(data.input_shape), "inputs": inputs,
                              "labels": f"int64 in [0, {data.num_classes})"}
    if data.class_names:
        schema["class_names"] = list(data.class_names)[:100]
    return DatasetRecord(cfg.name, fingerprint[:16], json.dumps(source, sort_keys=True, default=str), schema, profile)


def log_dataset(tracked: Any, record: DatasetRecord) -> None:
    """Log ``record`` as the dataset input of the run ``tracked`` (a :class:`kdlab.tracking.TrackedRun`)."""
    tracked.log_dataset(record.name, record.digest, record.source, schema=record.schema, profile=record.profile)


def component_text(section: Any, limit: int = 90) -> str:
    """A component section in a few words: ``mlp`` (hidden [100, 100])."""
    params = getattr(section, "params", None) or {}
    inner = ", ".join(f"{k} {_value(v)}" for k, v in params.items())
    if len(inner) > limit:
        inner = inner[: limit - 3].rstrip(", ") + "..."
    return f"`{section.name}`" + (f" ({inner})" if inner else "")


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return str(v)


def searched_keys(loaded: LoadedConfig) -> list[str]:
    """The dotted keys a study file searches (its ``study.search`` section), in file order."""
    study = loaded.config.study or {}
    search = study.get("search") or {}
    return list(search) if isinstance(search, dict) else []


def searched_text(loaded: LoadedConfig, flat: dict[str, Any]) -> str:
    """``key value, ...`` for the searched keys of ``loaded`` as this run has them (``flat``: its params)."""
    parts = [f"{k} {_value(flat[k])}" for k in searched_keys(loaded) if k in flat]
    return ", ".join(parts)


def run_description(loaded: LoadedConfig, role: str, *, flat: dict[str, Any], teacher_link: str | None = None,
                    study: str | None = None, study_link: str | None = None, trial_number: int | None = None) -> str:
    """One line describing a student run (a plain run, a study's trial or baseline, an assistant stage)."""
    cfg = loaded.config
    student = component_text(cfg.student)
    teacher = ""
    if cfg.teacher is not None and cfg.loss.name != "ce":
        # the teacher by name and link: its own run describes it
        teacher = f" distilled from teacher [`{cfg.teacher.name}`]({teacher_link})" if teacher_link else \
            f" distilled from teacher `{cfg.teacher.name}`"
    study_ref = f"[{study}]({study_link})" if study and study_link else (f"`{study}`" if study else "")
    if role == "baseline":
        head = f"`ce` baseline of study {study_ref}: " if study_ref else "`ce` baseline: "
        return (f"{head}student {student} trained on the labels only (no teacher): what distillation is measured "
                f"against.")
    if role == "trial" and trial_number is not None:
        head = f"Trial {trial_number} of study {study_ref}: " if study_ref else f"Trial {trial_number}: "
    else:
        head = f"{role.capitalize()} run: "
    searched = searched_text(loaded, flat) if role == "trial" else ""
    loss = f"`{cfg.loss.name}`" if searched else component_text(cfg.loss, 60)
    text = f"{head}student {student}{teacher} with loss {loss}"
    if searched:
        text += f"; searched: {searched}"
    else:
        text += f"; {cfg.optimizer.name} lr {_value(cfg.optimizer.lr)}, {cfg.training.epochs} epochs, " \
                f"seed {cfg.training.seed}"
    return text + "."


def teacher_description(loaded: LoadedConfig) -> str:
    """One line describing a teacher's own run."""
    cfg = loaded.config
    t = cfg.teacher
    opt = t.training.optimizer
    return (f"Teacher {component_text(t)} trained with cross-entropy on `{cfg.data.name}` for {t.training.epochs} "
            f"epochs ({opt.name}, lr {_value(opt.lr)}, seed {t.training.seed}).")


def used_by_line(studies: list[tuple[str, str]]) -> str:
    """``Used by studies: [a](link), ...`` for a teacher's description."""
    return "Used by studies: " + ", ".join(f"[{name}]({link})" for name, link in studies) + "."
