"""The CIFAR-style networks of the knowledge-distillation literature that neither torchvision nor timm ships.

Written from the papers' descriptions, with the structure, module names and parameter names of RepDistiller
(Tian et al. 2020, the code of CRD, whose teacher/student table most KD papers reuse):

* ``resnet20/32/56/110`` — He et al. 2016's CIFAR ResNets: a 3x3 stem of 16 channels, three stages of
  ``(depth - 2) / 6`` basic blocks with 16, 32 and 64 channels, the second and third halving the resolution.
* ``resnet8x4`` / ``resnet32x4`` — CRD's 4x-wide variants: a 32-channel stem and stages of 64, 128 and 256.
* ``wrn_16_2`` / ``wrn_40_2`` — Zagoruyko and Komodakis 2016's pre-activation wide ResNets WRN-d-k: stages of
  16k, 32k and 64k channels with ``(d - 4) / 6`` blocks each.
* ``vgg8`` / ``vgg13`` — CRD's CIFAR VGG with batch norm: five conv blocks (64, 128, 256, 512, 512 channels; one conv
  per block for vgg8, two for vgg13), 2x2 max-pools after the first three, global average pooling, one Linear.

Differences from the papers' code, on purpose: the final pooling is global (adaptive) average pooling instead of a
fixed 8x8 window, so the same weights run at 32x32 and on smaller images (e.g. 8x8 digits); and the stem takes the
data's channel count instead of always 3. At 32x32 with 3 channels the networks are exactly RepDistiller's.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .adapt import image_shape


def _init(model: nn.Module) -> None:
    """He initialisation of convolutions, BN scale 1 and shift 0: the initialisation of the papers' code."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------------------------------------------
