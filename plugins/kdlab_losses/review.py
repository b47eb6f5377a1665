"""ReviewKD: several student stages, fused from the deepest back with attention (ABF), are matched to the teacher's
stages at several pyramid levels (HCL)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

import kdlab
from kdlab.functional import masked_cross_entropy

from .feature_matching import adaptive_pool
from .features import _probe, pair_up


class ReviewKDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    student_layers: list[str] = Field(default_factory=lambda: ["blocks.0", "blocks.1"], min_length=1,
                                      description="dotted module paths of the student's stages, shallowest first, "
                                                  "paired in order with teacher_layers")
    teacher_layers: list[str] = Field(default_factory=lambda: ["blocks.0", "blocks.1"], min_length=1,
                                      description="dotted module paths of the teacher's stages, shallowest first")
    weight: float = Field(1.0, ge=0, description="weight of the review (HCL) term (paper, CIFAR-100: 1)")
    max_mid_channels: int = Field(512, ge=1, description="ABF's hidden channels: the deepest student stage's, at "
                                                         "most this (paper: 512)")
    warmup_epochs: int = Field(0, ge=0, description="epochs over which the review term ramps up linearly from 0 "
                                                    "(the paper uses 20 of 240; 0: no warm-up)")

    @model_validator(mode="after")
    def _pairs(self) -> ReviewKDParams:
        return pair_up(self)


class ABF(nn.Module):
    """Attention-based fusion of one stage: the stage's student feature (a 1x1 conv and batch norm to
    ``mid`` channels) is fused with the residual from the deeper stage by two sigmoid attention maps (when
    ``fuse``), resized to the teacher stage's size, and mapped to the teacher's channels (3x3 conv and batch norm).
    Returns ``(output, residual for the next, shallower stage)``. ``dims`` is the number of spatial axes (1 or 2)."""

    def __init__(self, c_in: int, mid: int, c_out: int, fuse: bool, dims: int):
        super().__init__()
        conv, bn = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
        self.conv1 = nn.Sequential(conv(c_in, mid, 1, bias=False), bn(mid))
        self.conv2 = nn.Sequential(conv(mid, c_out, 3, padding=1, bias=False), bn(c_out))
        self.att = nn.Sequential(conv(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, out_size: tuple[int, ...]):
        x = self.conv1(x)
        if self.att is not None:
            residual = F.interpolate(residual, size=x.shape[2:], mode="nearest")
            z = self.att(torch.cat([x, residual], 1))
            x = x * z[:, :1] + residual * z[:, 1:]
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv2(x), x


def hcl(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Hierarchical context loss of one stage: the MSE of the maps, plus the MSE after average pooling to 4, 2
    and 1 positions per axis (each level smaller than the map, weighted 1/2, 1/4, ...), normalised by the weights'
    sum."""
    loss, weight, total = F.mse_loss(f_s, f_t), 1.0, 1.0
    for level in (4, 2, 1):
        if level >= f_s.shape[2]:
            continue
        weight /= 2
        size = (level,) * (f_s.dim() - 2)
        loss = loss + weight * F.mse_loss(adaptive_pool(f_s, size), adaptive_pool(f_t, size))
        total += weight
    return loss / total


def as_map(f: torch.Tensor, dims: int) -> torch.Tensor:
    """A feature with ``dims`` spatial axes: flat ``(N, C)`` features get that many axes of size 1."""
    return f.view(*f.shape, *([1] * dims)) if f.dim() == 2 else f


class ReviewKD(kdlab.Loss):
    """ReviewKD (Chen, Liu, Zhao and Jia, CVPR 2021, "Distilling Knowledge via Knowledge Review"): each teacher
    stage is matched by a fusion of the student's same and deeper stages, so shallow teacher knowledge guides
    deep student features ("review"). From the deepest stage back, attention-based fusion (:class:`ABF`) merges
    each student stage with the residual of the deeper ones; each output is compared with its teacher stage by the
    hierarchical context loss (:func:`hcl`): ``CE(y, s) + weight * w(epoch) * sum_stages HCL(ABF_i, t_i)``.
    Works with conv maps (N, C, L) or (N, C, H, W). Flat features (N, C), an MLP's, are treated as maps of a single
    position: ABF's convolutions then act as linear layers (the 3x3 kernel's centre tap), the attention fusion is
    unchanged, and HCL reduces to the MSE. A flat stage beside conv stages becomes a 1-position map of their kind.
    The ABF modules are created in :meth:`setup` and trained with the student. Speed: per stage, ABF trains two
    convolutions and two batch norms and HCL pools at up to four levels; with MLP-sized features on a CPU these
    many small operations (their count, not their arithmetic) make an epoch 10-20x ``kd``'s
    (``benchmarks/results/loss_speed.md``). That is the method's structure; on a GPU, or with wide conv features,
    the student's own network dominates again."""

    def __init__(self, params: ReviewKDParams):
        super().__init__()
        self.p = params
        self.student_layers = tuple(params.student_layers)
        self.teacher_layers = tuple(params.teacher_layers)
        self.abfs = nn.ModuleList()
        self.dims = 1
        self.out_sizes: list[tuple[int, ...]] = []

    def setup(self, ctx: kdlab.LossSetup) -> None:
        s, t = _probe(ctx, self.student_layers, self.teacher_layers)
        feats = [s[k] for k in self.student_layers] + [t[k] for k in self.teacher_layers]
        kinds = {f.dim() - 2 for f in feats if f.dim() > 2}
        if len(kinds) > 1:
            raise kdlab.KdlabError("loss.params: ReviewKD needs stages of one kind (all (N, C, L) or all (N, C, H, "
                                   "W), flat (N, C) ones aside); got shapes "
                                   f"{[tuple(f.shape[1:]) for f in feats]}")
        self.dims = kinds.pop() if kinds else 1
        if self.dims not in (1, 2):
            raise kdlab.KdlabError(f"loss.params: ReviewKD supports 1-D and 2-D maps, not {self.dims}-D")
        c_in = [as_map(s[k], self.dims).shape[1] for k in self.student_layers]
        teacher = [as_map(t[k], self.dims) for k in self.teacher_layers]
        self.out_sizes = [tuple(f.shape[2:]) for f in teacher]
        mid = min(self.p.max_mid_channels, c_in[-1])
        last = len(c_in) - 1
        self.abfs = nn.ModuleList(ABF(c, mid, f.shape[1], i < last, self.dims)
                                  for i, (c, f) in enumerate(zip(c_in, teacher))).to(ctx.device)

    def reviewed(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The ABF outputs of the student's stages (shallowest first), fused from the deepest back."""
        out: list[torch.Tensor] = [None] * len(features)  # type: ignore[list-item]
        residual = None
        for i in reversed(range(len(features))):  # a handful of stages, each one batched expression
            out[i], residual = self.abfs[i](as_map(features[i], self.dims), residual, self.out_sizes[i])
        return out

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        reviewed = self.reviewed([inputs.student_features[k].float() for k in self.student_layers])
        review = inputs.student_logits.new_zeros(())
        for f_s, k in zip(reviewed, self.teacher_layers):
            review = review + hcl(f_s, as_map(inputs.teacher_features[k].float(), self.dims))
        warm = min(inputs.epoch / self.p.warmup_epochs, 1.0) if self.p.warmup_epochs else 1.0
        ce = masked_cross_entropy(inputs.student_logits, inputs.labels)
        return kdlab.LossOutput(total=ce + self.p.weight * warm * review, terms={"ce": ce, "review": review})
