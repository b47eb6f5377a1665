"""KD variants that change the temperature: standardised logits (an adaptive temperature per row), a learned,
adversarial temperature (CTKD) and several temperatures at several levels (MLKD)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

import kdlab
from kdlab.functional import masked_cross_entropy


def kl_rows(log_p_s: torch.Tensor, log_p_t: torch.Tensor) -> torch.Tensor:
    """``KL(p_t || p_s)`` of each row, from log-probabilities."""
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="none").sum(1)


def standardize(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score of each row: ``(z - mean) / (eps + std)``, the standard deviation unbiased (``N - 1``), as in the
    authors' code."""
    return (z - z.mean(1, keepdim=True)) / (eps + z.std(1, keepdim=True))


class KDStdParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(2.0, gt=0, description="base temperature applied to the standardised logits "
                                                      "(paper: 2 on CIFAR-100)")
    ce_weight: float = Field(0.1, ge=0, description="weight of the cross-entropy on the labels (paper: 0.1)")
    kd_weight: float = Field(9.0, ge=0, description="weight of the KD term (paper: 9)")


class KDStandardized(kdlab.Loss):
    """KD with logit standardisation (Sun, Ren, Li, Wang and Cao, CVPR 2024, "Logit Standardization in Knowledge
    Distillation"): both logits are z-scored per row before the temperature softmax, so the student matches the
    teacher's logit relations rather than their range (equivalently, each row gets the temperature
    ``T * std(z)``): ``ce_weight*CE + kd_weight * T^2 * KL(softmax(Z(t)/T) || softmax(Z(s)/T))``,
    ``Z(z) = (z - mean(z)) / std(z)``. Defaults are the paper's CIFAR-100 KD setting. Unlabeled rows get the KD term
    only."""

    def __init__(self, params: KDStdParams):
        super().__init__()
        self.p = params

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        temp = self.p.temperature
        log_p_s = F.log_softmax(standardize(inputs.student_logits) / temp, 1)
        log_p_t = F.log_softmax(standardize(inputs.teacher_logits.float()) / temp, 1)
        kd = temp**2 * kl_rows(log_p_s, log_p_t).mean()
        ce = masked_cross_entropy(inputs.student_logits, inputs.labels)
        total = self.p.ce_weight * ce + self.p.kd_weight * kd
        return kdlab.LossOutput(total=total, terms={"ce": ce, "kd": kd})


class CTKDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    t_min: float = Field(1.0, gt=0, description="lowest temperature (authors' code: t_start = 1)")
    t_range: float = Field(20.0, gt=0, description="the temperature is t_min + t_range * sigmoid(theta) "
                                                   "(authors' code: t_end = 20)")
    lambda_max: float = Field(1.0, ge=0, description="final strength of the gradient reversal (paper: 1)")
    curriculum_epochs: int | None = Field(10, ge=1, description="epochs over which the reversal strength rises "
                                                                "from 0 to lambda_max on a cosine (paper: 10 of "
                                                                "240); null: the whole run")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the KD term (1-alpha on the labels; paper: 0.9)")


