"""Relation-based losses: the student mimics how the teacher relates the examples of a batch to each other.

Both compare embeddings of the same batch, so their sizes need not match and no adapter is needed. The embedding
is the output of the named layer (flattened), or the logits when no layer is named.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

import kdlab
from kdlab.functional import masked_cross_entropy

from .features import _probe

_LAYER = ("dotted module path of the {} embedding layer (its output is flattened); null: the logits")


class _RelationLoss(kdlab.Loss):
    uses_soft_labels = True

    def __init__(self, student_layer: str | None, teacher_layer: str | None):
        super().__init__()
        self.s_layer, self.t_layer = student_layer, teacher_layer
        self.student_layers = (student_layer,) if student_layer else ()
        self.teacher_layers = (teacher_layer,) if teacher_layer else ()

    def setup(self, ctx: kdlab.LossSetup) -> None:
        if self.student_layers or self.teacher_layers:
            _probe(ctx, self.student_layers, self.teacher_layers)

    def embeddings(self, inputs: kdlab.LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
        s = inputs.student_features[self.s_layer] if self.s_layer else inputs.student_logits
        t = inputs.teacher_features[self.t_layer] if self.t_layer else inputs.teacher_logits
        return s.float().flatten(1), t.float().flatten(1)


class RKDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    student_layer: str | None = Field(None, description=_LAYER.format("student's"))
    teacher_layer: str | None = Field(None, description=_LAYER.format("teacher's"))
    distance_weight: float = Field(25.0, ge=0, description="weight of the distance term (paper: 25)")
    angle_weight: float = Field(50.0, ge=0, description="weight of the angle term (paper: 50)")


def pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of ``e``, normalised by their mean over distinct pairs."""
    sq = e.pow(2).sum(1)
    # clamped before the square root: a zero distance (the diagonal) would give an infinite gradient
    d = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2 * e @ e.T).clamp_min(1e-12).sqrt()
    off = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    d = d * off
    if len(e) < 2:  # a batch of one row has no pairs
        return d
    return d / d[off].mean().clamp_min(1e-12)


def triplet_angles(e: torch.Tensor) -> torch.Tensor:
    """``cos`` of the angle at ``j`` between ``e_i - e_j`` and ``e_k - e_j``, for every triplet ``[j, i, k]``
    (flattened; 0 where ``i`` or ``k`` is ``j``). From the Gram matrix ``G``: ``<e_i - e_j, e_k - e_j> =
    G_ik - G_ij - G_jk + G_jj``, which costs ``B^3`` rather than ``B^3 * D`` of the direct form."""
    g = e @ e.T
    diag = g.diagonal()
    dot = g.unsqueeze(0) - g.unsqueeze(2) - g.unsqueeze(1) + diag.view(-1, 1, 1)  # dot[j, i, k]
    sq = (diag.view(-1, 1) - 2 * g + diag.view(1, -1)).clamp_min(1e-12)  # sq[j, i] = |e_i - e_j|^2
    norm = sq.sqrt() * (~torch.eye(len(e), dtype=torch.bool, device=e.device))
    inv = torch.where(norm > 0, 1 / norm.clamp_min(1e-12), torch.zeros_like(norm))
    return (dot * inv.unsqueeze(2) * inv.unsqueeze(1)).flatten()


class RKD(_RelationLoss):
    """Relational Knowledge Distillation (Park et al. CVPR 2019): the student matches the teacher's
    mean-normalised pairwise distances and triplet angles over the batch, with Huber (smooth L1) losses:
    ``CE(y, s) + w_d * L_dist + w_a * L_angle``."""

    def __init__(self, params: RKDParams):
        super().__init__(params.student_layer, params.teacher_layer)
        self.p = params

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        s, t = self.embeddings(inputs)
        with torch.no_grad():
            td, ta = pairwise_distances(t), triplet_angles(t)
        dist = F.smooth_l1_loss(pairwise_distances(s), td)
        angle = F.smooth_l1_loss(triplet_angles(s), ta)
        ce = masked_cross_entropy(inputs.student_logits, inputs.labels, soft_labels=inputs.soft_labels)
        total = ce + self.p.distance_weight * dist + self.p.angle_weight * angle
        return kdlab.LossOutput(total=total, terms={"ce": ce, "rkd_distance": dist, "rkd_angle": angle})


class PKTParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    student_layer: str | None = Field(None, description=_LAYER.format("student's"))
    teacher_layer: str | None = Field(None, description=_LAYER.format("teacher's"))
    beta: float = Field(1.0, ge=0, description="weight of the PKT term (the paper trains on it alone)")


def cosine_affinity(e: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Rows of the cosine kernel ``(cos + 1) / 2`` normalised to conditional probabilities ``P(j | i)``."""
    n = F.normalize(e, dim=1)
    k = (n @ n.T + 1) / 2
    return k / k.sum(1, keepdim=True).clamp_min(eps)


class PKT(_RelationLoss):
    """Probabilistic Knowledge Transfer (Passalis and Tefas, ECCV 2018, "Learning Deep Representations with
    Probabilistic Knowledge Transfer"): the conditional probabilities given by a cosine kernel between the batch's
    embeddings, ``P(j|i)``, of the student match the teacher's in KL divergence:
    ``CE(y, s) + beta * mean_i sum_j p_t(j|i) log(p_t(j|i) / p_s(j|i))``."""

    def __init__(self, params: PKTParams):
        super().__init__(params.student_layer, params.teacher_layer)
        self.beta = params.beta

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        s, t = self.embeddings(inputs)
        eps = 1e-7
        ps, pt = cosine_affinity(s), cosine_affinity(t).detach()
        pkt = (pt * torch.log((pt + eps) / (ps + eps))).sum(1).mean()
        ce = masked_cross_entropy(inputs.student_logits, inputs.labels, soft_labels=inputs.soft_labels)
        return kdlab.LossOutput(total=ce + self.beta * pkt, terms={"ce": ce, "pkt": pkt})
