import pytest
import torch

from bench.augment import augment


@pytest.mark.parametrize("shape", [(4, 1, 28, 28), (4, 3, 28, 28), (2, 1, 28, 28, 28)])
def test_augment_is_deterministic_and_keeps_shape(shape):
    x = torch.rand(shape)
    a = augment(x, len(shape) == 5, torch.Generator().manual_seed(0))
    b = augment(x, len(shape) == 5, torch.Generator().manual_seed(0))
    c = augment(x, len(shape) == 5, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x)
