"""Feature-based losses: a student layer is matched to a teacher layer, both captured with forward hooks.

Layers are named by dotted module path (``blocks.1``); the engine captures their outputs, so the models' ``forward``
stays untouched. A path that does not exist fails in :meth:`setup` with the list of the model's module names.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

import kdlab
from kdlab.functional import layer_outputs, masked_cross_entropy


def _probe(ctx: kdlab.LossSetup, student_layers, teacher_layers) -> tuple[dict, dict]:
    """One forward pass of each model over the example batch: the captured features (checks the paths, too)."""
    x = kdlab.batch.index(ctx.example_x, slice(0, 8))
    s = layer_outputs(ctx.student, x, student_layers, owner="the student", key="loss.params.student_layer(s)")
    t = layer_outputs(ctx.teacher, x, teacher_layers, owner="the teacher", key="loss.params.teacher_layer(s)")
    return s, t


class FitNetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    student_layer: str = Field("blocks.1", description="dotted module path of the student's guided layer")
    teacher_layer: str = Field("blocks.1", description="dotted module path of the teacher's hint layer")
    beta: float = Field(100.0, ge=0, description="weight of the hint (MSE) term; 100 as in Tian et al.'s "
                                                 "single-stage FitNet benchmark (CRD, ICLR 2020)")


class Adapter(nn.Module):
    """Maps a student feature onto the teacher feature's shape: a 1x1 convolution when both are conv maps
    (the student map is first pooled to the teacher's size), otherwise a linear layer on the flattened features."""

    def __init__(self, s_shape: tuple[int, ...], t_shape: tuple[int, ...]):
        super().__init__()
        self.t_shape = t_shape
        self.conv = len(s_shape) == len(t_shape) and len(s_shape) in (2, 3)
        if self.conv:
            conv = nn.Conv1d if len(s_shape) == 2 else nn.Conv2d
            self.pool = nn.AdaptiveAvgPool1d(t_shape[1:]) if len(s_shape) == 2 else nn.AdaptiveAvgPool2d(t_shape[1:])
            self.map = conv(s_shape[0], t_shape[0], 1)
        else:
            self.map = nn.Linear(math.prod(s_shape), math.prod(t_shape))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if self.conv:
            return self.map(self.pool(f))
        return self.map(f.flatten(1)).view(-1, *self.t_shape)


class FitNet(kdlab.Loss):
    """FitNets (Romero et al. ICLR 2015, "FitNets: Hints for Thin Deep Nets"): the student's guided layer, through
    a learned regressor (adapter), is regressed onto the teacher's hint layer:
    ``CE(y, s) + beta * MSE(adapter(f_s), f_t)``. Single-stage (hint and task trained jointly), as in the CRD
    benchmark, rather than the paper's two stages. The adapter is created in :meth:`setup` from the two layers'
    shapes and trained with the student."""

    uses_soft_labels = True

    def __init__(self, params: FitNetParams):
        super().__init__()
        self.beta = params.beta
        self.student_layers = (params.student_layer,)
        self.teacher_layers = (params.teacher_layer,)
        self.adapter: nn.Module | None = None

    def setup(self, ctx: kdlab.LossSetup) -> None:
        s, t = _probe(ctx, self.student_layers, self.teacher_layers)
        s_shape, t_shape = tuple(s[self.student_layers[0]].shape[1:]), tuple(t[self.teacher_layers[0]].shape[1:])
        self.adapter = Adapter(s_shape, t_shape).to(ctx.device)

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        f_s = inputs.student_features[self.student_layers[0]]
        f_t = inputs.teacher_features[self.teacher_layers[0]].float()
        hint = F.mse_loss(self.adapter(f_s.float()), f_t)
        ce = masked_cross_entropy(inputs.student_logits, inputs.labels, soft_labels=inputs.soft_labels)
        return kdlab.LossOutput(total=ce + self.beta * hint, terms={"ce": ce, "hint": hint})


class ATParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    student_layers: list[str] = Field(default_factory=lambda: ["blocks.1"], min_length=1,
                                      description="dotted module paths of the student's layers, paired in order "
                                                  "with teacher_layers")
    teacher_layers: list[str] = Field(default_factory=lambda: ["blocks.1"], min_length=1,
                                      description="dotted module paths of the teacher's layers")
    beta: float = Field(1000.0, ge=0, description="weight of the attention term (the paper's beta = 1000, "
                                                  "applied as beta/2)")
    p: float = Field(2.0, gt=0, description="exponent of the attention map sum_c |F_c|^p")
    resize: bool = Field(True, description="resample maps of different lengths to the shorter one (adaptive "
                                           "average pooling); false: such pairs are an error")

    @model_validator(mode="after")
    def _pairs(self) -> ATParams:
        return pair_up(self)


def pair_up(params):
    """Validator of params with ``student_layers`` and ``teacher_layers`` lists: they pair up in order."""
    if len(params.student_layers) != len(params.teacher_layers):
        raise ValueError(f"student_layers ({len(params.student_layers)}) and teacher_layers "
                         f"({len(params.teacher_layers)}) must pair up: give as many of each")
    return params


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Zagoruyko and Komodakis's activation-based spatial attention: ``mean_c |F_c|^p`` over the channels of a
    conv feature ``(N, C, *spatial)``, flattened over the positions and L2-normalised. A flat feature ``(N, D)``
    (an MLP layer) has no spatial layout: each unit counts as one position with one channel."""
    a = f.abs().pow(p)
    a = a.mean(1).flatten(1) if f.dim() > 2 else a
    return F.normalize(a, dim=1)


class AttentionTransfer(kdlab.Loss):
    """Attention Transfer (Zagoruyko and Komodakis, ICLR 2017, "Paying More Attention to Attention"):
    ``CE(y, s) + beta/2 * sum_pairs mean((Q_s - Q_t)^2)`` with ``Q = normalize(mean_c |F_c|^p)`` (their code's form).
    Pairs of different spatial sizes are pooled to the smaller one. On an MLP student the map is over units (see
    :func:`attention_map`); as unit order is arbitrary, this only asks groups of units to carry the teacher's
    spatial energy profile - a heuristic outside the paper's conv setting."""

    uses_soft_labels = True

    def __init__(self, params: ATParams):
        super().__init__()
        self.p = params
        self.student_layers = tuple(params.student_layers)
        self.teacher_layers = tuple(params.teacher_layers)

    def setup(self, ctx: kdlab.LossSetup) -> None:
        s, t = _probe(ctx, self.student_layers, self.teacher_layers)
        for sl, tl in zip(self.student_layers, self.teacher_layers):
            ns, nt = attention_map(s[sl]).shape[1], attention_map(t[tl]).shape[1]
            if ns != nt and not self.p.resize:
                raise kdlab.KdlabError(f"loss.params: attention maps of student {sl!r} ({ns} positions) and teacher "
                                       f"{tl!r} ({nt} positions) differ; pick layers of equal size or set resize: true")

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        at = inputs.student_logits.new_zeros(())
        for sl, tl in zip(self.student_layers, self.teacher_layers):
            qs = attention_map(inputs.student_features[sl].float(), self.p.p)
            qt = attention_map(inputs.teacher_features[tl].float(), self.p.p)
            if qs.shape[1] != qt.shape[1]:
                n = min(qs.shape[1], qt.shape[1])
                qs = F.normalize(F.adaptive_avg_pool1d(qs.unsqueeze(1), n).squeeze(1), dim=1)
                qt = F.normalize(F.adaptive_avg_pool1d(qt.unsqueeze(1), n).squeeze(1), dim=1)
            at = at + (qs - qt).pow(2).mean()
        ce = masked_cross_entropy(inputs.student_logits, inputs.labels, soft_labels=inputs.soft_labels)
        return kdlab.LossOutput(total=ce + self.p.beta / 2 * at, terms={"ce": ce, "at": at})
