"""Relation-based losses: the student mimics how the teacher relates the examples of a batch to each other.

All compare embeddings of the same batch, so their sizes need not match and no adapter is needed. The embedding
is the output of the named layer (flattened), or the logits when no layer is named.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

import kdlab
from kdlab.functional import masked_cross_entropy

from .features import _probe, pair_up

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


def _angle_factors(e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(G, w, p)`` from which every triplet's angle cosine follows in a few passes over ``B^3`` values:
    ``cos[j, i, k] = w_ji w_jk G_ik - p_ji w_jk - w_ji p_jk``, where ``G = e e^T``, ``w_ji = 1 / |e_i - e_j|``
    (0 where ``e_i = e_j``, the diagonal included) and ``p_ji = w_ji (G_ji - G_jj / 2)``; expanded, that is
    ``(G_ik - G_ij - G_jk + G_jj) w_ji w_jk = <e_i - e_j, e_k - e_j> / (|e_i - e_j| |e_k - e_j|)``.

    The rows are centred first (angles do not move with a translation), which keeps the Gram form's cancellation
    small. Two rows closer than that form's rounding (``|e_i - e_j|^2 <= 64 eps (|e_i|^2 + |e_j|^2)``) count as one
    point, with angles of 0 as equal rows get in the paper's code (which normalises the differences), rather than
    rounding noise times ``1e6``."""
    e = e - e.mean(0)
    g = e @ e.T
    diag = g.diagonal()
    norms = diag.view(-1, 1) + diag.view(1, -1)
    sq = norms - 2 * g
    apart = sq > 64 * torch.finfo(e.dtype).eps * norms  # False on the diagonal
    # clamped before the square root: a zero distance would give an infinite gradient
    w = torch.where(apart, 1 / sq.clamp_min(1e-12).sqrt(), torch.zeros_like(sq))
    return g, w, w * (g - diag.view(-1, 1) / 2)