# ResNets (He et al. 2016, section 4.2) and CRD's 4x-wide variants
# ----------------------------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm; the shortcut is a 1x1 conv + BN where the shape changes (option B)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """CIFAR ResNet: ``conv1``/``bn1`` (3x3 stem), ``layer1``, ``layer2``, ``layer3`` (stages of basic blocks; the
    last two halve the resolution), global average pooling, ``fc`` (Linear to logits)."""

    def __init__(self, depth: int, filters: tuple[int, int, int, int], in_channels: int, num_classes: int):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet's depth is 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.inplanes = filters[0]
        self.conv1 = nn.Conv2d(in_channels, filters[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(filters[1], n, 1)
        self.layer2 = self._stage(filters[2], n, 2)
        self.layer3 = self._stage(filters[3], n, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(filters[3], num_classes)
        _init(self)

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(self.inplanes, planes, stride)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


# ----------------------------------------------------------------------------------------------------------------
# Wide ResNets (Zagoruyko and Komodakis 2016)
# ----------------------------------------------------------------------------------------------------------------


class WideBasic(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3; a 1x1 conv shortcut (``convShortcut``) where the
    width changes, which then takes the pre-activated input, as in the WRN paper's code."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return out + (x if self.equal_in_out else self.convShortcut(act))


class NetworkBlock(nn.Module):
    """One stage of a wide ResNet: ``layer.<i>`` are its blocks."""

    def __init__(self, blocks: int, in_planes: int, out_planes: int, stride: int, drop_rate: float):
        super().__init__()
        self.layer = nn.Sequential(*[WideBasic(in_planes if i == 0 else out_planes, out_planes,
                                               stride if i == 0 else 1, drop_rate) for i in range(blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k: ``conv1`` (3x3 stem, 16 channels), ``block1``, ``block2``, ``block3`` (stages of 16k, 32k and
    64k channels; the last two halve the resolution), ``bn1`` + ReLU, global average pooling, ``fc``."""

    def __init__(self, depth: int, widen: int, in_channels: int, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"a wide ResNet's depth is 6n+4, got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(ch[3], num_classes)
        _init(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# ----------------------------------------------------------------------------------------------------------------
# VGG with batch norm, CRD's CIFAR variant
# ----------------------------------------------------------------------------------------------------------------

#: channels of the convs in each of the five blocks
VGG_CFG = {
    8: [[64], [128], [256], [512], [512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


class CifarVGG(nn.Module):
    """VGG-BN for small images: ``block0`` .. ``block4`` (3x3 conv + BN [+ ReLU] each; a block's last ReLU is
    applied in ``forward``, so a block's output is pre-activation), ``pool0`` .. ``pool2`` (2x2 max-pools after
    the first three blocks; ``pool3`` after the fourth only for images 64 pixels high or more, as RepDistiller
    does for 64x64 data), ``pool4`` (global average pooling), ``classifier`` (Linear to logits).
    Needs images of at least 8x8."""

    def __init__(self, cfg: list[list[int]], in_channels: int, num_classes: int):
        super().__init__()
        widths = [in_channels] + [block[-1] for block in cfg]
        for i, block in enumerate(cfg):
            setattr(self, f"block{i}", self._block(block, widths[i]))
        self.pool0 = nn.MaxPool2d(2, 2)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.pool3 = nn.MaxPool2d(2, 2)
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _block(channels: list[int], in_channels: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for c in channels:
            layers += [nn.Conv2d(in_channels, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            in_channels = c
        return nn.Sequential(*layers[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[2]
        x = self.pool0(F.relu(self.block0(x)))
        x = self.pool1(F.relu(self.block1(x)))
        x = self.pool2(F.relu(self.block2(x)))
        x = F.relu(self.block3(x))
        if h >= 64:
            x = self.pool3(x)
        x = F.relu(self.block4(x))
        return self.classifier(self.pool4(x).flatten(1))


# ----------------------------------------------------------------------------------------------------------------
# Factories, one per name
# ----------------------------------------------------------------------------------------------------------------


def _factory(name: str, build: Callable[[int, int], nn.Module], doc: str, min_size: int = 1):
    def make(params, *, input_shape, num_classes) -> nn.Module:
        c, _, _ = image_shape(input_shape, name, min_size)
        return build(c, num_classes)

    make.__name__ = f"make_{name}"
    make.__doc__ = doc
    return make


_THIN, _X4 = (16, 16, 32, 64), (32, 64, 128, 256)
_RES = "stages layer1, layer2, layer3; head fc"
_WRN = "stages block1, block2, block3; head fc"
_VGG = "blocks block0..block4; head classifier; images of 8x8 or more"

#: name -> (factory, parameters in millions with 100 classes, as the KD literature reports them for these nets)
CIFAR_NETS: dict[str, tuple[Callable[..., nn.Module], float]] = {
    "resnet20": (_factory("resnet20", lambda c, k: CifarResNet(20, _THIN, c, k),
                          f"CIFAR ResNet-20 (He et al. 2016; 0.28M params; {_RES})."), 0.28),
    "resnet32": (_factory("resnet32", lambda c, k: CifarResNet(32, _THIN, c, k),
                          f"CIFAR ResNet-32 (He et al. 2016; 0.47M params; {_RES})."), 0.47),
    "resnet56": (_factory("resnet56", lambda c, k: CifarResNet(56, _THIN, c, k),
                          f"CIFAR ResNet-56 (He et al. 2016; 0.86M params; {_RES})."), 0.86),
    "resnet110": (_factory("resnet110", lambda c, k: CifarResNet(110, _THIN, c, k),
                           f"CIFAR ResNet-110 (He et al. 2016; 1.74M params; {_RES})."), 1.74),
    "resnet8x4": (_factory("resnet8x4", lambda c, k: CifarResNet(8, _X4, c, k),
                           f"CRD's 4x-wide CIFAR ResNet-8 (Tian et al. 2020; 1.23M params; {_RES})."), 1.23),
    "resnet32x4": (_factory("resnet32x4", lambda c, k: CifarResNet(32, _X4, c, k),
                            f"CRD's 4x-wide CIFAR ResNet-32 (Tian et al. 2020; 7.43M params; {_RES})."), 7.43),
    "wrn_16_2": (_factory("wrn_16_2", lambda c, k: WideResNet(16, 2, c, k),
                          f"Wide ResNet WRN-16-2 (Zagoruyko & Komodakis 2016; 0.70M params; {_WRN})."), 0.70),
    "wrn_40_2": (_factory("wrn_40_2", lambda c, k: WideResNet(40, 2, c, k),
                          f"Wide ResNet WRN-40-2 (Zagoruyko & Komodakis 2016; 2.25M params; {_WRN})."), 2.25),
    "vgg8": (_factory("vgg8", lambda c, k: CifarVGG(VGG_CFG[8], c, k),
                      f"CRD's CIFAR VGG-8 with batch norm (3.96M params; {_VGG}).", min_size=8), 3.96),
    "vgg13": (_factory("vgg13", lambda c, k: CifarVGG(VGG_CFG[13], c, k),
                       f"CRD's CIFAR VGG-13 with batch norm (9.46M params; {_VGG}).", min_size=8), 9.46),
}
