import pytest
import torch

from bench.errors import ConfigError
from bench.catalog import model_info
from bench.models import MODELS, create_model


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("outputs", [1, 14])
def test_every_model_outputs_one_logit_per_label(name, outputs):
    info = model_info(name)
    x = torch.randn(2, 1, *([28] * info.dims))
    model = create_model(name, 1, outputs).eval()
    with torch.no_grad():
        assert model(x).shape == (2, outputs)


def test_rgb_input():
    assert create_model("resnet18_28", 3, 1)(torch.randn(2, 3, 28, 28)).shape == (2, 1)


def test_light_3d_variant_has_fewer_activations():
    """The stride-2 stem shrinks every feature map 8x: the reason it is CPU-sized."""
    feats = {}
    for name in ("resnet18_3d", "resnet18_3d_s2"):
        m = create_model(name, 1, 1)
        feats[name] = m.stem(torch.randn(1, 1, 28, 28, 28)).numel()
    assert feats["resnet18_3d"] == 8 * feats["resnet18_3d_s2"]


def test_unknown_model():
    with pytest.raises(ConfigError, match="did you mean 'resnet18_28'"):
        create_model("resnet18_2", 1, 1)


def test_paper_3d_resnet_is_the_conv3d_conversion_of_the_2d_resnet():
    """MedMNIST's experiments build ResNet-18+3D with acsconv's Conv3dConverter over the 2D
    ResNet-18: every Conv2d becomes a Conv3d with a cubic kernel and the same stride/padding,
    every BatchNorm2d a BatchNorm3d. resnet18_3d is built natively: check it is that network."""
    from bench.models import ResNet

    two_d = [m for m in ResNet(2, 1, 1).modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d))]
    three_d = [m for m in create_model("resnet18_3d", 1, 1).modules()
               if isinstance(m, (torch.nn.Conv3d, torch.nn.BatchNorm3d))]
    assert len(two_d) == len(three_d)
    for a, b in zip(two_d, three_d):
        if isinstance(a, torch.nn.Conv2d):
            assert b.kernel_size == (a.kernel_size[0],) * 3 and b.stride == (a.stride[0],) * 3
            assert (b.in_channels, b.out_channels, b.padding) == (a.in_channels, a.out_channels, (a.padding[0],) * 3)
        else:
            assert isinstance(b, torch.nn.BatchNorm3d) and b.num_features == a.num_features


def test_acsconv_converters_still_break_on_this_torch():
    """Why bench.models builds ACS/2.5D networks from acsconv's operators instead of its
    converters: the converters pass a BatchNorm's bias tensor to the constructor on torch 2.14
    (if this starts passing, the converters work again and could be used directly)."""
    from acsconv.converters import ACSConverter

    from bench.models import ResNet

    with pytest.raises(RuntimeError, match="ambiguous"):
        ACSConverter(ResNet(2, 1, 1))


@pytest.mark.parametrize("name, operator", [("resnet18_acs", "ACSConv"), ("resnet18_2_5d", "Conv2_5d"),
                                            ("resnet18_acs_tiny", "ACSConv"), ("resnet18_2_5d_tiny", "Conv2_5d")])
def test_acs_and_2_5d_models_use_acsconv_operators(name, operator):
    from acsconv import operators

    from bench.models import BasicBlock

    net = create_model(name, 1, 1)
    op = getattr(operators, operator)
    convs = [net.stem[0]] + [m.conv1 for m in net.modules() if isinstance(m, BasicBlock)]
    assert len(convs) == 9 and all(isinstance(c, op) for c in convs)
    assert not any(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    assert model_info(name).paper in ("ResNet-18+ACS", "ResNet-18+2.5D")
    assert model_info(name).paper_faithful == (not name.endswith("_tiny"))


def test_large_inputs_get_the_imagenet_style_resnet():
    m = create_model("resnet18", 1, 1).eval()
    assert m.conv1.kernel_size == (7, 7) and m.conv1.stride == (2, 2)
    with torch.no_grad():
        assert m(torch.randn(2, 1, 64, 64)).shape == (2, 1)
    assert model_info("resnet18").paper == "ResNet-18 (224)"
