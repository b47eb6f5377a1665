from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

_ACT = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}
Activation = Literal["relu", "gelu", "tanh", "silu"]


class MLPParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hidden: list[int] = Field(default_factory=lambda: [100, 100], description="widths of the hidden layers")
    activation: Activation = "relu"
    dropout: float = Field(0.0, ge=0, lt=1)


class MLP(nn.Module):
    """Flattens its input; ``blocks.<i>`` = Linear + activation (+ dropout); ``head`` = Linear to logits."""

    def __init__(self, params: MLPParams, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        width = math.prod(input_shape)
        blocks = []
        for h in params.hidden:
            layers: list[nn.Module] = [nn.Linear(width, h), _ACT[params.activation]()]
            if params.dropout:
                layers.append(nn.Dropout(params.dropout))
            blocks.append(nn.Sequential(*layers))
            width = h
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x.flatten(1)))


class CNN1DParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channels: list[int] = Field(default_factory=lambda: [25, 25, 25], description="channels of each conv block")
    kernel_size: int | list[int] = Field(5, description="one size for every block, or one per block")
    stride: int = Field(2, gt=0)
    padding: int = Field(1, ge=0)
    batchnorm: bool = False

    @model_validator(mode="after")
    def _kernels(self):
        ks = self.kernel_size if isinstance(self.kernel_size, list) else [self.kernel_size]
        if isinstance(self.kernel_size, list) and len(ks) != len(self.channels):
            raise ValueError(f"kernel_size has {len(ks)} entries for {len(self.channels)} channels entries")
        if any(k <= 0 for k in ks):
            raise ValueError("kernel sizes must be positive")
        return self

    def kernels(self) -> list[int]:
        return self.kernel_size if isinstance(self.kernel_size, list) else [self.kernel_size] * len(self.channels)
    activation: Activation = "relu"


class CNN1D(nn.Module):
    """1-D conv net for signals (N, L) or (N, C, L): ``blocks.<i>`` = Conv1d (+BN) + act; ``head`` = Linear.
    Defaults are the MNIST-1D paper's CNN (three conv layers of 25 channels, kernel 5, stride 2)."""

    def __init__(self, params: CNN1DParams, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        if len(input_shape) not in (1, 2):
            raise ValueError(f"cnn1d takes inputs of shape (L,) or (C, L), got {input_shape}")
        c_in = 1 if len(input_shape) == 1 else input_shape[0]
        blocks = []
        for c, k in zip(params.channels, params.kernels()):
            layers: list[nn.Module] = [nn.Conv1d(c_in, c, k, params.stride, params.padding)]
            if params.batchnorm:
                layers.append(nn.BatchNorm1d(c))
            layers.append(_ACT[params.activation]())
            blocks.append(nn.Sequential(*layers))
            c_in = c
        self.blocks = nn.Sequential(*blocks)
        with torch.no_grad():
            flat = self.blocks(torch.zeros(1, *self._shape(input_shape))).numel()
        self.head = nn.Linear(flat, num_classes)
        self._unsqueeze = len(input_shape) == 1

    @staticmethod
    def _shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (1, *input_shape) if len(input_shape) == 1 else input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._unsqueeze:
            x = x.unsqueeze(1)
        return self.head(self.blocks(x).flatten(1))


class CNN2DParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channels: list[int] = Field(default_factory=lambda: [32, 64], description="channels of each conv block")
    kernel_size: int = Field(3, gt=0)
    batchnorm: bool = True
    pool: bool = Field(True, description="2x2 max-pool after each block (skipped once the map is 1x1)")
    activation: Activation = "relu"
    dropout: float = Field(0.0, ge=0, lt=1)


class CNN2D(nn.Module):
    """2-D conv net for images (N, C, H, W): ``blocks.<i>`` = Conv2d (+BN) + act (+pool); global average pool;
    ``head`` = Linear."""

    def __init__(self, params: CNN2DParams, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"cnn2d takes images of shape (C, H, W), got {input_shape}")
        c_in, h, w = input_shape
        blocks = []
        for c in params.channels:
            layers: list[nn.Module] = [nn.Conv2d(c_in, c, params.kernel_size, padding=params.kernel_size // 2)]
            if params.batchnorm:
                layers.append(nn.BatchNorm2d(c))
            layers.append(_ACT[params.activation]())
            if params.pool and min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            blocks.append(nn.Sequential(*layers))
            c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(params.dropout) if params.dropout else nn.Identity()
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.pool(self.blocks(x)).flatten(1)))


def make_mlp(params: MLPParams, *, input_shape, num_classes) -> nn.Module:
    """Multi-layer perceptron with configurable hidden widths (flattens any input)."""
    return MLP(params, input_shape, num_classes)


def make_cnn1d(params: CNN1DParams, *, input_shape, num_classes) -> nn.Module:
    """Small 1-D CNN for signals (defaults: the MNIST-1D paper's CNN)."""
    return CNN1D(params, input_shape, num_classes)


def make_cnn2d(params: CNN2DParams, *, input_shape, num_classes) -> nn.Module:
    """Small 2-D CNN for images (conv blocks, global average pooling, linear head)."""
    return CNN2D(params, input_shape, num_classes)
