"""The run config's pydantic models: one per section of a run file (``docs/config.md`` documents every key; the keys
are public interface). A component section (``data``, ``teacher``, ``student``, ``loss``) is ``{name, params}``; its
params are validated by the model its plugin registered (:mod:`kdlab.config.loading`)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

#: limits of values that reach torch, numpy or the operating system (docs/faults.md)
MAX_SEED = 2**32 - 1  # numpy's and Optuna's samplers' seeds are 32-bit
MAX_EPOCHS = 1_000_000
MAX_BATCH = 2**31 - 1
MAX_THREADS = 1024


def seed_field(description: str) -> Any:
    return Field(0, ge=0, le=MAX_SEED, description=description)


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    return value


#: numbers of config files: YAML's ``true`` is not 1 epoch
Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]


class Strict(BaseModel):
    """A config section: unknown keys and non-finite floats (``.inf``, ``.nan``) are errors; numbers are declared
    :data:`Int` / :data:`Float`, which refuse booleans."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class OptimizerConfig(Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Float = Field(1e-3, gt=0, description="learning rate")
    weight_decay: Float = Field(0.0, ge=0)
    momentum: Float = Field(0.9, ge=0, lt=1, description="SGD only")
    scheduler: Literal["none", "cosine", "step", "onecycle"] = Field(
        "none", description="learning-rate schedule: cosine/step per epoch, onecycle per step (peak at lr)")
    step_size: Int = Field(30, gt=0, le=MAX_EPOCHS, description="epochs between decays, for scheduler: step")
    gamma: Float = Field(0.1, gt=0, le=1, description="decay factor, for scheduler: step")


class ComponentConfig(Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        return {} if v is None else v


class DataConfig(ComponentConfig):
    seed: Int = seed_field("seed of the data split (kept fixed across trials)")


class TeacherTrainingConfig(Strict):
    epochs: Int = Field(30, gt=0, le=MAX_EPOCHS)
    batch_size: Int = Field(128, gt=0, le=MAX_BATCH)
    seed: Int = seed_field("the teacher's own seed, independent of the student's")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)


class InitConfig(Strict):
    """Start a model from a source model's weights (transfer-learning initialisation)."""

    checkpoint: str | None = Field(None, description="a state_dict file of the source model (loaded with "
                                                     "weights_only)")
    mlflow_uri: str | None = Field(None, description="an MLflow model URI or a `.pt` state_dict artifact of the "
                                                     "source model")
    freeze: list[str] = Field(default_factory=list, description="dotted module paths whose params are frozen")
    strict: bool = Field(False, description="require every key to match (else load the matching ones)")


class TeacherConfig(ComponentConfig):
    checkpoint: str | None = Field(None, description="load weights from this state_dict file (weights_only)")
    mlflow_uri: str | None = Field(None, description="load from an MLflow model URI, e.g. runs:/<id>/teacher")
    training: TeacherTrainingConfig = Field(default_factory=TeacherTrainingConfig)
    init: InitConfig | None = Field(None, description="when kdlab trains the teacher: start it from a source model's "
                                                      "weights, optionally freezing modules (transfer learning)")
    on_chance_accuracy: Literal["error", "warn"] = Field(
        "error", description="a loaded teacher (checkpoint or mlflow_uri) whose validation accuracy is no better than "
        "chance (damaged or mismatched weights): stop with an error, or warn and tag its runs kdlab.teacher_warning")


class StudentConfig(ComponentConfig):
    init: InitConfig | None = None


#: device names a config may give
DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


class TrainingConfig(Strict):
    epochs: Int = Field(20, gt=0, le=MAX_EPOCHS)
    batch_size: Int = Field(128, gt=0, le=MAX_BATCH)
    seed: Int = seed_field("seed of the student's initialisation and batch order")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    use_transfer: bool = Field(True, description="train on the transfer split through the teacher's outputs")
    keep_best: bool = Field(True, description="restore the weights of the best validation epoch at the end")
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = Field(False, description="torch.compile the student")
    threads: Int | None = Field(None, gt=0, le=MAX_THREADS, description="torch CPU threads (default: torch's choice)")
    eval_batch_size: Int = Field(4096, gt=0, le=MAX_BATCH)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE.match(v):
            raise ValueError("expected auto, cpu, cuda or cuda:N")
        return v


class TrackingConfig(Strict):
    enabled: bool = True
    uri: str | None = Field(None, description="MLflow tracking URI (default: sqlite file under KDLAB_HOME)")
    experiment: str | None = Field(None, description="MLflow experiment (default: kdlab-<data name>)")
    run_name: str | None = None
    log_model: bool = Field(True, description="log the student (and a teacher kdlab trains) as an MLflow "
                                              "LoggedModel linked to its run's final metrics")
    register_model: str | None = Field(None, description="register the student in the MLflow Model Registry "
                                                         "under this name: a study's best trial's, a run's own "
                                                         "(with log_model)")
    register_alias: str = Field("champion", description="the alias the registered version gets")
    flush_every_s: Float = Field(15.0, ge=0, le=86400, description="per-epoch metrics are sent in batches this often")


class AssistantConfig(ComponentConfig):
    """A teacher assistant (Mirzadeh et al. 2020): teacher -> assistant -> student, each stage its own run."""

    epochs: Int | None = Field(None, gt=0, le=MAX_EPOCHS,
                               description="epochs of the assistant's distillation (default: training.epochs)")


class ContinualConfig(Strict):
    """Learn the data's tasks one after another (``Data.tasks``); see :mod:`kdlab.modes.continual`."""

    method: Literal["lwf", "finetune"] = Field("lwf", description="lwf: Learning without Forgetting (Li and Hoiem "
                                               "2017); finetune: no distillation (the forgetting baseline)")
    temperature: Float = Field(2.0, gt=0, description="temperature of the old-output distillation (paper: 2)")
    old_weight: Float = Field(1.0, ge=0, description="lambda_o, weight of the old-task distillation term (paper: 1)")
    first_task_epochs: Int | None = Field(None, gt=0, le=MAX_EPOCHS,
                                          description="epochs on the first task (default: training.epochs)")


class BornAgainConfig(Strict):
    """Born-again networks (Furlanello et al. 2018): the student distilled from the generation before it, again and
    again; see :mod:`kdlab.modes.born_again`."""

    generations: int = Field(3, ge=1, le=20, description="student generations after generation 0 (paper: up to 3-4 "
                                                         "on CIFAR-100)")
    ensemble: bool = Field(True, description="also report the ensemble of the student generations (BANE: their "
                                             "averaged softmax), as ensemble_test_accuracy")


class RunConfig(Strict):
    data: DataConfig
    teacher: TeacherConfig | None = None
    student: StudentConfig
    loss: ComponentConfig = Field(default_factory=lambda: ComponentConfig(name="kd"))
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    study: dict[str, Any] | None = Field(None, description="study settings, read by `kdlab study`")
    compare: dict[str, Any] | None = Field(None, description="a comparison of methods, read by `kdlab compare` "
                                                             "(docs/compare.md)")
    assistant: AssistantConfig | None = Field(None, description="distil through a teacher assistant "
                                                                "(kdlab.modes.assistant)")
    continual: ContinualConfig | None = Field(None, description="learn the data's tasks in sequence "
                                                                "(kdlab.modes.continual)")
    born_again: BornAgainConfig | None = Field(None, description="self-distillation over generations of the student "
                                                                 "(kdlab.modes.born_again)")

    def resolved_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)
