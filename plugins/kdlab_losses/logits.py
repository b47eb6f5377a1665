"""Logit-based losses."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

import kdlab
from kdlab.functional import masked_cross_entropy, soft_kl


class CEParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CrossEntropy(kdlab.Loss):
    """Cross-entropy on the true labels only: the student trained without a teacher (the no-distillation baseline)."""

    uses_teacher = False

    def __init__(self, params: CEParams | None = None):
        super().__init__()

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        ce = masked_cross_entropy(inputs.student_logits, inputs.labels)
        return kdlab.LossOutput(total=ce, terms={"ce": ce})


class KDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(4.0, gt=0, description="softmax temperature T of teacher and student")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft-target term (1-alpha on the labels)")


class HintonKD(kdlab.Loss):
    """Hinton, Vinyals and Dean 2015, "Distilling the Knowledge in a Neural Network":
    ``(1-alpha)*CE(y, s) + alpha*T^2*KL(softmax(t/T) || softmax(s/T))``. Unlabeled rows get the soft term only."""

    def __init__(self, params: KDParams):
        super().__init__()
        self.temperature = params.temperature
        self.alpha = params.alpha

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        ce = masked_cross_entropy(inputs.student_logits, inputs.labels)
        kd = soft_kl(inputs.student_logits, inputs.teacher_logits, self.temperature)
        total = (1 - self.alpha) * ce + self.alpha * kd
        return kdlab.LossOutput(total=total, terms={"ce": ce, "kd": kd})