def _angles(g: torch.Tensor, w: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``cos[j, i, k]`` (shape ``(B, B, B)``) from :func:`_angle_factors`: the product term in two passes, then the
    two rank-one terms per anchor ``j`` in one batched multiply-add."""
    a = w.unsqueeze(2) * w.unsqueeze(1)
    a.mul_(g)
    return a.baddbmm_(torch.stack([p, w], 2), torch.stack([-w, -p], 1))


def triplet_angles(e: torch.Tensor) -> torch.Tensor:
    """``cos`` of the angle at ``j`` between ``e_i - e_j`` and ``e_k - e_j``, for every triplet ``[j, i, k]``
    (flattened; 0 where ``i`` or ``k`` is ``j``)."""
    return _angles(*_angle_factors(e)).flatten()


class _AngleLoss(torch.autograd.Function):
    """Mean smooth-L1 (Huber, beta 1) between the student's triplet angles, given by their factors, and the
    teacher's ``target``. Its own backward: autograd through :func:`_angles` would keep and revisit a dozen
    ``B^3`` tensors; here the whole step uses two ``B^3`` buffers (the teacher's angles, reused for the Huber
    gradient, and the student's, reused as scratch) and about fifteen passes over them."""

    @staticmethod
    def forward(ctx, g, w, p, target):
        d = _angles(g, w, p).sub_(target)
        r = torch.clamp(d, -1, 1, out=target)  # the Huber gradient, in the teacher's buffer
        # Huber: d^2 / 2 where |d| < 1, else |d| - 1/2; that is r * (d - r / 2), in place
        loss = d.sub_(r, alpha=0.5).mul_(r).sum() / d.numel()
        ctx.save_for_backward(g, w, p, r)
        ctx.scratch = d
        return loss

    @staticmethod
    def backward(ctx, grad):
        g, w, p, r = ctx.saved_tensors
        t, ctx.scratch = ctx.scratch, None
        scale = grad / r.numel()
        # r[j, i, k] is symmetric in i and k, as the angles are: a sum over k of r[j, a, k] * v[j, k] is the row
        # vector v[j] times the matrix r[j], one batched product; each term of cos counts twice (as i and as k)
        wp = torch.bmm(torch.stack([w, p], 1), r)  # sum_k r[j,a,k] w_jk, sum_k r[j,a,k] p_jk
        wg = torch.bmm(w.unsqueeze(1), torch.mul(r, g, out=t)).squeeze(1)  # sum_k r[j,a,k] w_jk G_ak
        # sum_j r[j,i,k] w_ji w_jk: a matrix-vector product over j (faster than a reduction over the first axis)
        torch.mul(r, w.unsqueeze(2), out=t).mul_(w.unsqueeze(1))
        d_g = torch.mv(t.view(len(w), -1).T, w.new_ones(len(w))).view_as(g)
        return d_g * scale, (wg - wp[:, 1]) * (2 * scale), wp[:, 0] * (-2 * scale), None


def angle_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """RKD's angle term: ``smooth_l1(triplet_angles(s), triplet_angles(t))``, the teacher side without gradient.
    The same value as written so, in a fraction of the time and memory (see :class:`_AngleLoss`)."""
    with torch.autocast(s.device.type, enabled=False):  # at least float32, whatever the run's precision
        dtype = torch.promote_types(s.dtype, torch.float32)
        s, t = s.to(dtype), t.to(dtype)
        with torch.no_grad():
            target = _angles(*_angle_factors(t))
        return _AngleLoss.apply(*_angle_factors(s), target)


class RKD(_RelationLoss):
    """Relational Knowledge Distillation (Park et al. CVPR 2019): the student matches the teacher's
    mean-normalised pairwise distances and triplet angles over the batch, with Huber (smooth L1) losses:
    ``CE(y, s) + w_d * L_dist + w_a * L_angle``. The angle term covers every triplet of the batch (``B^3`` values,
    as the paper's), so it costs far more than ``kd`` at batch 128; :func:`angle_loss` computes it in a few passes
    with its own backward."""

    def __init__(self, params: RKDParams):
        super().__init__(params.student_layer, params.teacher_layer)
        self.p = params

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        s, t = self.embeddings(inputs)
        with torch.no_grad():
            td = pairwise_distances(t)
        dist = F.smooth_l1_loss(pairwise_distances(s), td)
        angle = angle_loss(s, t)
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


class SPParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    student_layers: list[str] = Field(default_factory=lambda: ["blocks.1"], min_length=1,
                                      description="dotted module paths of the student's layers, paired in order "
                                                  "with teacher_layers (outputs flattened)")
    teacher_layers: list[str] = Field(default_factory=lambda: ["blocks.1"], min_length=1,
                                      description="dotted module paths of the teacher's layers")
    beta: float = Field(3000.0, ge=0, description="weight gamma of the similarity term (paper: 3000)")

    @model_validator(mode="after")
    def _pairs(self) -> SPParams:
        return pair_up(self)


def similarity_matrix(f: torch.Tensor) -> torch.Tensor:
    """Tung and Mori's batch similarity: ``G = F F^T`` of the flattened features, each row L2-normalised."""
    f = f.flatten(1)
    return F.normalize(f @ f.T, dim=1)


class SimilarityPreserving(kdlab.Loss):
    """Similarity-Preserving KD (Tung and Mori, ICCV 2019, "Similarity-Preserving Knowledge Distillation"): pairs of
    inputs that activate the teacher similarly should activate the student similarly:
    ``CE(y, s) + beta * sum_pairs ||G_t - G_s||_F^2 / b^2``, ``G`` the row-normalised ``b x b`` similarity
    matrix of a layer's flattened outputs over the batch (:func:`similarity_matrix`). Layer sizes need not match."""

    def __init__(self, params: SPParams):
        super().__init__()
        self.beta = params.beta
        self.student_layers = tuple(params.student_layers)
        self.teacher_layers = tuple(params.teacher_layers)

    def setup(self, ctx: kdlab.LossSetup) -> None:
        _probe(ctx, self.student_layers, self.teacher_layers)

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        sp = inputs.student_logits.new_zeros(())
        for sl, tl in zip(self.student_layers, self.teacher_layers):
            g_s = similarity_matrix(inputs.student_features[sl].float())
            g_t = similarity_matrix(inputs.teacher_features[tl].float())
            sp = sp + (g_t - g_s).pow(2).sum() / len(g_s) ** 2
        ce = masked_cross_entropy(inputs.student_logits, inputs.labels)
        return kdlab.LossOutput(total=ce + self.beta * sp, terms={"ce": ce, "sp": sp})


class CCParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    student_layer: str | None = Field("blocks.1", description=_LAYER.format("student's"))
    teacher_layer: str | None = Field("blocks.1", description=_LAYER.format("teacher's"))
    gamma: float = Field(0.4, gt=0, description="gamma of the Gaussian RBF kernel exp(-gamma |x - y|^2)")
    order: int = Field(2, ge=0, le=10, description="order P of the kernel's Taylor expansion (paper: 2)")
    beta: float = Field(1.0, ge=0, description="weight of the correlation-congruence term (the paper sets none "
                                               "for this form; 1)")


def rbf_correlation(e: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    """The batch's correlation matrix under the Gaussian RBF kernel of L2-normalised embeddings, by its Taylor
    expansion: ``exp(-gamma |x - y|^2) = exp(-2 gamma) exp(2 gamma x.y) ~ sum_{p<=P} exp(-2 gamma) (2 gamma)^p /
    p! (x.y)^p``."""
    n = F.normalize(e, dim=1)
    sim = n @ n.T
    powers = sim.unsqueeze(0) ** torch.arange(order + 1, device=e.device, dtype=e.dtype).view(-1, 1, 1)
    coef = [math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) for p in range(order + 1)]
    return (e.new_tensor(coef).view(-1, 1, 1) * powers).sum(0)


class CorrelationCongruence(_RelationLoss):
    """Correlation Congruence (Peng, Jin, Liu, Zhou, Wu, Liu, Li and Zhang, ICCV 2019, "Correlation Congruence for
    Knowledge Distillation"): the student matches the correlation between the batch's instances, not only each
    instance: ``CE(y, s) + beta * ||C_t - C_s||_F^2 / n^2`` with ``C`` the ``n x n`` Gaussian-RBF correlation of
    the L2-normalised embeddings, approximated by the P-th order Taylor series (:func:`rbf_correlation`). The
    instance-level KD term of the paper's full objective is the ``kd`` loss; this is the correlation term alone."""

    def __init__(self, params: CCParams):
        super().__init__(params.student_layer, params.teacher_layer)
        self.p = params

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        s, t = self.embeddings(inputs)
        with torch.no_grad():
            c_t = rbf_correlation(t, self.p.gamma, self.p.order)
        cc = (rbf_correlation(s, self.p.gamma, self.p.order) - c_t).pow(2).mean()
        ce = masked_cross_entropy(inputs.student_logits, inputs.labels, soft_labels=inputs.soft_labels)
        return kdlab.LossOutput(total=ce + self.p.beta * cc, terms={"ce": ce, "cc": cc})