class GradientReversal(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``-lam`` (Ganin and Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.lam * grad, None


class CTKD(kdlab.Loss):
    """Curriculum Temperature KD (Li, Li, Yang, Cheng, Zhang, Yang and Yang, AAAI 2023, "Curriculum Temperature for
    Knowledge Distillation"), global variant: the KD temperature is learned, adversarially: a gradient reversal
    layer makes the temperature ascend the KD loss that the student descends, more and more over an easy-to-hard
    cosine curriculum: ``(1-alpha)*CE + alpha*T^2*KL(softmax(t/T) || softmax(s/T))`` with
    ``T = t_min + t_range * sigmoid(GRL_lambda(theta))``, ``theta`` a parameter of this loss (trained with the
    student, initialised to 1 as in the authors' code) and ``lambda(e) = lambda_max * (1 - cos(pi * min(e, E) /
    E)) / 2`` at epoch ``e`` of a curriculum of ``E`` epochs (the authors' ``CosineDecay`` from 0 to -1 applied as
    ``dx = lambda * grad``). The sigmoid keeps ``T`` within ``(t_min, t_min + t_range)``, as the authors' code does.
    The ``ctkd_temperature`` term logs ``T``; it is not part of the total."""

    def __init__(self, params: CTKDParams):
        super().__init__()
        self.p = params
        self.theta = nn.Parameter(torch.ones(()))

    def reversal(self, epoch: int, epochs: int) -> float:
        """The curriculum's reversal strength at ``epoch``."""
        length = self.p.curriculum_epochs or epochs
        return self.p.lambda_max * (1 - math.cos(math.pi * min(epoch, length) / length)) / 2

    def temperature(self, lam: float = 0.0) -> torch.Tensor:
        return self.p.t_min + self.p.t_range * torch.sigmoid(GradientReversal.apply(self.theta, lam))

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        temp = self.temperature(self.reversal(inputs.epoch, inputs.epochs))
        log_p_s = F.log_softmax(inputs.student_logits / temp, 1)
        log_p_t = F.log_softmax(inputs.teacher_logits.float() / temp, 1)
        kd = temp**2 * kl_rows(log_p_s, log_p_t).mean()
        ce = masked_cross_entropy(inputs.student_logits, inputs.labels)
        total = (1 - self.p.alpha) * ce + self.p.alpha * kd
        return kdlab.LossOutput(total=total, terms={"ce": ce, "kd": kd, "ctkd_temperature": temp.detach()})


class MLKDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperatures: list[float] = Field(default_factory=lambda: [2.0, 3.0, 4.0, 5.0, 6.0], min_length=1,
                                      description="the temperatures of the prediction augmentation (paper: 2 to 6)")
    ce_weight: float = Field(0.1, ge=0, description="weight of the cross-entropy on the labels (authors' code: "
                                                    "0.1)")
    kd_weight: float = Field(0.9, ge=0, description="weight of each level's term at each temperature (authors' "
                                                    "code: 0.9)")

    @model_validator(mode="after")
    def _positive(self) -> MLKDParams:
        if any(t <= 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be > 0, got {self.temperatures}")
        return self


class MLKD(kdlab.Loss):
    """Multi-level logit distillation (Jin, Wang and Lin, CVPR 2023, "Multi-level Logit Distillation"): the
    predictions at several temperatures ("prediction augmentation") are aligned at three levels,
    ``ce_weight*CE + kd_weight * sum_T (L_ins + L_batch + L_class)``:
    instance ``L_ins = T^2 * mean_i KL(p_t[i] || p_s[i])``, batch ``L_batch = ||P_s P_s^T - P_t P_t^T||_F^2 / N``
    (the rows' similarity matrices) and class ``L_class = ||P_s^T P_s - P_t^T P_t||_F^2 / C`` (the classes'),
    with ``P = softmax(z / T)`` of shape ``(N, C)``. The authors' code also multiplies the weak view's terms by
    confidence masks; as the terms are batch means there, the masks only scale them by about 1/2, and are left out.
    The paper's strong-augmentation recipe (a second, strongly augmented view of each batch, trained for twice the
    epochs) is a data setting, not part of this loss: configure the augmentation in the data plugin."""

    def __init__(self, params: MLKDParams):
        super().__init__()
        self.p = params

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        s, t = inputs.student_logits, inputs.teacher_logits.float()
        n, c = s.shape
        temps = s.new_tensor(self.p.temperatures).view(-1, 1, 1)  # every temperature at once: (K, N, C)
        log_p_s, log_p_t = F.log_softmax(s / temps, 2), F.log_softmax(t / temps, 2)
        p_s, p_t = log_p_s.exp(), log_p_t.exp()
        kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="none").sum(2).mean(1)
        ins = (temps.flatten() ** 2 * kl).sum()
        batch = (p_s @ p_s.transpose(1, 2) - p_t @ p_t.transpose(1, 2)).pow(2).sum() / n
        cls = (p_s.transpose(1, 2) @ p_s - p_t.transpose(1, 2) @ p_t).pow(2).sum() / c
        ce = masked_cross_entropy(s, inputs.labels)
        total = self.p.ce_weight * ce + self.p.kd_weight * (ins + batch + cls)
        return kdlab.LossOutput(total=total, terms={"ce": ce, "mlkd_instance": ins, "mlkd_batch": batch,
                                                    "mlkd_class": cls})
