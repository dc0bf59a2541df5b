"""Generator and discriminator shapes, sizes, parameter counts and normalisation choices."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cryotune.config import TrainConfig
from cryotune.errors import BadConfig
from cryotune.nn.models import Block, build_models, count_parameters

torch.set_num_threads(1)


def _conv(c_in, c_out, bias=False):
    return c_in * c_out * 9 + (c_out if bias else 0)


def _expected_counts(w: int, depth: int) -> tuple[int, int]:
    """Parameters by hand: 3x3 convolutions, batch-norm scale and shift, the linear head."""
    block = lambda c: 2 * (_conv(c, c) + 2 * c)  # noqa: E731
    enc = _conv(1, w, bias=True)
    for i in range(depth):
        c = w * 2 ** (i + 1)
        enc += _conv(c // 2, c) + 2 * c + block(c)
    dec = sum(_conv(w * 2 ** (i + 1), w * 2**i) + 2 * w * 2**i + block(w * 2**i)
              for i in range(depth)) + _conv(w, 1, bias=True)
    head = w * 2**depth + 1
    return enc + dec, enc + head


@pytest.mark.parametrize("arch", ["resnet", "conv"])
@pytest.mark.parametrize("size,depth", [(16, 1), (16, 2), (32, 3), (48, 2)])
def test_shapes(arch, size, depth):
    g, d = build_models(TrainConfig(arch=arch, width=4, depth=depth), (size, size))
    y = torch.randn(3, 1, size, size)
    assert g(y).shape == y.shape
    assert d(y).shape == (3,)


@pytest.mark.parametrize("width,depth", [(32, 2), (16, 2), (8, 3)])
def test_parameter_counts(width, depth):
    g_exp, d_exp = _expected_counts(width, depth)
    for size in (32, 64, 128):  # fully convolutional up to the pooled head
        g, d = build_models(TrainConfig(width=width, depth=depth), (size, size))
        assert (count_parameters(g), count_parameters(d)) == (g_exp, d_exp)
    if (width, depth) == (32, 2):  # the default: a 1.1M-parameter GAN
        assert g_exp + d_exp == 1_109_858


def test_autoencoders_have_no_discriminator():
    g, d = build_models(TrainConfig(method="l1_ae", width=4), (16, 16))
    assert d is None and count_parameters(d) == 0


@pytest.mark.parametrize("shape,key,text", [
    ((30, 30), "depth", "not divisible by 2**depth = 4"),
    ((8, 8), "image_shape", "outside [16, 256]"),
    ((512, 512), "image_shape", "outside [16, 256]"),
    ((32, 16), "image_shape", "square"),
])
def test_bad_sizes(shape, key, text):
    with pytest.raises(BadConfig) as err:
        build_models(TrainConfig(width=4), shape)
    assert err.value.where == key and text in str(err.value)


def test_critic_norms():
    _, d = build_models(TrainConfig(method="wgan_gp", width=4), (16, 16))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    # layer norm keeps images independent: a critic value must not depend on the rest of the
    # batch, or the per-sample gradient penalty is meaningless
    d.train()
    x = torch.randn(4, 1, 16, 16)
    other = torch.cat([x[:1], 5 * torch.randn(3, 1, 16, 16)])
    torch.testing.assert_close(d(x)[0], d(other)[0])
    _, d = build_models(TrainConfig(method="beta_gan", width=4), (16, 16))
    assert any(isinstance(m, nn.BatchNorm2d) for m in d.modules())


def test_conv_arch_drops_the_shortcut():
    x = torch.rand(2, 4, 8, 8)
    for residual, expected in ((True, torch.relu(x)), (False, torch.zeros_like(x))):
        block = Block(4, "none", adversary=False, residual=residual)
        for m in block.modules():  # a zero body isolates the shortcut
            if isinstance(m, nn.Conv2d):
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)
        torch.testing.assert_close(block(x), expected)
    g, _ = build_models(TrainConfig(arch="conv", width=4), (16, 16))
    assert all(not b.residual for b in g.modules() if isinstance(b, Block))
