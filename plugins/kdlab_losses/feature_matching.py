"""Feature losses beyond hints: each student layer meets a teacher layer as a likelihood (VID), a distribution of
channel activations (NST) or the signs of pre-activations (AB).

Layers pair up in order (``student_layers[i]`` with ``teacher_layers[i]``). Conv maps ``(N, C, *spatial)`` keep
their channels; where the two maps of a pair differ in size, the larger is average-pooled to the smaller. Flat
features ``(N, D)`` (an MLP's layers) have no channels and no positions; each loss says how it treats them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

import kdlab
from kdlab.functional import masked_cross_entropy

from .features import _probe, pair_up

_STUDENT = ("dotted module paths of the student's layers, paired in order with teacher_layers")
_TEACHER = "dotted module paths of the teacher's layers"


def _shapes(ctx: kdlab.LossSetup, loss: kdlab.Loss) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """``(student shape, teacher shape)`` of each pair, without the batch dimension."""
    s, t = _probe(ctx, loss.student_layers, loss.teacher_layers)
    return [(tuple(s[sl].shape[1:]), tuple(t[tl].shape[1:])) for sl, tl in zip(loss.student_layers,
                                                                                loss.teacher_layers)]


def _is_conv_pair(s_shape: tuple[int, ...], t_shape: tuple[int, ...]) -> bool:
    """Both conv maps of the same kind: (C, L) or (C, H, W)."""
    return len(s_shape) == len(t_shape) and len(s_shape) in (2, 3)


def adaptive_pool(f: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``adaptive_avg_pool{1,2}d(f, size)`` over the trailing ``len(size)`` axes; where each axis divides evenly,
    as a reshape and a mean (the same values, a fraction of the time on a CPU)."""
    spatial = f.shape[f.dim() - len(size):]
    if tuple(spatial) == tuple(size):
        return f
    if all(a % b == 0 for a, b in zip(spatial, size)):
        shape = [d for b, a in zip(size, spatial) for d in (b, a // b)]
        return f.reshape(*f.shape[:f.dim() - len(size)], *shape).mean(tuple(range(f.dim() - len(size) + 1,
                                                                                    f.dim() + len(size), 2)))
    return (F.adaptive_avg_pool1d if len(size) == 1 else F.adaptive_avg_pool2d)(f, size)


def pool_to_smaller(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two conv maps of one kind, each average-pooled to the smaller size along every spatial axis."""
    size = tuple(min(a, b) for a, b in zip(f_s.shape[2:], f_t.shape[2:]))
    return adaptive_pool(f_s, size), adaptive_pool(f_t, size)


def _conv(dims: int):
    return nn.Conv1d if dims == 1 else nn.Conv2d


# -- VID -----------------------------------------------------------------------------------------------------------


class VIDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    student_layers: list[str] = Field(default_factory=lambda: ["blocks.0", "blocks.1"], min_length=1,
                                      description=_STUDENT)
    teacher_layers: list[str] = Field(default_factory=lambda: ["blocks.0", "blocks.1"], min_length=1,
                                      description=_TEACHER)
    beta: float = Field(1.0, ge=0, description="weight lambda of the VID term, summed over the pairs (1, as in "
                                               "Tian et al.'s benchmark, CRD ICLR 2020)")
    init_variance: float = Field(5.0, gt=0, description="initial variance of every channel (authors' code: 5)")
    eps: float = Field(1e-5, gt=0, description="floor added to the variance")

    @model_validator(mode="after")
    def _pairs(self) -> VIDParams:
        return pair_up(self)


class VIDRegressor(nn.Module):
    """The mean ``mu(f_s)`` of VID's Gaussian and its per-channel variance ``softplus(alpha) + eps``, the hidden
    width the teacher's channels (as the authors' code).

    Conv pairs: three 1x1 convolutions without bias (ReLU between), the two maps pooled to the smaller size first.
    Any other pair: the same as linear layers, from the flattened student feature to the teacher's whole feature
    (its last layer widened to the teacher's channels times positions). Either way the variance is one per teacher
    channel, shared by its positions; a flat teacher feature's channels are its units."""

    def __init__(self, s_shape: tuple[int, ...], t_shape: tuple[int, ...], init_variance: float, eps: float):
        super().__init__()
        self.conv = _is_conv_pair(s_shape, t_shape)
        self.t_shape = t_shape
        c_out = t_shape[0]
        if self.conv:
            conv = _conv(len(s_shape) - 1)
            layers = [conv(s_shape[0], c_out, 1, bias=False), nn.ReLU(), conv(c_out, c_out, 1, bias=False),
                      nn.ReLU(), conv(c_out, c_out, 1, bias=False)]
        else:
            layers = [nn.Linear(math.prod(s_shape), c_out, bias=False), nn.ReLU(),
                      nn.Linear(c_out, c_out, bias=False), nn.ReLU(), nn.Linear(c_out, math.prod(t_shape), bias=False)]
        self.mean = nn.Sequential(*layers)
        self.eps = eps
        # softplus^-1(init_variance - eps): the variance starts at init_variance
        self.alpha = nn.Parameter(torch.full((c_out,), math.log(math.expm1(init_variance - eps))))

    def variance(self) -> torch.Tensor:
        return F.softplus(self.alpha) + self.eps

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        """Mean over the batch and every target value of ``-log q(t | s)`` (less the constant)."""
        if self.conv:
            f_s, f_t = pool_to_smaller(f_s, f_t)
            mu = self.mean(f_s)
        else:
            mu = self.mean(f_s.flatten(1)).view(-1, *self.t_shape)
        var = self.variance()
        # mean of 1/2 ((mu - t)^2 / var + log var): log var is one value per channel, each with as many positions
        scale = (0.5 / var).view(1, -1, *([1] * (f_t.dim() - 2)))
        return ((mu - f_t).square() * scale).mean() + 0.5 * var.log().mean()


class VID(kdlab.Loss):
    """Variational Information Distillation (Ahn, Hu, Damianou, Lawrence and Dai, CVPR 2019, "Variational
    Information Distillation for Knowledge Transfer"): maximises a variational lower bound of the mutual
    information between each student layer and its teacher layer, with a Gaussian ``q(t | s)`` whose mean is a
    learned regressor of the student feature and whose variance is learned per channel (heteroscedastic across
    channels, shared over positions) through a softplus: ``CE(y, s) + beta * sum_pairs mean(1/2 * ((mu(s) - t)^2 /
    sigma^2 + log sigma^2))``, ``sigma^2 = softplus(alpha) + eps`` (:class:`VIDRegressor`; the authors' code form).
    The regressors are created in :meth:`setup` and trained with the student. Speed: three layers per pair are
    trained beside the student, as deep as an MLP student itself, so an epoch takes 3-5x ``kd``'s
    (``benchmarks/results/loss_speed.md``): the method's regressors, not overhead."""

    def __init__(self, params: VIDParams):
        super().__init__()
        self.p = params
        self.student_layers = tuple(params.student_layers)
        self.teacher_layers = tuple(params.teacher_layers)
        self.regressors = nn.ModuleList()

    def setup(self, ctx: kdlab.LossSetup) -> None:
        self.regressors = nn.ModuleList(VIDRegressor(s, t, self.p.init_variance, self.p.eps)
                                        for s, t in _shapes(ctx, self)).to(ctx.device)

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        vid = inputs.student_logits.new_zeros(())
        for reg, sl, tl in zip(self.regressors, self.student_layers, self.teacher_layers):
            vid = vid + reg(inputs.student_features[sl].float(), inputs.teacher_features[tl].float())
        ce = masked_cross_entropy(inputs.student_logits, inputs.labels)
        return kdlab.LossOutput(total=ce + self.p.beta * vid, terms={"ce": ce, "vid": vid})


# -- NST -----------------------------------------------------------------------------------------------------------


class NSTParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    student_layers: list[str] = Field(default_factory=lambda: ["blocks.1"], min_length=1, description=_STUDENT)
    teacher_layers: list[str] = Field(default_factory=lambda: ["blocks.1"], min_length=1, description=_TEACHER)
    beta: float = Field(50.0, ge=0, description="weight lambda of the MMD term (paper: 50 for the polynomial "
                                                "kernel)")

    @model_validator(mode="after")
    def _pairs(self) -> NSTParams:
        return pair_up(self)


def channel_samples(f: torch.Tensor) -> torch.Tensor:
    """NST's samples: each channel's map over the positions, L2-normalised, as ``(N, C, positions)``. A flat
    feature ``(N, D)`` is one channel over ``D`` positions (as :func:`.features.attention_map` counts units)."""
    f = f.flatten(2) if f.dim() > 2 else f.unsqueeze(1)
    return F.normalize(f, dim=2)


def poly_mmd(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Squared MMD between the channel samples of ``s`` and ``t`` (each ``(N, C, P)``) under the polynomial kernel
    ``k(x, y) = (x.y)^2``, averaged over the batch. The teacher's own term has no gradient."""
    def k(a, b):
        return (a @ b.transpose(1, 2)).pow(2).mean((1, 2))

    return (k(t, t).detach() + k(s, s) - 2 * k(s, t)).mean()


class NST(kdlab.Loss):
    """Neural Selectivity Transfer (Huang and Wang 2017, "Like What You Like: Knowledge Distill via Neuron
    Selectivity Transfer", arXiv:1707.01219): the distribution of the student's channel activation maps (each map,
    L2-normalised over the positions, is one sample) matches the teacher's in squared maximum mean discrepancy with
    the polynomial kernel ``(x.y)^2`` (d = 2, c = 0): ``CE(y, s) + beta * sum_pairs MMD^2`` (:func:`poly_mmd`).
    Channel counts need not match; maps of different sizes are pooled to the smaller. On a flat (MLP) layer each
    layer is a single sample over its units (pooled to the shorter), so the term becomes ``2 - 2 cos^2`` between
    the two layers' unit profiles - a heuristic outside the paper's conv setting, like ``at`` on an MLP."""

    def __init__(self, params: NSTParams):
        super().__init__()
        self.beta = params.beta
        self.student_layers = tuple(params.student_layers)
        self.teacher_layers = tuple(params.teacher_layers)

    def setup(self, ctx: kdlab.LossSetup) -> None:
        for (sl, tl), (s, t) in zip(zip(self.student_layers, self.teacher_layers), _shapes(ctx, self)):
            if len(s) > 1 and len(t) > 1 and len(s) != len(t):
                raise kdlab.KdlabError(f"loss.params: NST pairs maps of one kind; student {sl!r} is {s} and teacher "
                                       f"{tl!r} is {t}")

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        nst = inputs.student_logits.new_zeros(())
        for sl, tl in zip(self.student_layers, self.teacher_layers):
            f_s, f_t = inputs.student_features[sl].float(), inputs.teacher_features[tl].float()
            if f_s.dim() > 2 and f_t.dim() > 2:
                f_s, f_t = pool_to_smaller(f_s, f_t)
            s, t = channel_samples(f_s), channel_samples(f_t)
            if s.shape[2] != t.shape[2]:  # flat features of different widths
                n = min(s.shape[2], t.shape[2])
                s, t = (F.normalize(adaptive_pool(x, (n,)), dim=2) for x in (s, t))
            nst = nst + poly_mmd(s, t)
        ce = masked_cross_entropy(inputs.student_logits, inputs.labels)
        return kdlab.LossOutput(total=ce + self.beta * nst, terms={"ce": ce, "nst": nst})


# -- AB ------------------------------------------------------------------------------------------------------------


class ABParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    student_layers: list[str] = Field(default_factory=lambda: ["blocks.0.0", "blocks.1.0"], min_length=1,
                                      description=_STUDENT + "; name the layer before the activation (an MLP's "
                                                             "Linear blocks.<i>.0)")
    teacher_layers: list[str] = Field(default_factory=lambda: ["blocks.0.0", "blocks.1.0"], min_length=1,
                                      description=_TEACHER + ", before the activation")
    margin: float = Field(1.0, ge=0, description="margin mu of the alternative L2 loss (paper: 1)")
    beta: float = Field(1.0, ge=0, description="weight of the AB term (the paper trains on it alone, before KD)")

    @model_validator(mode="after")
    def _pairs(self) -> ABParams:
        return pair_up(self)


class Connector(nn.Module):
    """AB's connector from a student layer to the teacher's: a 1x1 convolution and batch norm for two conv maps
    (the student map pooled to the teacher's size first), otherwise a linear layer and batch norm on the flattened
    features, reshaped to the teacher's shape."""

    def __init__(self, s_shape: tuple[int, ...], t_shape: tuple[int, ...]):
        super().__init__()
        self.t_shape = t_shape
        self.conv = _is_conv_pair(s_shape, t_shape)
        if self.conv:
            dims = len(s_shape) - 1
            bn = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
            self.map = nn.Sequential(_conv(dims)(s_shape[0], t_shape[0], 1, bias=False), bn(t_shape[0]))
        else:
            self.map = nn.Sequential(nn.Linear(math.prod(s_shape), math.prod(t_shape), bias=False),
                                     nn.BatchNorm1d(math.prod(t_shape)))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if self.conv:
            return self.map(adaptive_pool(f, self.t_shape[1:]))
        return self.map(f.flatten(1)).view(-1, *self.t_shape)


def alternative_l2(source: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """Heo et al.'s activation-boundary loss, summed: where the teacher's neuron is off (``t <= 0``) the student's
    pre-activation is pushed below ``-margin``, where it is on, above ``margin``:
    ``sum (s + mu)^2 [s > -mu, t <= 0] + (s - mu)^2 [s <= mu, t > 0]``, which is ``sum relu(mu - sign(t) s)^2``
    with ``sign(t) = 1`` where ``t > 0`` and ``-1`` elsewhere (both cases in one expression)."""
    return F.relu(margin - torch.where(target > 0, source, -source)).square().sum()


class ActivationBoundaries(kdlab.Loss):
    """Activation Boundary distillation (Heo, Lee, Yun and Choi, AAAI 2019, "Knowledge Transfer via Distillation of
    Activation Boundaries Formed by Hidden Neurons"), in its loss form: the student's pre-activations, through a
    learned connector, fall on the same side of zero as the teacher's, by a margin:
    ``CE(y, s) + beta * sum_i 2^-(n-1-i) * 3/1000 * alt_L2(r(s_i), t_i) / N`` (:func:`alternative_l2`), the
    deepest pair (the last) weighted 1 and each shallower one half the next, with the authors' code's scaling.
    The paper trains with this term alone as an initialisation stage before KD; here it is added to the
    cross-entropy in one stage (chain a ``kd`` run to reproduce the two stages). The connectors
    (:class:`Connector`) are created in :meth:`setup` and trained with the student. Speed: each connector is a
    layer as wide as the teacher's (with batch norm) trained beside the student, so on an MLP student an epoch
    takes about 4x ``kd``'s (``benchmarks/results/loss_speed.md``): the method's extra network, not overhead."""

    def __init__(self, params: ABParams):
        super().__init__()
        self.p = params
        self.student_layers = tuple(params.student_layers)
        self.teacher_layers = tuple(params.teacher_layers)
        self.connectors = nn.ModuleList()

    def setup(self, ctx: kdlab.LossSetup) -> None:
        self.connectors = nn.ModuleList(Connector(s, t) for s, t in _shapes(ctx, self)).to(ctx.device)

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        n = len(self.connectors)
        ab = inputs.student_logits.new_zeros(())
        for i, (conn, sl, tl) in enumerate(zip(self.connectors, self.student_layers, self.teacher_layers)):
            source = conn(inputs.student_features[sl].float())
            target = inputs.teacher_features[tl].float()
            ab = ab + 2.0 ** -(n - 1 - i) * alternative_l2(source, target, self.p.margin) / len(source)
        ab = ab * 3 / 1000
        ce = masked_cross_entropy(inputs.student_logits, inputs.labels)
        return kdlab.LossOutput(total=ce + self.p.beta * ab, terms={"ce": ce, "ab": ab})
