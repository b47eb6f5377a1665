"""The run config's pydantic models: one per section of a run file (``docs/config.md`` documents every key; the keys
are public interface). A component section (``data``, ``teacher``, ``student``, ``loss``) is ``{name, params}``; its
params are validated by the model its plugin registered (:mod:`kdlab.config.loading`)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

#: limits of values that reach torch, numpy or the operating system (docs/faults.md)
MAX_SEED = 2**32 - 1  # numpy's and Optuna's samplers' seeds are 32-bit
MAX_EPOCHS = 1_000_000
MAX_BATCH = 2**31 - 1
MAX_THREADS = 1024
MAX_VIEWS = 10_000  # augmented views per example a teacher.mode: views cache holds


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
    scheduler: Literal["none", "cosine", "step", "multistep", "onecycle"] = Field(
        "none", description="learning-rate schedule: cosine/step/multistep per epoch, onecycle per step (peak at lr)")
    step_size: Int = Field(30, gt=0, le=MAX_EPOCHS, description="epochs between decays, for scheduler: step")
    milestones: list[Annotated[Int, Field(gt=0, le=MAX_EPOCHS)]] = Field(
        default_factory=list, description="epochs after which the rate decays, for scheduler: multistep (CRD: "
                                          "[150, 180, 210])")
    gamma: Float = Field(0.1, gt=0, le=1, description="decay factor, for scheduler: step and multistep")


class ComponentConfig(Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        return {} if v is None else v


class RandomCropOp(Strict):
    """Pad, then crop back to the input size at a random place (per example); 1-D signals are cropped in length."""

    op: Literal["random_crop"]
    padding: Int = Field(4, ge=0, description="pixels (samples) added on every side before cropping")
    padding_mode: Literal["constant", "reflect", "replicate"] = Field(
        "constant", description="what the padding holds: `fill`, a mirror image of the border, or the border")
    fill: Float = Field(0.0, description="the value of constant padding")


class HFlipOp(Strict):
    """Mirror the example left-right with probability p."""

    op: Literal["hflip"]
    p: Float = Field(0.5, ge=0, le=1, description="probability of a flip")


class RandomResizedCropOp(Strict):
    """Crop a random area and aspect ratio, resized back to the input size (bilinear), as for ImageNet."""

    op: Literal["random_resized_crop"]
    scale: tuple[Float, Float] = Field((0.08, 1.0), description="range of the crop's area, as a share of the image")
    ratio: tuple[Float, Float] = Field((3 / 4, 4 / 3), description="range of the crop's aspect ratio (width/height)")


class NormalizeOp(Strict):
    """Subtract a mean and divide by a standard deviation per channel; also applied to evaluation data."""

    op: Literal["normalize"]
    mean: list[Float] = Field(..., min_length=1, description="one value per channel")
    std: list[Float] = Field(..., min_length=1, description="one value per channel (each > 0)")


class RandAugmentOp(Strict):
    """torchvision's RandAugment (Cubuk et al. 2020) on images in [0, 1], seeded per example."""

    op: Literal["randaugment"]
    num_ops: Int = Field(2, ge=1, description="operations applied to each image")
    magnitude: Int = Field(9, ge=0, description="their strength, out of num_magnitude_bins")
    num_magnitude_bins: Int = Field(31, ge=2, description="the number of strengths")


class AutoAugmentOp(Strict):
    """torchvision's AutoAugment (Cubuk et al. 2019) policy on images in [0, 1], seeded per example."""

    op: Literal["autoaugment"]
    policy: Literal["imagenet", "cifar10", "svhn"] = Field("imagenet", description="the policy learned on this "
                                                                                   "dataset")


class MixupOp(Strict):
    """mixup (Zhang et al. 2018): each example mixed with the one before it in the batch; soft labels."""

    op: Literal["mixup"]
    alpha: Float = Field(0.2, gt=0, description="the mixing weight is drawn from Beta(alpha, alpha) per batch")


class CutMixOp(Strict):
    """CutMix (Yun et al. 2019): a random box of the previous example in the batch pasted in; soft labels."""

    op: Literal["cutmix"]
    alpha: Float = Field(1.0, gt=0, description="the kept area is drawn from Beta(alpha, alpha) per batch")


#: one augmentation step of ``data.augment``, picked by its ``op`` key
AugmentOp = Annotated[Union[RandomCropOp, HFlipOp, RandomResizedCropOp, NormalizeOp, RandAugmentOp, AutoAugmentOp,
                            MixupOp, CutMixOp], Field(discriminator="op")]
#: ops that mix the examples of a batch (they come last and change the labels)
BATCH_OPS = ("mixup", "cutmix")


class LoaderConfig(Strict):
    """How streamed splits are read (torch.utils.data.DataLoader); in-memory splits do not use it."""

    workers: Int = Field(2, ge=0, le=MAX_THREADS,
                         description="loader worker processes (0: read in the training process)")
    pin_memory: bool | None = Field(None, description="page-locked batches for non-blocking copies to the GPU "
                                                      "(default: on when the run's device is CUDA)")
    prefetch_factor: Int = Field(2, ge=1, description="batches each worker reads ahead")


class DataConfig(ComponentConfig):
    seed: Int = seed_field("seed of the data split (kept fixed across trials)")
    augment: list[AugmentOp] = Field(default_factory=list, description="augmentation of training batches, in order "
                                     "(docs/images.md); empty: none")
    loader: LoaderConfig = Field(default_factory=LoaderConfig)

    @field_validator("augment")
    @classmethod
    def _batch_ops_last(cls, ops: list[Any]) -> list[Any]:
        names = [op.op for op in ops]
        for i, name in enumerate(names):
            if name in BATCH_OPS and any(n not in BATCH_OPS for n in names[i + 1:]):
                raise ValueError(f"{name} mixes the examples of a batch: put it after the per-example ops")
        if sum(n in BATCH_OPS for n in names) > 1:
            raise ValueError("use one of mixup and cutmix, not both")
        return ops


class TeacherTrainingConfig(Strict):
    epochs: Int = Field(30, gt=0, le=MAX_EPOCHS)
    batch_size: Int = Field(128, gt=0, le=MAX_BATCH)
    seed: Int = seed_field("the teacher's own seed, independent of the student's")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    augment: bool = Field(True, description="train the teacher with data.augment (as the KD papers' teachers are)")


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
    mode: Literal["live", "views"] = Field(
        "live", description="under data.augment: `live` runs the teacher on each augmented batch; `views` replays "
        "its outputs for `views` fixed augmented views per example, computed once (docs/images.md)")
    views: Int = Field(8, gt=0, le=MAX_VIEWS, description="views per training example, with mode: views")
    topk: Int | None = Field(None, gt=0, description="with mode: views, store only the top-k logits of each view "
                                                     "(the rest share the remaining probability)")
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
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = Field(False, description="models and image batches in channels-last memory format")
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
