import pytest
import torch

from bench.errors import ConfigError
from bench.models import MODELS, create_model, model_info


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
