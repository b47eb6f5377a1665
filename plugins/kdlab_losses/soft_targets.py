"""Logit losses that reshape or reweight the soft targets: DIST, NKD, WSLD and Tf-KD's virtual teacher.

Like :mod:`.logits`, each works on the logits alone. Rows without a label (transfer rows) take the teacher's argmax
as their target class where a method needs one (NKD, WSLD), as :class:`.logits.DKD` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

import kdlab
from kdlab.functional import masked_cross_entropy


def _target(inputs: kdlab.LossInputs) -> torch.Tensor:
    """The label, or the teacher's argmax on unlabeled rows."""
    return torch.where(inputs.labeled, inputs.labels, inputs.teacher_logits.argmax(1))


class DISTParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    beta: float = Field(1.0, ge=0, description="weight of the inter-class relation term (paper: 1)")
    gamma: float = Field(1.0, ge=0, description="weight of the intra-class relation term (paper: 1)")
    tau: float = Field(1.0, gt=0, description="softmax temperature (paper: 1 on ImageNet, 4 on CIFAR-100)")
    ce_weight: float = Field(1.0, ge=0, description="weight of the cross-entropy on the labels (paper: 1)")


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation between each row of ``a`` and the same row of ``b`` (the cosine of the centred rows)."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


class DIST(kdlab.Loss):
    """DIST (Huang, You, Wang, Qian and Xu, NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher"): the
    student matches the teacher's predictions up to linear transforms, through Pearson correlations instead of KL:
    ``ce_weight*CE + tau^2 * (beta * (1 - mean_i rho(p_s[i,:], p_t[i,:])) + gamma * (1 - mean_c rho(p_s[:,c],
    p_t[:,c])))`` with ``p = softmax(z / tau)``: the inter-class relation of each row, and the intra-class relation
    of each class over the batch. Defaults are the paper's ImageNet ones."""

    def __init__(self, params: DISTParams):
        super().__init__()
        self.p = params

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        tau = self.p.tau
        p_s = F.softmax(inputs.student_logits / tau, 1)
        p_t = F.softmax(inputs.teacher_logits.float() / tau, 1)
        inter = tau**2 * (1 - pearson_rows(p_s, p_t).mean())
        intra = tau**2 * (1 - pearson_rows(p_s.T, p_t.T).mean())
        ce = masked_cross_entropy(inputs.student_logits, inputs.labels)
        total = self.p.ce_weight * ce + self.p.beta * inter + self.p.gamma * intra
        return kdlab.LossOutput(total=total, terms={"ce": ce, "inter": inter, "intra": intra})


class NKDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(1.0, gt=0, description="temperature lambda of the non-target term (paper: 1)")
    gamma: float = Field(1.5, ge=0, description="weight of the normalized non-target term (paper: 1.5)")
    ce_weight: float = Field(1.0, ge=0, description="weight of the cross-entropy on the labels (paper: 1)")


