"""Backbones, registered by name (timm-style ``create_model``).

All models output one logit per label (binary: 1; ChestMNIST: 14). The 2D ResNet-18 is
MedMNIST's: a 3x3 stride-1 stem and no max-pool, because a 7x7/2 stem plus pooling
would shrink a 28x28 image to 7x7 before the first block. The 3D ResNet-18 is the
paper's "ResNet-18+3D": the same network with Conv3d, stride-1 stem, on 28^3 volumes.

Light 3D variants exist because the paper model trains at ~3.5 volumes/s on 2 CPU
cores. ``resnet18_3d_s2`` uses a stride-2 stem: every feature map has 8x fewer voxels,
so it is several times faster, with the same depth and parameter count. ``resnet18_3d_tiny``
also halves the width (4x fewer weights). Neither is the paper's model: leaderboard rows
compare them with the paper only with that caveat (``paper`` names the paper model a light
variant stands in for).

The paper's other 3D rows convert the 2D ResNet-18 with the official converters of the
``acsconv`` package, exactly as MedMNIST's experiments do (``MedMNIST3D/train_and_eval_pytorch.py``):
``ACSConverter`` (axial-coronal-sagittal convolutions: each 2D kernel is applied in the three
planes to a third of the channels) and ``Conv2_5dConverter`` (2D kernels applied slice by
slice). ``resnet18_3d`` is the same network as ``Conv3dConverter`` over the 2D ResNet-18,
built natively (a test checks the equivalence). For inputs larger than 28 px (MedMNIST+),
``resnet18`` is torchvision's ImageNet-style ResNet-18 (7x7/2 stem and max-pool), the paper's
"ResNet-18 (224)".
"""
from __future__ import annotations

import torch
from torch import nn

from bench import catalog
from bench.catalog import ModelInfo
from bench.registry import Registry

MODELS: Registry = Registry("model")


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

    def __init__(self, dims: int, in_channels: int, num_outputs: int, stem_stride: int = 1, width: int = 64,
                 conv=None):
        super().__init__()
        conv = conv or (nn.Conv2d if dims == 2 else nn.Conv3d)
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


def register_model(name: str, dims: int, paper_faithful: bool, description: str, paper: str = ""):
    """Decorator for a plugin's ``build(in_channels, num_outputs) -> nn.Module``: the builder here,
    what the model is in the torch-free catalog (the leaderboard reads it without torch)."""

    def deco(build):
        catalog.add_model(name, ModelInfo(dims, paper_faithful, description, paper))
        return _register(name)(build)

    return deco


def _register(name: str):
    """Register the builder of a model the catalog declares (built-ins: ``bench/models.yaml``)."""
    info = catalog.model_info(name)

    def deco(build):
        build.__doc__ = build.__doc__ or info.description
        MODELS.register(name, info=info)(build)
        return build

    return deco


def _resnet(name: str, **kwargs):
    dims = catalog.model_info(name).dims
    _register(name)(lambda in_channels, num_outputs: ResNet(dims, in_channels, num_outputs, **kwargs))


def _converted(name: str, operator: str, **kwargs):
    """The 2D ResNet-18 with its Conv2d replaced by one of acsconv's operators (``ACSConv``,
    ``Conv2_5d``) and 3D norms and pooling -- what acsconv's converters produce. We build it
    directly because the converters' norm/pool conversion breaks on torch 2.14 (they pass a
    BatchNorm's ``bias`` tensor as a constructor argument); the convolutions, which are what
    makes ACS and 2.5D what they are, are acsconv's own."""

    def build(in_channels: int, num_outputs: int) -> nn.Module:
        from acsconv import operators

        return ResNet(3, in_channels, num_outputs, conv=getattr(operators, operator), **kwargs)

    _register(name)(build)


# the built-ins; what each one is (dims, paper row, like-for-like) is declared in bench/models.yaml
_resnet("resnet18_28")
_resnet("resnet18_3d")
_resnet("resnet18_3d_s2", stem_stride=2)
_resnet("resnet18_3d_tiny", stem_stride=2, width=32)
_converted("resnet18_acs", "ACSConv")
_converted("resnet18_acs_tiny", "ACSConv", stem_stride=2, width=32)
_converted("resnet18_2_5d", "Conv2_5d")
_converted("resnet18_2_5d_tiny", "Conv2_5d", stem_stride=2, width=32)


@_register("resnet18")
def _imagenet_resnet18(in_channels: int, num_outputs: int) -> nn.Module:
    from torchvision.models import resnet18

    net = resnet18(num_classes=num_outputs)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


def create_model(name: str, in_channels: int, num_outputs: int) -> nn.Module:
    return MODELS.get(name)(in_channels, num_outputs)


def memory_format(dims: int):
    return torch.channels_last if dims == 2 else torch.channels_last_3d


def to_memory_format(model: nn.Module, dims: int) -> nn.Module:
    """The channels-last layout for convolutions (bench.device.ExecPath), where the model's kernels can take it.

    ACS convolutions keep 2D (rank-4) kernels inside a 3D network, and torch refuses to put a
    rank-4 tensor in ``channels_last_3d``: such a model keeps its default layout (inputs are
    still channels-last; the convolution converts as needed).
    """
    ranks = {p.dim() for p in model.parameters() if p.dim() >= 4}
    return model.to(memory_format=memory_format(dims)) if ranks <= {dims + 2} else model


def save_checkpoint(model: nn.Module, path) -> None:
    """A plain state_dict on CPU (no pickled code): :func:`load_checkpoint` reads it back."""
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)


def load_checkpoint(path) -> dict:
    """Checkpoints are plain state_dicts: load them without unpickling code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_model(name: str, in_channels: int, num_outputs: int, *, dims: int, device, channels_last: bool,
               state: dict | None = None) -> nn.Module:
    """The one way a network is made ready to train or score: build it, load ``state`` (a plain
    state_dict), move it to ``device`` and give it the layout of its execution path
    (``ExecPath.channels_last``, :mod:`bench.device`).

    Training (the fresh or initialized model and the selected one), post-hoc shift scoring and
    anything else that loads a checkpoint call this, so a layout or precision fix lands everywhere
    at once. Inputs follow the model's layout (:func:`as_input`), so nothing else decides it.
    """
    model = create_model(name, in_channels, num_outputs)
    if state is not None:
        model.load_state_dict(state)
    model = model.to(device)
    return to_memory_format(model, dims) if channels_last else model


def is_channels_last(model: nn.Module, dims: int) -> bool:
    """Whether ``model``'s convolutions hold their weights channels-last (its largest kernel decides:
    a kernel with one input channel or a 1x1 window is both layouts at once)."""
    kernels = [p for p in model.parameters() if p.dim() == dims + 2]
    if not kernels:
        return False
    w = max(kernels, key=lambda p: p.numel())
    return w.is_contiguous(memory_format=memory_format(dims)) and not w.is_contiguous()


def as_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A batch in the layout of a model whose weights are (or are not) channels-last."""
    return x.contiguous(memory_format=memory_format(x.dim() - 2)) if channels_last else x
