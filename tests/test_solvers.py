"""Solvers against the exact solution of the isotropic-Gaussian ODE, closed-form integrals and each other."""

import math

import pytest
import torch

from genkit import GaussianMixture
from samplers import (
    BASELINES,
    SOLVERS,
    CountingVelocity,
    SamplerError,
    dpm_solver_2,
    dpmpp_2m,
    euler,
    heun,
    ipndm,
    karras,
    logsnr,
    solve,
    uniform,
)

DATA_STD = 0.5


def gaussian_field(x, sigma):
    """EDM velocity of data N(0, s^2 I): sigma x / (s^2 + sigma^2)."""
    sigma = sigma.view(-1, *[1] * (x.ndim - 1))
    return sigma * x / (DATA_STD**2 + sigma**2)


def gaussian_exact(x, sigma_from, sigma_to):
    """x(sigma_to) = x(sigma_from) sqrt((s^2 + sigma_to^2) / (s^2 + sigma_from^2))."""
    return x * math.sqrt((DATA_STD**2 + sigma_to**2) / (DATA_STD**2 + sigma_from**2))


@pytest.fixture
def x():
    return torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def max_error(solver, x, timesteps):
    exact = gaussian_exact(x, timesteps[0].item(), timesteps[-1].item())
    return (solver(gaussian_field, x, timesteps) - exact).abs().max().item()


@pytest.mark.parametrize(("solver", "order"), [(euler, 1), (heun, 2), (dpm_solver_2, 2)])
def test_convergence_order_on_uniform_steps(solver, order, x):
    coarse, fine = (max_error(solver, x, torch.linspace(2.0, 0.1, n + 1, dtype=torch.float64)) for n in (32, 64))
    assert math.log2(coarse / fine) == pytest.approx(order, abs=0.1)


def test_dpmpp_2m_is_second_order_in_lambda(x):
    coarse, fine = (max_error(dpmpp_2m, x, logsnr(n + 1, 0.1, 2.0)) for n in (64, 128))
    assert math.log2(coarse / fine) == pytest.approx(2, abs=0.1)


@pytest.mark.parametrize("nfe", [4, 6, 8, 10])
def test_multistep_solvers_beat_euler_at_equal_nfe(nfe, x):
    start = 80 * x
    exact = gaussian_exact(start, 80.0, 0.002)
    errors = {
        name: (solve(gaussian_field, start, name, nfe) - exact).abs().max().item()
        for name in ("euler", "dpmpp_2m", "ipndm")
    }
    assert errors["dpmpp_2m"] < errors["euler"]
    assert errors["ipndm"] < 0.5 * errors["euler"]


def time_power(power):
    """An x-independent field v = t^power, whose integral is t^(power+1) / (power+1)."""
    return lambda x, t: t.view(-1, 1) ** power * torch.ones_like(x)


@pytest.mark.parametrize("max_order", [2, 3, 4])
def test_ipndm_steady_steps_integrate_polynomials_exactly(max_order, x):
    """Adams-Bashforth of order k is exact for degree k-1 once its history is full: the error is the warm-up's."""
    field = time_power(max_order - 1)
    short, long = torch.arange(0, 5, dtype=torch.float64) / 10, torch.arange(0, 12, dtype=torch.float64) / 10

    def error(timesteps):
        exact = x + (timesteps[-1] ** max_order - timesteps[0] ** max_order) / max_order
        return ipndm(field, x, timesteps, max_order=max_order) - exact

    assert error(short).abs().max() > 1e-6
    torch.testing.assert_close(error(long), error(short), rtol=0, atol=1e-12)
    assert (error(long) - (ipndm(field, x, long, max_order=max_order - 1) - x)).abs().max() > 1e-6


def test_ipndm_order_one_is_euler_and_bad_order_is_refused(x):
    timesteps = karras(6)
    torch.testing.assert_close(ipndm(gaussian_field, x, timesteps, max_order=1), euler(gaussian_field, x, timesteps))
    with pytest.raises(SamplerError, match="max_order"):
        ipndm(gaussian_field, x, timesteps, max_order=5)


def test_first_dpmpp_2m_step_is_ddim_and_a_step_to_zero_returns_the_denoised(x):
    gmm = GaussianMixture.random(3, (3,), seed=1)
    two = torch.tensor([5.0, 1.5], dtype=torch.float64)
    torch.testing.assert_close(dpmpp_2m(gmm.edm, x, two), euler(gmm.edm, x, two))
    to_zero = torch.tensor([0.7, 0.0], dtype=torch.float64)
    torch.testing.assert_close(dpmpp_2m(gmm.edm, x, to_zero), gmm.denoiser(x, to_zero[:1].expand(4)))


def test_two_stage_solvers_take_an_euler_step_to_zero(x):
    gmm = GaussianMixture.random(3, (3,), seed=1)
    to_zero = torch.tensor([0.7, 0.0], dtype=torch.float64)
    for solver in (heun, dpm_solver_2):
        torch.testing.assert_close(solver(gmm.edm, x, to_zero), euler(gmm.edm, x, to_zero))


def test_sigma_space_solvers_refuse_rectified_time(x):
    for solver in (dpm_solver_2, dpmpp_2m):
        with pytest.raises(SamplerError, match="RectifiedAsEDM"):
            solver(gaussian_field, x, uniform(4))


@pytest.mark.parametrize("name", BASELINES)
def test_sample_spends_exactly_nfe(name, x):
    for nfe in range(1, 13):
        counting = CountingVelocity(gaussian_field)
        if name in ("heun", "dpm_solver_2") and nfe % 2:
            with pytest.raises(SamplerError, match=f"nfe={nfe}"):
                solve(counting, x, name, nfe)
        else:
            solve(counting, x, name, nfe)
            assert counting.nfe == nfe


def test_solver_nfe_counts_the_euler_step_to_zero():
    with_zero = torch.tensor([80.0, 1.0, 0.1, 0.0], dtype=torch.float64)
    assert [SOLVERS[name].nfe(with_zero) for name in BASELINES] == [3, 5, 5, 3, 3]
    for name in BASELINES:
        solver = SOLVERS[name].function
        counting = CountingVelocity(gaussian_field)
        solver(counting, torch.ones(2, 3, dtype=torch.float64), with_zero)
        assert counting.nfe == SOLVERS[name].nfe(with_zero)


def test_sample_rejects_bad_names_and_options(x):
    with pytest.raises(SamplerError, match="unknown solver 'rk4'.*euler"):
        solve(gaussian_field, x, "rk4", 4)
    with pytest.raises(SamplerError, match="unknown schedule"):
        solve(gaussian_field, x, "euler", 4, schedule="cosine")
    with pytest.raises(SamplerError, match="bad options.*rho"):
        solve(gaussian_field, x, "euler", 4, schedule="logsnr", schedule_opts={"rho": 7})
    with pytest.raises(SamplerError, match="bad options.*max_order"):
        solve(gaussian_field, x, "heun", 4, solver_opts={"max_order": 2})


def test_callback_sees_every_step_and_float32_stays_float32(x):
    seen = []
    out = euler(gaussian_field, x.float(), karras(5), callback=lambda info: seen.append((info["i"], info["t"].item())))
    assert out.dtype == torch.float32
    assert [i for i, _ in seen] == [0, 1, 2, 3]
    assert [t for _, t in seen] == pytest.approx(karras(5)[:-1].tolist(), rel=1e-6)
