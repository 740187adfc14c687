"""Backbones, registered by name (timm-style ``create_model``).

All models output one logit per label (binary: 1; ChestMNIST: 14). The 2D ResNet-18 is
MedMNIST's: a 3x3 stride-1 stem and no max-pool, because a 7x7/2 stem plus pooling
would shrink a 28x28 image to 7x7 before the first block. The 3D ResNet-18 is the
paper's "ResNet-18+3D": the same network with Conv3d, stride-1 stem, on 28^3 volumes.

Light 3D variants exist because the paper model trains at ~3.5 volumes/s on 2 CPU
cores. ``resnet18_3d_s2`` uses a stride-2 stem: every feature map has 8x fewer voxels,
so it is several times faster, with the same depth and parameter count. ``resnet18_3d_tiny``
also halves the width (4x fewer weights). Neither is the paper's model: leaderboard rows
compare them with the paper only with that caveat.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.registry import Registry

MODELS: Registry = Registry("model")


@dataclass(frozen=True)
class ModelInfo:
    dims: int  # 2 or 3
    paper_faithful: bool  # the paper's architecture (like-for-like comparisons allowed)
    description: str


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, conv, norm, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = conv(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv(cin, cout, 1, stride, 0, bias=False), norm(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]) in 2D or 3D with a configurable stem and width."""

    def __init__(self, dims: int, in_channels: int, num_outputs: int, stem_stride: int = 1, width: int = 64):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        self.stem = nn.Sequential(
            conv(in_channels, width, 3, stem_stride, 1, bias=False), norm(width), nn.ReLU(inplace=True)
        )
        layers, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**i
            layers += [BasicBlock(conv, norm, cin, cout, stride), BasicBlock(conv, norm, cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(cin, num_outputs)

    def forward(self, x):
        x = self.pool(self.layers(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


def _register(name: str, dims: int, paper: bool, description: str, **kwargs):
    def build(in_channels: int, num_outputs: int) -> nn.Module:
        return ResNet(dims, in_channels, num_outputs, **kwargs)

    build.__doc__ = description
    MODELS.register(name, info=ModelInfo(dims, paper, description))(build)


_register("resnet18_28", 2, True, "MedMNIST ResNet-18 (28): 3x3/1 stem, no max-pool")
_register("resnet18_3d", 3, True, "paper ResNet-18+3D: Conv3d, 3x3x3/1 stem (slow on CPU)")
_register("resnet18_3d_s2", 3, False, "light 3D ResNet-18: stride-2 stem, 8x fewer voxels per map", stem_stride=2)
_register("resnet18_3d_tiny", 3, False, "light 3D ResNet-18: stride-2 stem and half width (32)", stem_stride=2, width=32)


def model_info(name: str) -> ModelInfo:
    MODELS.get(name)
    return MODELS.meta[name]["info"]


def create_model(name: str, in_channels: int, num_outputs: int) -> nn.Module:
    return MODELS.get(name)(in_channels, num_outputs)
