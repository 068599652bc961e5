"""Generators G(z) and critics D(x) -> [B] for GAN training: MLPs for low-dimensional data, DCGAN-style convnets.

Critics use no batch normalisation (WGAN-GP's gradient penalty is per sample) and SiLU / LeakyReLU activations,
so that grad_x D, the field their samples can be refined along, is defined everywhere. Each net is a diffusers
ModelMixin + ConfigMixin (save_pretrained / from_pretrained). `CriticPotential` is what a trained critic's samples
climb: h(d) for MonoFlow's logistic discriminator (docs/gans_as_odes.md), D itself for a Wasserstein critic.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn

from genkit.errors import GenkitError

MONOTONE = ("logit", "non_saturating", "minimax", "arcsinh")


def monotone(h: str, d: Tensor, shift: float = 0.0) -> Tensor:
    """h(d) for MonoFlow: logit d, non_saturating log sigmoid(d), minimax softplus(d + shift), arcsinh asinh(d)."""
    if h == "logit":
        return d
    if h == "non_saturating":
        return F.logsigmoid(d)
    if h == "minimax":
        return F.softplus(d + shift)
    return torch.asinh(d)


@dataclass(frozen=True)
class CriticPotential:
    """What the generator climbs: h(d) of a MonoFlow discriminator's logit, or a Wasserstein critic's D itself."""

    method: str
    h: str = "non_saturating"
    logit_shift: float = 0.0

    def __call__(self, critic_output: Tensor) -> Tensor:
        if self.method == "monoflow":
            return monotone(self.h, critic_output, self.logit_shift)
        return critic_output


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers of these sizes with SiLU between them."""
    layers: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        layers.append(nn.Linear(width_in, width_out))
        if index < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class MLPGenerator(ModelMixin, ConfigMixin):
    """G(z) = MLP(z) reshaped to `shape`: `depth` SiLU layers of width `hidden`, z of size latent_dim."""

    @register_to_config
    def __init__(self, latent_dim: int, shape: list[int], hidden: int = 256, depth: int = 3):
        super().__init__()
        self.net = mlp([latent_dim, *[hidden] * depth, math.prod(shape)])

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).reshape(len(z), *self.config.shape)


class MLPCritic(ModelMixin, ConfigMixin):
    """D(x) = MLP(x) -> [B]: `depth` SiLU layers of width `hidden`."""

    @register_to_config
    def __init__(self, dim: int, hidden: int = 256, depth: int = 3):
        super().__init__()
        self.net = mlp([dim, *[hidden] * depth, 1])

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1)).squeeze(1)


def _doublings(image_size: int) -> int:
    """How many x2 resolution steps lie between 4x4 and image_size (a power of two, at least 8)."""
    steps = round(math.log2(image_size / 4)) if image_size >= 8 else 0
    if image_size < 8 or 4 * 2**steps != image_size:
        raise GenkitError(f"DCGAN nets need a power-of-two image_size of at least 8, got {image_size}")
    return steps


class DCGANGenerator(ModelMixin, ConfigMixin):
    """z -> 4x4 x (width 2^k) -> k transposed-conv doublings (BatchNorm, ReLU) -> `channels` images, tanh."""

    @register_to_config
    def __init__(self, latent_dim: int, channels: int, image_size: int, width: int = 64):
        super().__init__()
        steps = _doublings(image_size)
        widths = [width * 2 ** (steps - 1 - i) for i in range(steps)]
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        ]
        for width_in, width_out in zip(widths, widths[1:], strict=False):
            layers += [
                nn.ConvTranspose2d(width_in, width_out, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width_out),
                nn.ReLU(),
            ]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z[:, :, None, None])


class DCGANCritic(ModelMixin, ConfigMixin):
    """k strided-conv halvings (LeakyReLU 0.2, no normalisation) from image_size to 4x4, then a linear map -> [B]."""

    @register_to_config
    def __init__(self, channels: int, image_size: int, width: int = 64):
        super().__init__()
        steps = _doublings(image_size)
        widths = [channels] + [width * 2**i for i in range(steps)]
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths, widths[1:], strict=False):
            layers += [nn.Conv2d(width_in, width_out, 4, 2, 1), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(widths[-1] * 16, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(1)


GENERATORS = {"mlp": MLPGenerator, "dcgan": DCGANGenerator}
CRITICS = {"mlp": MLPCritic, "dcgan": DCGANCritic}
