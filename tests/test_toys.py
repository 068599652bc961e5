"""2-D toys: support, mode shares and moments against their definitions; seeded determinism."""

import math

import pytest
import torch

from genkit.gaussian_mixture import GaussianMixture
from genkit.toys import EIGHT_GAUSSIAN_CENTRES, TOYS, toy_mixture

N = 20_000


def draw(name, n=N, seed=0):
    return TOYS[name](n, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(TOYS))
def test_shape_dtype_and_seeded_determinism(name):
    points = draw(name, 1000)
    assert points.shape == (1000, 2) and points.dtype == torch.float32 and torch.isfinite(points).all()
    assert torch.equal(points, draw(name, 1000))
    assert not torch.equal(points, draw(name, 1000, seed=1))
    # All four live on roughly [-2, 2]^2.
    assert points.abs().max() < 3 and points.std() > 0.5


def test_eight_gaussians_modes_and_spread():
    angles = torch.arange(8) * math.pi / 4
    assert torch.allclose(EIGHT_GAUSSIAN_CENTRES, 2 * torch.stack([angles.cos(), angles.sin()], dim=1))
    points = draw("8gaussians")
    distance, nearest = torch.cdist(points, EIGHT_GAUSSIAN_CENTRES).min(dim=1)
    # 0.5 is 5 std: a 2-D Gaussian puts exp(-12.5) ~ 4e-6 of its mass beyond, < 0.1 expected escapes in N.
    assert distance.max() < 0.5
    shares = torch.bincount(nearest, minlength=8) / N
    assert (shares - 1 / 8).abs().max() < 0.015  # binomial std of a share is 0.0023
    # Within a mode the offset is N(0, 0.1^2 I): E||offset||^2 = 2 * 0.01.
    offsets = points - EIGHT_GAUSSIAN_CENTRES[nearest]
    assert abs(offsets.pow(2).sum(1).mean() - 0.02) < 0.001
    assert offsets.mean(0).abs().max() < 0.005


def test_checkerboard_fills_the_black_squares_uniformly():
    points = draw("checkerboard")
    assert points.min() >= -2 and points.max() < 2
    cells = points.floor().long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()
    cell_index = (cells[:, 0] + 2) * 4 + (cells[:, 1] + 2)
    counts = torch.bincount(cell_index, minlength=16)
    black = [4 * column + row for column in range(4) for row in range(4) if (column + row) % 2 == 0]
    assert counts.sum() == counts[black].sum()
    assert ((counts[black] / N) - 1 / 8).abs().max() < 0.015
    # Uniform within each unit square: the fractional part has mean 1/2 and variance 1/12 per coordinate.
    fraction = points - cells
    assert (fraction.mean(0) - 0.5).abs().max() < 0.01 and (fraction.var(0) - 1 / 12).abs().max() < 0.005


def arc_distance(points, centre, sign):
    """Distance to the half circle of radius 4/3 around `centre` on the side sign * (y - centre_y) >= 0."""
    offset = points - centre
    to_circle = (offset.norm(dim=1) - 4 / 3).abs()
    ends = torch.tensor([[4 / 3, 0.0], [-4 / 3, 0.0]])
    to_ends = torch.cdist(offset, ends).min(dim=1).values
    return torch.where(sign * offset[:, 1] >= 0, to_circle, to_ends)


def test_two_moons_are_two_noisy_half_circles():
    points = draw("moons")
    # Radius 4/3 arcs: the upper around (-2/3, -1/3) bulging up, the lower around (2/3, 1/3) bulging down.
    upper = arc_distance(points, torch.tensor([-2 / 3, -1 / 3]), 1)
    lower = arc_distance(points, torch.tensor([2 / 3, 1 / 3]), -1)
    on_upper = upper < lower
    assert abs(on_upper.float().mean() - 0.5) < 0.015
    # The noise is N(0, 0.05^2 I): no point is 6 std from its arc, most are within 2 std.
    gap = torch.minimum(upper, lower)
    assert gap.max() < 0.3 and (gap < 0.1).float().mean() > 0.85
    # Centred: x = +-(4/3) (cos a - 1/2) + noise, E cos a = 0, E cos^2 a = 1/2, so Var x = (16/9) (3/4) + 0.05^2.
    assert points.mean(0).abs().max() < 0.02
    assert abs(points[:, 0].var() - (16 / 9 * 0.75 + 0.0025)) < 0.03


def test_gmm_samples_its_fixed_mixture():
    field = toy_mixture()
    assert isinstance(field, GaussianMixture) and field.shape == (2,)
    points = draw("gmm").double()
    weights = field.log_weights.exp()
    assert torch.allclose(weights, torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64))
    mean = (weights[:, None] * field.means).sum(0)
    second_moment = (weights[:, None] * (field.means**2 + field.variances)).sum(0)
    assert torch.allclose(points.mean(0), mean, atol=0.03)
    assert torch.allclose(points.pow(2).mean(0), second_moment, atol=0.06)
