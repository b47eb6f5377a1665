"""``resnet1d``: a residual 1-D conv net for signals such as MNIST-1D, laid out like the zoo's ResNets.

Module names follow torchvision's ResNets, so feature-based losses can name them: ``conv1``/``bn1`` (the stem),
``layer1`` .. ``layer<k>`` (one per entry of ``channels``), ``fc`` (the classifier).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn


class ResNet1DParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channels: list[int] = Field(default_factory=lambda: [16, 32, 64], min_length=1,
                                description="channels of each stage (layer1, layer2, ...); stages after the first "
                                            "halve the length")
    blocks: int = Field(1, ge=1, description="residual blocks per stage")
    kernel_size: int = Field(3, ge=1, description="kernel size of the blocks' convolutions (odd)")
    stem_kernel_size: int = Field(5, ge=1, description="kernel size of the stem convolution (odd)")

    @field_validator("kernel_size", "stem_kernel_size")
    @classmethod
    def _odd(cls, k: int) -> int:
        if k % 2 == 0:
            raise ValueError(f"expected an odd kernel size, so that convolutions keep the length (got {k})")
        return k

    @field_validator("channels")
    @classmethod
    def _positive(cls, channels: list[int]) -> list[int]:
        if any(c <= 0 for c in channels):
            raise ValueError("channels must be positive")
        return channels


class BasicBlock1D(nn.Module):
    """Two convolutions with batch norm around a shortcut (a 1x1 conv + BN where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int):
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(c_in, c_out, kernel_size, stride, pad, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel_size, 1, pad, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm1d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet1D(nn.Module):
    """Inputs (N, L) or (N, C, L): ``conv1``/``bn1`` stem, ``layer1`` .. ``layer<k>`` stages of basic blocks (all
    but the first halve the length), global average pooling, ``fc``."""

    def __init__(self, params: ResNet1DParams, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        if len(input_shape) not in (1, 2):
            raise ValueError(f"resnet1d takes inputs of shape (L,) or (C, L), got {tuple(input_shape)}")
        self._unsqueeze = len(input_shape) == 1
        c_in = 1 if self._unsqueeze else input_shape[0]
        width = params.channels[0]
        self.conv1 = nn.Conv1d(c_in, width, params.stem_kernel_size, padding=params.stem_kernel_size // 2,
                               bias=False)
        self.bn1 = nn.BatchNorm1d(width)
        self.relu = nn.ReLU(inplace=True)
        for i, c in enumerate(params.channels):
            stage = [BasicBlock1D(width if b == 0 else c, c, params.kernel_size, 2 if i > 0 and b == 0 else 1)
                     for b in range(params.blocks)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            width = c
        self.num_stages = len(params.channels)
        self.avgpool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._unsqueeze:
            x = x.unsqueeze(1)
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(self.avgpool(x).flatten(1))


def make_resnet1d(params: ResNet1DParams, *, input_shape, num_classes) -> nn.Module:
    """Small 1-D ResNet for signals (stages layer1.., head fc; default ~28k params)."""
    return ResNet1D(params, input_shape, num_classes)
