"""The scipy reference against exact solutions, then every solver against the reference on a mixture."""

import math

import pytest
import torch

from genkit import GaussianMixture, RectifiedAsEDM
from samplers import BASELINES, karras, logsnr, reference, solve, uniform


def test_reference_matches_the_gaussian_closed_form():
    data_std = 0.5
    x = 80 * torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    field = GaussianMixture(torch.zeros(1, 5, dtype=torch.float64), torch.tensor([data_std]))
    exact = x * math.sqrt((data_std**2 + 0.002**2) / (data_std**2 + 80**2))
    torch.testing.assert_close(
        reference(field.edm, x, 80.0, 0.002, rtol=1e-10, atol=1e-12), exact, rtol=1e-8, atol=1e-10
    )


@pytest.fixture(scope="module")
def mixture_problem():
    """A 5-component diagonal mixture in 64 dimensions, its noise and its reference end state."""
    field = GaussianMixture.random(5, (64,), seed=3, diagonal=True)
    x = 80 * torch.randn(16, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return field, x, reference(field.edm, x, 80.0, 0.002, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", BASELINES)
def test_every_solver_converges_to_the_reference_on_a_mixture(name, mixture_problem):
    field, x, x_ref = mixture_problem
    schedule = "logsnr" if name == "dpmpp_2m" else "karras"
    rmse = [
        (solve(field.edm, x, name, nfe, schedule=schedule) - x_ref).pow(2).mean().sqrt().item()
        for nfe in (4, 8, 16, 32, 64)
    ]
    assert all(fine < coarse for coarse, fine in zip(rmse, rmse[1:], strict=False)), rmse
    assert rmse[-1] < 0.1 * rmse[0] and rmse[-1] < 0.01


def test_rectified_field_reaches_the_same_data_in_either_time(mixture_problem):
    """Integrating v in t, or its EDM form in sigma = (1-t)/t, gives the same end point x_t = t x~."""
    field, x, x_ref = mixture_problem
    t_start, t_end = 1 / 81, 1 / 1.002
    rectified_end = reference(field.rectified, x * t_start, t_start, t_end, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(rectified_end / t_end, x_ref, rtol=1e-6, atol=1e-6)
    converted = solve(RectifiedAsEDM(field.rectified), x, "heun", 20)
    torch.testing.assert_close(converted, solve(field.edm, x, "heun", 20), rtol=1e-10, atol=1e-10)


def test_rectified_sampling_from_noise_converges_to_the_reference():
    field = GaussianMixture.random(4, (8,), seed=5)
    noise = torch.randn(32, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x_ref = reference(field.rectified, noise, 0.0, 1.0)
    errors = [
        (solve(field.rectified, noise, "heun", n, schedule="uniform") - x_ref).abs().max().item() for n in (8, 32, 128)
    ]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 3e-3


def test_schedules_are_what_sample_uses():
    seen = []
    field = GaussianMixture.random(2, (3,), seed=0)
    x = torch.ones(1, 3, dtype=torch.float64)
    for schedule, expected in (("karras", karras(5)), ("logsnr", logsnr(5)), ("uniform", uniform(5))):
        seen.clear()
        solve(field.edm, x, "euler", 4, schedule=schedule, callback=lambda info: seen.append(info["t"].item()))
        assert seen == pytest.approx(expected[:-1].tolist())


ORDERS = {"euler": 1, "heun": 2, "dpm_solver_2": 2, "dpmpp_2m": 2, "ipndm": 2}


def test_measured_orders_on_an_image_sized_mixture():
    """At large NFE on 3x16x16: Euler first order; the rest second (iPNDM's equal-step weights on Karras steps)."""
    field = GaussianMixture.random(8, (3, 16, 16), seed=0)
    x = 80 * torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_ref = reference(field.edm, x, 80.0, 0.002, rtol=1e-11, atol=1e-11)
    for name, order in ORDERS.items():
        schedule = "logsnr" if name == "dpmpp_2m" else "karras"
        coarse, fine = (
            (solve(field.edm, x, name, nfe, schedule=schedule) - x_ref).pow(2).mean().sqrt() for nfe in (128, 256)
        )
        assert math.log2(coarse / fine) == pytest.approx(order, abs=0.15), name
