"""2-D toy distributions on roughly [-2, 2]^2: `sampler(n, generator) -> float32 [n, 2]`, i.i.d. draws."""

import math

import torch
from torch import Tensor

from genkit.gaussian_mixture import GaussianMixture

MOONS_NOISE = 0.05
EIGHT_GAUSSIAN_STD = 0.1
EIGHT_GAUSSIAN_CENTRES = 2 * torch.stack(
    [torch.cos(torch.arange(8) * math.pi / 4), torch.sin(torch.arange(8) * math.pi / 4)], dim=1
)


def two_moons(n: int, generator: torch.Generator) -> Tensor:
    """Each point on one of two interleaved half circles (prob 1/2 each) plus N(0, 0.05^2 I) noise.

    The unit half circles (cos a, sin a) and (1 - cos a, 1/2 - sin a), a ~ U[0, pi], are centred by their mean
    (1/2, 1/4) and scaled by 4/3: radius 4/3 around (-2/3, -1/3) (upper moon) and (2/3, 1/3) (lower moon).
    """
    angle = math.pi * torch.rand(n, generator=generator)
    lower = torch.randint(2, (n,), generator=generator).bool()
    x = torch.where(lower, 1 - torch.cos(angle), torch.cos(angle))
    y = torch.where(lower, 0.5 - torch.sin(angle), torch.sin(angle))
    points = (torch.stack([x, y], dim=1) - torch.tensor([0.5, 0.25])) * (4 / 3)
    return points + MOONS_NOISE * torch.randn(n, 2, generator=generator)


def eight_gaussians(n: int, generator: torch.Generator) -> Tensor:
    """Equal-weight N(c_k, 0.1^2 I) for the 8 centres c_k = 2 (cos k pi/4, sin k pi/4)."""
    component = torch.randint(8, (n,), generator=generator)
    return EIGHT_GAUSSIAN_CENTRES[component] + EIGHT_GAUSSIAN_STD * torch.randn(n, 2, generator=generator)


def checkerboard(n: int, generator: torch.Generator) -> Tensor:
    """Uniform on the 8 black unit squares of a 4x4 board on [-2, 2]^2: those with floor(x) + floor(y) even."""
    column = torch.randint(4, (n,), generator=generator)
    row = 2 * torch.randint(2, (n,), generator=generator) + column % 2
    corner = torch.stack([column, row], dim=1) - 2
    return corner + torch.rand(n, 2, generator=generator)


def toy_mixture() -> GaussianMixture:
    """A fixed 2-D mixture of 4 isotropic Gaussians with unequal weights and widths, so its exact velocity is known."""
    means = torch.tensor([[-1.5, -1.0], [1.5, -1.0], [0.0, 1.5], [1.5, 1.5]])
    stds = torch.tensor([0.2, 0.3, 0.15, 0.25])
    weights = torch.tensor([0.4, 0.3, 0.2, 0.1])
    return GaussianMixture(means, stds, weights)


def mixture(n: int, generator: torch.Generator) -> Tensor:
    """Draws from toy_mixture()."""
    return toy_mixture().sample(n, generator).float()


TOYS = {"moons": two_moons, "8gaussians": eight_gaussians, "checkerboard": checkerboard, "gmm": mixture}