def non_target(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The columns of ``z`` other than each row's target, in order: shape ``(N, C - 1)``."""
    keep = torch.ones_like(z, dtype=torch.bool).scatter_(1, target.unsqueeze(1), False)
    return z[keep].view(len(z), -1)


class NKD(kdlab.Loss):
    """Normalized KD (Yang, Zeng, Li, Zhang, Yuan and Li, ICCV 2023, "From Knowledge Distillation to
    Self-Knowledge Distillation: A Unified Approach with Normalized Loss and Customized Soft Labels"): KD split into
    a target term and a non-target term whose distributions are renormalised over the non-target classes, so that
    the non-target knowledge is not scaled down by the target probability:
    ``ce_weight*CE - mean_i T_t[i] log S_t[i] - gamma * lambda^2 * mean_i sum_{c != t} N(T^lambda)_c log
    N(S^lambda)_c``, ``T_t``/``S_t`` the teacher's/student's target-class probabilities (plain softmax),
    ``N(.^lambda)`` the softmax at temperature ``lambda`` over the non-target logits (the authors' code form).
    Defaults are the paper's."""

    def __init__(self, params: NKDParams):
        super().__init__()
        self.p = params

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        s, t = inputs.student_logits, inputs.teacher_logits.float()
        target = _target(inputs)
        log_s_t = F.log_softmax(s, 1).gather(1, target.unsqueeze(1))
        t_t = F.softmax(t, 1).gather(1, target.unsqueeze(1))
        target_term = -(t_t * log_s_t).mean()
        lam = self.p.temperature
        log_n_s = F.log_softmax(non_target(s, target) / lam, 1)
        n_t = F.softmax(non_target(t, target) / lam, 1)
        non_target_term = -lam**2 * (n_t * log_n_s).sum(1).mean()
        ce = masked_cross_entropy(s, inputs.labels)
        total = self.p.ce_weight * ce + target_term + self.p.gamma * non_target_term
        return kdlab.LossOutput(total=total, terms={"ce": ce, "nkd_target": target_term,
                                                    "nkd_non_target": non_target_term})


class WSLDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(2.0, gt=0, description="softmax temperature T of the soft labels (authors' code: 2)")
    alpha: float = Field(2.5, ge=0, description="weight of the weighted soft-label term (authors' code: 2.5)")
    ce_weight: float = Field(1.0, ge=0, description="weight of the cross-entropy on the labels")


class WSLD(kdlab.Loss):
    """Weighted Soft Label Distillation (Zhou, Song, Chen, Zhou, Wang, Yuan and Zhang, ICLR 2021, "Rethinking Soft
    Labels for Knowledge Distillation: A Bias-Variance Tradeoff Perspective"): each row's soft-label term is
    weighted by how much worse the student fits its label than the teacher does, so that rows the teacher already
    fits far better (bias-reducing) weigh more and the variance-raising rest less:
    ``ce_weight*CE + alpha * T^2 * mean_i w_i * H(softmax(t_i/T), softmax(s_i/T))``,
    ``w_i = 1 - exp(-max(CE_s,i / CE_t,i, 0))`` with the per-row cross-entropies of the (detached) student and
    teacher logits at temperature 1. The soft term is a cross-entropy, as in the authors' code (the same gradient as
    the KL). Defaults are the authors' code's."""

    def __init__(self, params: WSLDParams):
        super().__init__()
        self.p = params

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        s, t = inputs.student_logits, inputs.teacher_logits.float()
        temp = self.p.temperature
        soft = -(F.softmax(t / temp, 1) * F.log_softmax(s / temp, 1)).sum(1)
        target = _target(inputs)
        with torch.no_grad():
            ce_s = F.cross_entropy(s, target, reduction="none")
            ce_t = F.cross_entropy(t, target, reduction="none")
            weight = 1 - torch.exp(-(ce_s / (ce_t + 1e-7)).clamp_min(0))
        wsl = temp**2 * (weight * soft).mean()
        ce = masked_cross_entropy(s, inputs.labels)
        total = self.p.ce_weight * ce + self.p.alpha * wsl
        return kdlab.LossOutput(total=total, terms={"ce": ce, "wsl": wsl})


class TfRegParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    a: float = Field(0.99, gt=0, lt=1, description="probability of the correct class in the virtual teacher "
                                                   "(paper: 0.99; the other classes share 1-a)")
    temperature: float = Field(20.0, gt=0, description="temperature that softens the virtual teacher (authors' "
                                                       "code for ResNet-18 on CIFAR-100: 20)")
    alpha: float = Field(0.1, ge=0, le=1, description="weight of the regularisation term (1-alpha on the "
                                                      "labels; authors' code: 0.1)")
    weight: float = Field(1.0, ge=0, description="multiplier of the KL term (authors' code: 100 on an element-wise "
                                                 "mean over CIFAR-100's 100 classes, i.e. 1 on the per-row sum)")


class TfKDRegularization(kdlab.Loss):
    """Tf-KD's teacher-free regularisation (Yuan, Tay, Li, Wang and Feng, CVPR 2020, "Revisiting Knowledge
    Distillation via Label Smoothing Regularization"): a hand-designed virtual teacher puts probability ``a`` on the
    correct class and ``(1-a)/(K-1)`` on each other one; the student learns from it as from a teacher:
    ``(1-alpha)*CE(y, s) + alpha * weight * mean_i KL(softmax(u_i / T) || softmax(s_i))``, the virtual teacher
    ``u`` softened at temperature ``T`` and the student at temperature 1, as in the authors' code. No teacher is
    needed; unlabeled rows (which only appear with a teacher) are left out."""

    uses_teacher = False

    def __init__(self, params: TfRegParams):
        super().__init__()
        self.p = params

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        s = inputs.student_logits
        ce = masked_cross_entropy(s, inputs.labels)
        k = s.shape[1]
        labeled = inputs.labeled
        u = torch.full_like(s, (1 - self.p.a) / (k - 1))
        u[labeled] = u[labeled].scatter(1, inputs.labels[labeled].unsqueeze(1), self.p.a)
        kl = F.kl_div(F.log_softmax(s, 1), F.log_softmax(u / self.p.temperature, 1), log_target=True,
                      reduction="none").sum(1)
        reg = (kl * labeled).sum() / labeled.sum().clamp_min(1)
        total = (1 - self.p.alpha) * ce + self.p.alpha * self.p.weight * reg
        return kdlab.LossOutput(total=total, terms={"ce": ce, "tf_reg": reg})
