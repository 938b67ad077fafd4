"""The built-in ``cnn`` task: its adaptive pool computes ATen's values bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedchain.learning.architectures import build_model
from fedchain.tasks.cnn import UniformAveragePool


def _awkward(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Values over 20 orders of magnitude, with zeros of both signs, subnormals, inf and nan."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.exp(torch.randn(shape, generator=g) * 10)
    u = torch.rand(shape, generator=g)
    x[u < 0.05] = 0.0
    x[(u >= 0.05) & (u < 0.1)] = -0.0
    x[(u >= 0.1) & (u < 0.12)] = 1e-40
    x[(u >= 0.12) & (u < 0.13)] = -3e-41
    x[(u >= 0.13) & (u < 0.135)] = float("inf")
    x[(u >= 0.135) & (u < 0.14)] = float("nan")
    return x


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize(("side", "input_side"), [(4, 8), (4, 16), (2, 8), (4, 4), (3, 9)])
def test_uniform_pool_is_atens_bit_for_bit(side: int, input_side: int) -> None:
    pool = UniformAveragePool(side)
    for seed in range(20):
        x = _awkward((1 + 7 * seed, 1 + seed % 5 * 8, input_side, input_side), seed)
        with torch.no_grad():
            assert torch.equal(_bits(pool(x)), _bits(F.adaptive_avg_pool2d(x, side)))


def test_uniform_pool_leaves_other_inputs_to_aten() -> None:
    """With autograd, a non-uniform window, a 1x1 output or channels-last input: ATen's kernel
    (its backward for training; its own arithmetic elsewhere), the same values."""
    x = _awkward((3, 4, 14, 14), 0).abs().nan_to_num(posinf=1.0).requires_grad_()
    out = UniformAveragePool(4)(x)
    assert out.grad_fn is not None and "AdaptiveAvgPool2D" in type(out.grad_fn).__name__
    with torch.no_grad():
        for side, y in [
            (4, x),
            (1, x),
            (2, x[:, :, :8, :8].contiguous(memory_format=torch.channels_last)),
        ]:
            assert torch.equal(UniformAveragePool(side)(y), F.adaptive_avg_pool2d(y, side))


def test_cnn_validation_pass_is_the_plain_pool_s_bit_for_bit() -> None:
    """The digits model's forward pass is the same net's with nn.AdaptiveAvgPool2d, bit for bit."""
    net = build_model("cnn", (1, 8, 8), 10, seed=3)
    plain = build_model("cnn", (1, 8, 8), 10, seed=3)
    [i] = [i for i, m in enumerate(plain.features) if isinstance(m, UniformAveragePool)]
    plain.features[i] = nn.AdaptiveAvgPool2d(4)
    x = torch.rand(144, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 16
    with torch.no_grad():
        assert torch.equal(_bits(net(x)), _bits(plain(x)))
