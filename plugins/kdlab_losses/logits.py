"""Logit-based losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

import kdlab
from kdlab.functional import masked_cross_entropy, soft_kl


def hyper(value: float) -> torch.Tensor:
    """A hyperparameter as a tensor buffer value (float64 keeps the Python float exactly): what lets trials that
    differ in it be stacked (``kdlab.Loss.stackable``)."""
    return torch.tensor(float(value), dtype=torch.float64)


class CEParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CrossEntropy(kdlab.Loss):
    """Cross-entropy on the true labels only: the student trained without a teacher (the no-distillation baseline)."""

    uses_soft_labels = True

    uses_teacher = False
    stackable = True

    def __init__(self, params: CEParams | None = None):
        super().__init__()

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        ce = masked_cross_entropy(inputs.student_logits, inputs.labels, soft_labels=inputs.soft_labels)
        return kdlab.LossOutput(total=ce, terms={"ce": ce})


class KDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(4.0, gt=0, description="softmax temperature T of teacher and student")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft-target term (1-alpha on the labels)")


class HintonKD(kdlab.Loss):
    """Hinton, Vinyals and Dean 2015, "Distilling the Knowledge in a Neural Network":
    ``(1-alpha)*CE(y, s) + alpha*T^2*KL(softmax(t/T) || softmax(s/T))``. Unlabeled rows get the soft term only."""

    uses_soft_labels = True
    stackable = True

    def __init__(self, params: KDParams):
        super().__init__()
        self.register_buffer("temperature", hyper(params.temperature))
        self.register_buffer("alpha", hyper(params.alpha))

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        ce = masked_cross_entropy(inputs.student_logits, inputs.labels, soft_labels=inputs.soft_labels)
        kd = soft_kl(inputs.student_logits, inputs.teacher_logits, self.temperature)
        total = (1 - self.alpha) * ce + self.alpha * kd
        return kdlab.LossOutput(total=total, terms={"ce": ce, "kd": kd})


class HardParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(0.5, ge=0, le=1, description="weight of the CE on the teacher's argmax (1-alpha on the "
                                                      "true labels); DeiT uses 0.5")


class HardKD(kdlab.Loss):
    """Hard-label distillation (Touvron et al. 2021, "Training data-efficient image transformers & distillation
    through attention", DeiT): the teacher's argmax is a pseudo-label,
    ``(1-alpha)*CE(y, s) + alpha*CE(argmax t, s)``. Unlabeled rows get the pseudo-label term only."""

    uses_soft_labels = True
    stackable = True

    def __init__(self, params: HardParams):
        super().__init__()
        self.register_buffer("alpha", hyper(params.alpha))

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        ce = masked_cross_entropy(inputs.student_logits, inputs.labels, soft_labels=inputs.soft_labels)
        hard = F.cross_entropy(inputs.student_logits, inputs.teacher_logits.argmax(1))
        total = (1 - self.alpha) * ce + self.alpha * hard
        return kdlab.LossOutput(total=total, terms={"ce": ce, "hard": hard})


class LSParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epsilon: float = Field(0.1, ge=0, lt=1, description="probability mass spread uniformly over the classes "
                                                        "(Szegedy et al. use 0.1)")


class LabelSmoothing(kdlab.Loss):
    """Label smoothing (Szegedy et al. 2016, "Rethinking the Inception Architecture for Computer Vision"):
    cross-entropy against ``(1-epsilon)*onehot(y) + epsilon/K``. No teacher: the baseline that tells a soft-target
    gain from a mere regularisation gain (Yuan et al. 2020, "Revisiting Knowledge Distillation via Label Smoothing
    Regularization")."""

    uses_soft_labels = True

    uses_teacher = False
    stackable = True

    def __init__(self, params: LSParams):
        super().__init__()
        self.register_buffer("epsilon", hyper(params.epsilon))

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        if inputs.soft_labels is not None:  # mixup/cutmix: smooth the mixed targets
            smoothed = inputs.soft_labels * (1 - self.epsilon) + self.epsilon / inputs.student_logits.shape[1]
            ce = masked_cross_entropy(inputs.student_logits, inputs.labels, soft_labels=smoothed)
            return kdlab.LossOutput(total=ce, terms={"ce": ce})
        # F.cross_entropy's label_smoothing takes a Python float, so the smoothing is written out as torch does it:
        # (1-eps) * NLL + eps * the mean over classes of -log p, over the labelled rows
        log_p = F.log_softmax(inputs.student_logits, 1)
        labeled = inputs.labeled
        nll = F.nll_loss(log_p, inputs.labels, ignore_index=kdlab.UNLABELED, reduction="sum")
        uniform = -(log_p.sum(1) * labeled).sum() / log_p.shape[1]
        ce = ((1 - self.epsilon) * nll + self.epsilon * uniform) / labeled.sum().clamp_min(1)
        return kdlab.LossOutput(total=ce, terms={"ce": ce})


class DKDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(1.0, ge=0, description="weight of TCKD, the target-class (binary) term")
    beta: float = Field(8.0, ge=0, description="weight of NCKD, the non-target-class term")
    temperature: float = Field(4.0, gt=0, description="softmax temperature T")
    ce_weight: float = Field(1.0, ge=0, description="weight of the cross-entropy on the labels")
    warmup_epochs: int = Field(0, ge=0, description="epochs over which the KD terms ramp up linearly from 0 "
                                                    "(the paper uses 20 of 240; 0: no warm-up)")


class DKD(kdlab.Loss):
    """Decoupled Knowledge Distillation (Zhao et al. CVPR 2022): KD split into TCKD, a binary KL over
    (target, rest), and NCKD, a KL over the non-target classes only, weighted independently:
    ``ce_weight*CE + w(epoch)*T^2*(alpha*TCKD + beta*NCKD)``. Defaults are the paper's CIFAR-100 ones.
    The target class of an unlabeled row is the teacher's argmax."""

    stackable = True

    def __init__(self, params: DKDParams):
        super().__init__()
        self.p = params
        for name in ("alpha", "beta", "temperature", "ce_weight", "warmup_epochs"):
            self.register_buffer(name, hyper(getattr(params, name)))

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        s, t = inputs.student_logits, inputs.teacher_logits.float()
        target = torch.where(inputs.labeled, inputs.labels, t.argmax(1))
        tckd, nckd = dkd_terms(s, t, target, self.temperature)
        ce = masked_cross_entropy(s, inputs.labels)
        # min(epoch / warmup, 1), and 1 without a warm-up (epoch >= 1), in tensor arithmetic
        warm = (inputs.epoch / self.warmup_epochs.clamp_min(1)).clamp(max=1.0)
        t2 = self.temperature ** 2
        total = self.ce_weight * ce + warm * t2 * (self.alpha * tckd + self.beta * nckd)
        return kdlab.LossOutput(total=total, terms={"ce": ce, "tckd": tckd, "nckd": nckd})


def dkd_terms(s: torch.Tensor, t: torch.Tensor, target: torch.Tensor, temperature: float | torch.Tensor):
    """(TCKD, NCKD), each a batch-mean KL at ``temperature`` without the ``T^2`` factor."""
    gt = F.one_hot(target, s.shape[1]).bool()
    log_ps, log_pt = F.log_softmax(s / temperature, 1), F.log_softmax(t / temperature, 1)

    def binary(log_p):  # log of (p_target, p_rest), computed in log space (gather, not a boolean mask: vmap-able)
        return torch.stack([log_p.gather(1, target[:, None])[:, 0],
                            log_p.masked_fill(gt, float("-inf")).logsumexp(1)], 1)

    bs, bt = binary(log_ps), binary(log_pt)
    tckd = (bt.exp() * (bt - bs)).sum(1).mean()
    # a large finite negative (not -inf) keeps 0 * log 0 terms at 0 rather than NaN
    log_ns = F.log_softmax(s.masked_fill(gt, -1e4) / temperature, 1)
    log_nt = F.log_softmax(t.masked_fill(gt, -1e4) / temperature, 1)
    nckd = (log_nt.exp() * (log_nt - log_ns)).sum(1).mean()
    return tckd, nckd
