"""The components: each is a pydantic params model plus a factory (or a kdlab.Loss subclass)."""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

import kdlab

# -- data -----------------------------------------------------------------------------------------------------------


class BlobsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in the user's YAML is an error, not a silent default

    num_classes: int = Field(4, ge=2, description="number of classes (one blob each)")
    features: int = Field(8, gt=0, description="input dimension")
    per_class: int = Field(100, gt=0, description="examples per class, before the train/val/test split")
    spread: float = Field(1.5, gt=0, description="standard deviation of each blob (larger: harder)")
    transfer_size: int = Field(0, ge=0, description="unlabeled transfer examples (0: none)")


def make_blobs(params: BlobsParams, *, seed: int) -> kdlab.Data:
    """Seeded Gaussian blobs, one per class: 60% train, 20% validation, 20% test."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(params.num_classes, params.features, generator=g) * 3
    y = torch.arange(params.num_classes).repeat_interleave(params.per_class)
    x = centres[y] + params.spread * torch.randn(len(y), params.features, generator=g)
    perm = torch.randperm(len(y), generator=g)
    x, y = x[perm], y[perm]
    n_val = n_test = len(y) // 5
    split = lambda a, b: kdlab.Split(x[a:b], y[a:b])  # noqa: E731
    transfer = None
    if params.transfer_size:
        pick = torch.randint(params.num_classes, (params.transfer_size,), generator=g)
        transfer = kdlab.Split(centres[pick] + 2 * params.spread * torch.randn(len(pick), params.features, generator=g))
    return kdlab.Data(
        train=split(n_val + n_test, len(y)), val=split(0, n_val), test=split(n_val, n_val + n_test),
        num_classes=params.num_classes, transfer=transfer,
    )


# -- teacher and student --------------------------------------------------------------------------------------------


class WideParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hidden: int = Field(128, gt=0, description="width of the two hidden layers")


class WideMLP(nn.Module):
    """Two hidden layers; modules are named ``blocks.0``, ``blocks.1`` and ``head`` so that feature-based losses
    can name them by dotted path."""

    def __init__(self, params: WideParams, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Linear(math.prod(input_shape), params.hidden), nn.ReLU()),
            nn.Sequential(nn.Linear(params.hidden, params.hidden), nn.ReLU()),
        )
        self.head = nn.Linear(params.hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x.flatten(1)))


def make_wide(params: WideParams, *, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A two-layer MLP teacher."""
    return WideMLP(params, input_shape, num_classes)


class LinearParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bias: bool = Field(True, description="learn a bias per class")


def make_linear(params: LinearParams, *, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A linear classifier student: flatten, then one Linear layer to logits."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes, bias=params.bias))


# -- loss -----------------------------------------------------------------------------------------------------------


class LogitMSEParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(0.5, ge=0, le=1, description="weight of the logit-regression term (1-alpha on the labels)")


class LogitMSE(kdlab.Loss):
    """Ba and Caruana 2014, "Do Deep Nets Really Need to be Deep?": regress the teacher's logits with a mean
    squared error, mixed with cross-entropy on the labelled rows. Unlabeled rows get the regression term only."""

    uses_teacher = True  # the engine passes teacher_logits (computed once and cached: live_teacher is False)

    def __init__(self, params: LogitMSEParams):
        super().__init__()
        self.alpha = params.alpha

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        mse = nn.functional.mse_loss(inputs.student_logits, inputs.teacher_logits)
        labeled = inputs.labeled
        if labeled.any():
            ce = nn.functional.cross_entropy(inputs.student_logits[labeled], inputs.labels[labeled])
        else:
            ce = inputs.student_logits.sum() * 0.0  # keeps the graph, contributes nothing
        total = (1 - self.alpha) * ce + self.alpha * mse
        return kdlab.LossOutput(total=total, terms={"ce": ce, "mse": mse})
