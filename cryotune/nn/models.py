"""The denoiser G (an encoder-decoder autoencoder) and the discriminator D of Fig. 4.

Both are built from stages at ``width * 2**i`` channels. The generator's encoder halves the
image ``depth`` times (a stride-2 convolution, then a block at the new width), and its decoder
mirrors it (nearest-neighbour up-sampling, then a 3x3 convolution: no checkerboard artefacts)
back to the input's size; one output channel, no final
activation, so targets outside [0, 1] (contaminated references) stay representable. The
discriminator is the encoder followed by global average pooling and a linear layer to one logit
(no sigmoid: it lives in the scoring rule). With ``arch="resnet"`` each block is a residual block
(two 3x3 convolutions plus the identity, as in Fig. 4); ``arch="conv"`` keeps the same layers
without the identity shortcut, the plain convolutional networks of the paper's Appendix Table 3.

Parameter counts do not depend on the image size (the networks are fully convolutional up to the
global pooling): width 32, depth 2 gives a 1.1M-parameter GAN (G 0.65M + D 0.46M), the narrow
width 16 a quarter of that.

Example::

    import torch
    from cryotune.config import TrainConfig
    from cryotune.nn.models import build_models

    g, d = build_models(TrainConfig(width=16), (32, 32))
    y = torch.randn(4, 1, 32, 32)
    assert g(y).shape == y.shape and d(y).shape == (4,)
"""

from __future__ import annotations

from torch import Tensor, nn

from cryotune.config import TrainConfig
from cryotune.errors import BadConfig

__all__ = [
    "MAX_SIZE",
    "MIN_SIZE",
    "Discriminator",
    "Generator",
    "build_models",
    "check_image_shape",
    "count_parameters",
]

MIN_SIZE, MAX_SIZE = 16, 256


def check_image_shape(image_shape: tuple[int, int], depth: int) -> None:
    """Raise BadConfig unless the images are square, 16..256 px and divisible by ``2**depth``."""
    h, w = (int(s) for s in image_shape)
    if h != w:
        raise BadConfig(f"images are {h}x{w}, the denoisers need square images", "image_shape",
                        "crop the particles to a square box")
    if not MIN_SIZE <= h <= MAX_SIZE:
        raise BadConfig(f"image size {h} is outside [{MIN_SIZE}, {MAX_SIZE}]", "image_shape",
                        f"crop or downsample to a box of {MIN_SIZE} to {MAX_SIZE} px")
    if h % (2**depth):
        raise BadConfig(f"image size {h} is not divisible by 2**depth = {2**depth}", "depth",
                        f"use a depth whose power of two divides {h}, or a box that "
                        f"{2**depth} divides")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "layer":  # over (C, H, W) per sample: no coupling between the images of a batch
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def _act(adversary: bool) -> nn.Module:
    # LeakyReLU keeps gradients flowing through the discriminator for confidently scored samples
    return nn.LeakyReLU(0.2) if adversary else nn.ReLU()


class Block(nn.Module):
    """Two 3x3 convolutions at a fixed width, with (``residual=True``) or without the shortcut."""

    def __init__(self, channels: int, norm: str, adversary: bool, residual: bool):
        super().__init__()
        bias = norm == "none"  # a following normalisation cancels a bias
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=bias), _norm(norm, channels),
            _act(adversary),
            nn.Conv2d(channels, channels, 3, padding=1, bias=bias), _norm(norm, channels),
        )
        self.residual = residual
        self.out = _act(adversary)

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        return self.out(x + y if self.residual else y)


def _encoder(width: int, depth: int, norm: str, adversary: bool, residual: bool) -> nn.Sequential:
    bias = norm == "none"
    layers: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1), _act(adversary)]
    for i in range(depth):
        c_in, c_out = width * 2**i, width * 2 ** (i + 1)
        layers += [
            nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=bias), _norm(norm, c_out),
            _act(adversary),
            Block(c_out, norm, adversary, residual),
        ]
    return nn.Sequential(*layers)


class Generator(nn.Module):
    """G: noisy image (N, 1, H, W) -> denoised image of the same shape."""

    def __init__(self, width: int = 32, depth: int = 2, norm: str = "batch",
                 residual: bool = True):
        super().__init__()
        self.encoder = _encoder(width, depth, norm, False, residual)
        bias = norm == "none"
        layers: list[nn.Module] = []
        for i in reversed(range(depth)):
            c_in, c_out = width * 2 ** (i + 1), width * 2**i
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias),
                _norm(norm, c_out), nn.ReLU(),
                Block(c_out, norm, False, residual),
            ]
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.decoder = nn.Sequential(*layers)

    def forward(self, y: Tensor) -> Tensor:
        return self.decoder(self.encoder(y))


class Discriminator(nn.Module):
    """D: image (N, 1, H, W) -> one raw score per image, shape (N,)."""

    def __init__(self, width: int = 32, depth: int = 2, norm: str = "batch",
                 residual: bool = True):
        super().__init__()
        self.features = _encoder(width, depth, norm, True, residual)
        self.head = nn.Linear(width * 2**depth, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(2, 3))).squeeze(1)


def build_models(config: TrainConfig, image_shape: tuple[int, int]
                 ) -> tuple[Generator, Discriminator | None]:
    """The generator and, for the GAN methods, the discriminator that ``config`` describes.

    Args:
        config: the training config (arch, width, depth, norms, method).
        image_shape: (H, W) of the images; checked with :func:`check_image_shape`.

    Returns:
        ``(generator, discriminator)``; the discriminator is None for ``l1_ae``/``l2_ae``.
    """
    check_image_shape(image_shape, config.depth)
    residual = config.arch == "resnet"
    g = Generator(config.width, config.depth, config.g_norm, residual)
    d = (Discriminator(config.width, config.depth, config.critic_norm, residual)
         if config.adversarial else None)
    return g, d


def count_parameters(module: nn.Module | None) -> int:
    """Number of parameters (0 for None)."""
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters())
