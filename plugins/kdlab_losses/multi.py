"""Multi-teacher distillation: soft targets from several teachers, averaged or weighted."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

import kdlab
from kdlab.functional import masked_cross_entropy

from .logits import hyper


class TeacherSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="a registered teacher architecture, e.g. cnn1d")
    params: dict[str, Any] = Field(default_factory=dict, description="its params")
    checkpoint: str | None = Field(None, description="load its weights from this state_dict file")
    mlflow_uri: str | None = Field(None, description="load it from an MLflow model URI")
    training: dict[str, Any] = Field(default_factory=dict, description="how to train it when neither is given "
                                                                       "(the keys of teacher.training)")


class MultiParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teachers: list[TeacherSpec] = Field(default_factory=list, description="extra teachers beside the configured "
                                                                          "`teacher:` (each a teacher section)")
    weights: list[float] | None = Field(None, description="weight of each teacher's soft targets, the configured "
                                                          "teacher first; normalised to sum 1; null: equal weights")
    temperature: float = Field(4.0, gt=0, description="softmax temperature T")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft-target term (1-alpha on the labels)")

    @model_validator(mode="after")
    def _weights(self) -> MultiParams:
        if self.weights is not None:
            if len(self.weights) != 1 + len(self.teachers):
                raise ValueError(f"weights has {len(self.weights)} entries for {1 + len(self.teachers)} teachers "
                                 "(the configured teacher first, then each of teachers)")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("weights must be >= 0 with a positive sum")
        return self


def mixed_soft_targets(teacher_logits: list[torch.Tensor], weights: torch.Tensor,
                       temperature: float | torch.Tensor) -> torch.Tensor:
    """``sum_k w_k softmax(t_k / T)`` with ``w`` normalised to sum 1."""
    w = weights / weights.sum()
    return sum(wk * F.softmax(t.float() / temperature, 1) for wk, t in zip(w, teacher_logits))


class MultiTeacherKD(kdlab.Loss):
    """Multi-teacher KD (You et al. KDD 2017, "Learning from Multiple Teacher Networks"; Hinton et al. 2015's
    ensemble targets): the soft targets are a weighted average of the teachers' softened outputs,
    ``(1-alpha)*CE(y, s) + alpha*T^2*KL(sum_k w_k softmax(t_k/T) || softmax(s/T))``. The configured teacher's
    outputs are cached as usual; the extra teachers (built in :meth:`setup`, trained once and reused across runs)
    run on each batch."""

    uses_soft_labels = True
    stackable = True  # stacked trials may differ in temperature, alpha and weights, not in the teachers

    def __init__(self, params: MultiParams):
        super().__init__()
        self.p = params
        self.extra: list[torch.nn.Module] = []  # a plain list: frozen, not parameters, kept in eval mode
        n = 1 + len(params.teachers)
        self.register_buffer("weights", torch.tensor(params.weights or [1.0] * n, dtype=torch.float32))
        self.register_buffer("temperature", hyper(params.temperature))
        self.register_buffer("alpha", hyper(params.alpha))

    def setup(self, ctx: kdlab.LossSetup) -> None:
        if self.p.teachers and ctx.build_teacher is None:
            raise kdlab.KdlabError("loss.params.teachers: this engine cannot build extra teachers")
        self.extra = [ctx.build_teacher(spec.model_dump(mode="json", exclude_none=True)) for spec in self.p.teachers]

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        with torch.no_grad():
            logits = [inputs.teacher_logits] + [kdlab.batch.forward(t, inputs.x) for t in self.extra]
            target = mixed_soft_targets(logits, self.weights, self.temperature)
        t = self.temperature
        log_ps = F.log_softmax(inputs.student_logits / t, 1)
        # kl_div(log_ps, target, reduction="batchmean") written out (vmap has no batching rule for kl_div); xlogy
        # keeps 0 * log 0 at 0 as kl_div does
        kd = (torch.xlogy(target, target) - target * log_ps).sum() / log_ps.shape[0] * t * t
        ce = masked_cross_entropy(inputs.student_logits, inputs.labels, soft_labels=inputs.soft_labels)
        total = (1 - self.alpha) * ce + self.alpha * kd
        return kdlab.LossOutput(total=total, terms={"ce": ce, "kd": kd})
