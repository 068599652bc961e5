"""The mixture's closed-form fields against autograd scores, the adapters against each other, and the paths."""

import math

import pytest
import torch

from genkit import (
    DenoiserVelocity,
    EDMPath,
    GaussianMixture,
    GenkitError,
    GradientVelocity,
    RectifiedAsEDM,
    RectifiedPath,
)


@pytest.fixture(params=[False, True], ids=["isotropic", "diagonal"])
def mixture(request):
    return GaussianMixture.random(4, (2, 3), seed=7, diagonal=request.param)


@pytest.fixture
def points():
    generator = torch.Generator().manual_seed(0)
    return 2 * torch.randn(6, 2, 3, generator=generator, dtype=torch.float64), torch.rand(
        6, generator=generator, dtype=torch.float64
    )


def mixture_log_density(mixture, x, loc_scale, noise_var):
    """log p of the data under x = loc_scale * x1 + noise (per sample), with noise ~ N(0, noise_var I)."""
    flat = x.reshape(x.shape[0], 1, -1)
    variances = loc_scale[:, None, None] ** 2 * mixture.variances + noise_var[:, None, None]
    locs = loc_scale[:, None, None] * mixture.means
    log_normal = -0.5 * (((flat - locs) ** 2) / variances + (2 * math.pi * variances).log()).sum(-1)
    return torch.logsumexp(mixture.log_weights + log_normal, dim=-1)


def score(log_density, x):
    x = x.clone().requires_grad_(True)
    return torch.autograd.grad(log_density(x).sum(), x)[0]


def test_edm_velocity_is_minus_sigma_times_the_score(mixture, points):
    x, u = points
    sigma = 10 * u
    expected = -sigma.view(-1, 1, 1) * score(
        lambda y: mixture_log_density(mixture, y, torch.ones_like(sigma), sigma**2), x
    )
    torch.testing.assert_close(mixture.edm(x, sigma), expected, rtol=1e-10, atol=1e-12)


def test_rectified_velocity_from_the_score(mixture, points):
    """v = (x + (1 - t) grad log p_t(x)) / t, since E[x0 | x_t] = -(1 - t) grad log p_t(x_t)."""
    x, t = points
    log_density = lambda y: mixture_log_density(mixture, y, t, (1 - t) ** 2)  # noqa: E731
    expected = (x + (1 - t).view(-1, 1, 1) * score(log_density, x)) / t.view(-1, 1, 1)
    torch.testing.assert_close(mixture.rectified(x, t), expected, rtol=1e-9, atol=1e-10)


def test_rectified_velocity_at_noise_points_to_the_data_mean(mixture, points):
    x, _ = points
    data_mean = (mixture.log_weights.exp()[:, None] * mixture.means).sum(0).reshape(2, 3)
    torch.testing.assert_close(mixture.rectified(x, torch.zeros(6, dtype=torch.float64)), data_mean - x)


def test_adapters_agree_with_the_closed_form(mixture, points):
    x, u = points
    sigma = 20 * u
    torch.testing.assert_close(
        DenoiserVelocity(mixture.denoiser)(x, sigma), mixture.edm(x, sigma), rtol=1e-10, atol=1e-12
    )
    torch.testing.assert_close(
        RectifiedAsEDM(mixture.rectified)(x, sigma), mixture.edm(x, sigma), rtol=1e-9, atol=1e-10
    )


def test_edm_velocity_is_finite_and_zero_at_sigma_zero(mixture, points):
    x, _ = points
    assert torch.equal(mixture.edm(x, torch.zeros(6, dtype=torch.float64)), torch.zeros_like(x))


def test_samples_have_the_mixture_moments():
    mixture = GaussianMixture.random(3, (4,), seed=2, diagonal=True)
    draws = mixture.sample(200_000, generator=torch.Generator().manual_seed(0))
    weights = mixture.log_weights.exp()[:, None]
    mean = (weights * mixture.means).sum(0)
    variance = (weights * (mixture.variances + mixture.means**2)).sum(0) - mean**2
    torch.testing.assert_close(draws.mean(0), mean, atol=4e-3, rtol=0)
    torch.testing.assert_close(draws.var(0), variance, atol=4e-3, rtol=0.02)


def test_mixture_rejects_bad_parameters():
    with pytest.raises(GenkitError, match="stds must have shape"):
        GaussianMixture(torch.zeros(2, 3), torch.ones(3))
    with pytest.raises(GenkitError, match="positive"):
        GaussianMixture(torch.zeros(2, 3), torch.tensor([1.0, -1.0]))
    with pytest.raises(GenkitError, match="shape"):
        GaussianMixture(torch.zeros(2, 3), torch.ones(2)).edm(torch.zeros(1, 4), torch.ones(1))


def test_gradient_field_of_a_quadratic_potential():
    matrix = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    field = GradientVelocity(lambda x: -0.5 * ((x @ matrix) * x).sum(-1))
    x = torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(field(x, torch.zeros(5)), -x @ matrix)
    assert not field(x, torch.zeros(5)).requires_grad


@pytest.mark.parametrize("path", [RectifiedPath(), EDMPath()])
def test_path_target_is_the_time_derivative_of_the_interpolation(path):
    generator = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(2, 4, 3, generator=generator, dtype=torch.float64)
    t = torch.rand(4, generator=generator, dtype=torch.float64)
    _, derivative = torch.func.jvp(lambda s: path.interpolate(x0, x1, s), (t,), (torch.ones_like(t),))
    torch.testing.assert_close(derivative, path.target(x0, x1, t))


def test_path_ends_starts_schedules_and_data_maps():
    rectified, edm = RectifiedPath(), EDMPath()
    x0, x1 = torch.randn(2, 3, 5, dtype=torch.float64)
    ones = torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close(rectified.interpolate(x0, x1, 0 * ones), x0)
    torch.testing.assert_close(rectified.interpolate(x0, x1, ones), x1)
    assert (rectified.t_start, rectified.t_end, edm.t_start, edm.t_end) == (0.0, 1.0, 80.0, 0.002)
    z = torch.randn(4, 2, dtype=torch.float64)
    assert torch.equal(rectified.start(z), z) and torch.equal(edm.start(z), 80 * z)
    # Schedules span the path's time from its start to its end.
    assert edm.timesteps("karras", 4)[[0, -1]].tolist() == pytest.approx([80.0, 0.002])
    assert rectified.timesteps("uniform", 3).tolist() == [0.0, 0.5, 1.0]
    # A rectified field seen in EDM form ends at x~ = x1 (1 + sigma_min); its data map undoes that.
    seen = EDMPath(data_scale=1 / 1.002)
    torch.testing.assert_close(seen.to_data(x1 * 1.002), x1)
    assert torch.equal(edm.to_data(x1), x1) and torch.equal(rectified.to_data(x1), x1)
