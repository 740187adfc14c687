"""The arithmetic behind benchmarks/roofline.py (its README figures rest on it); the timings are not tested."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def roofline():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("roofline", ROOT / "benchmarks" / "roofline.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.mark.parametrize("size,kernel,stride,pad,expected", [
    (4, 3, 1, 1, 10),   # outputs 0..3 see 2, 3, 3, 2 taps
    (5, 3, 1, 0, 9),    # no padding: 3 outputs x 3 taps
    (28, 3, 2, 1, 41),  # 14 outputs: the first sees 2 taps, the other 13 see 3
    (7, 1, 2, 0, 4),    # 1x1 stride 2: 4 outputs, one tap each
])
def test_valid_taps_leave_out_the_padding(roofline, size, kernel, stride, pad, expected):
    assert roofline.valid_taps(size, kernel, stride, pad, 1) == expected


def test_without_padding_the_count_is_torchs_flop_count(roofline):
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.Flatten(), nn.LazyLinear(2))
    x = torch.zeros(3, 1, 12, 12)
    model(x)  # materialise the lazy layer
    fwd, dgrad, wgrad = roofline.count_macs(model, x)
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert 2 * fwd == counter.get_total_flops()
    first = 3 * 8 * 1 * 9 * 10 * 10  # the first convolution sees the images: no input gradient
    assert wgrad == fwd and dgrad == fwd - first


def test_with_padding_the_count_is_below_torchs_by_the_padded_taps(roofline):
    from bench.models import create_model

    model = create_model("resnet18_28", in_channels=1, num_outputs=1).eval()
    x = torch.zeros(1, 1, 28, 28)
    fwd, _, _ = roofline.count_macs(model, x)
    with FlopCounterMode(display=False) as counter:
        model(x)
    padded = counter.get_total_flops()
    # taps on padding: 5% of a 3x3 at 28x28, 31% at 4x4; ResNet-18 (28) as a whole 16% (768 of 912 MFLOP)
    assert 0.8 * padded < 2 * fwd < 0.9 * padded
