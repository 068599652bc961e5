"""A field owns its time convention: where a solve starts, which schedules span its time, how it maps to data.

The reference is a single Gaussian N(mu, diag(s^2)), whose probability-flow ODE has a closed-form solution in both
conventions: along the EDM flow (x - mu) / sqrt(s^2 + sigma^2) is constant, along the rectified flow
(x_t - t mu) / sqrt(t^2 s^2 + (1 - t)^2) is (docs/samplers.md §1).
"""

import pytest
import torch

from genkit.errors import GenkitError
from genkit.fields import Field, FieldConfig
from genkit.gaussian_mixture import GaussianMixture
from genkit.paths import EDMPath, RectifiedPath
from genkit.velocity import RectifiedAsEDM

MEAN = torch.tensor([[0.5, -0.3, 0.1]], dtype=torch.float64)
STD = torch.tensor([[0.2, 0.1, 0.3]], dtype=torch.float64)
GAUSSIAN = GaussianMixture(MEAN, STD)
NOISE = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
SIGMA_MIN, SIGMA_MAX = EDMPath().sigma_min, EDMPath().sigma_max


def rectified_flow(t0: float, x0: torch.Tensor, t1: float) -> torch.Tensor:
    """x(t1) of the rectified flow of N(MEAN, STD^2) from x(t0) = x0."""
    scale = lambda t: (t**2 * STD**2 + (1 - t) ** 2).sqrt()  # noqa: E731
    return t1 * MEAN + scale(t1) * (x0 - t0 * MEAN) / scale(t0)


def edm_flow(sigma0: float, x0: torch.Tensor, sigma1: float) -> torch.Tensor:
    """x(sigma1) of the EDM flow of N(MEAN, STD^2) from x(sigma0) = x0."""
    return MEAN + (STD**2 + sigma1**2).sqrt() * (x0 - MEAN) / (STD**2 + sigma0**2).sqrt()


def gaussian_field(*forms) -> Field:
    return Field("gaussian", (3,), torch.float64, list(forms))


RECTIFIED = (GAUSSIAN.rectified, RectifiedPath())
EDM = (GAUSSIAN.edm, EDMPath())
FLOW_AS_EDM = (RectifiedAsEDM(GAUSSIAN.rectified), EDMPath(data_scale=1 / (1 + SIGMA_MIN)))


@pytest.mark.parametrize(
    "forms, schedule, exact",
    [
        ([RECTIFIED, FLOW_AS_EDM], "uniform", rectified_flow(0.0, NOISE, 1.0)),
        ([EDM, RECTIFIED], "karras", edm_flow(SIGMA_MAX, SIGMA_MAX * NOISE, SIGMA_MIN)),
        # A flow seen in EDM form starts at sigma_max, i.e. t = 1 / (1 + sigma_max), from the noise term alone, and
        # its data is the rectified state at t = 1 / (1 + sigma_min).
        (
            [RECTIFIED, FLOW_AS_EDM],
            "karras",
            rectified_flow(1 / (1 + SIGMA_MAX), SIGMA_MAX / (1 + SIGMA_MAX) * NOISE, 1 / (1 + SIGMA_MIN)),
        ),
    ],
)
def test_each_convention_starts_from_its_prior_and_ends_in_data_space(forms, schedule, exact):
    field = gaussian_field(*forms)
    # DOP853 at rtol = atol = 1e-9 ends within ~1e-9 of the closed form; a data map off by 1 + sigma_min errs by 1e-3.
    reference, evaluations = field.reference(NOISE, schedule, 1e-9)
    torch.testing.assert_close(reference, exact, rtol=0, atol=1e-5)
    assert evaluations > 0
    # Heun is second order: doubling the steps quarters the error, unless a start or data map is off by a constant.
    errors = [(field.solve(NOISE, "heun", nfe, schedule) - exact).abs().max() for nfe in (256, 512)]
    assert 3.5 < errors[0] / errors[1] < 4.5


def test_a_schedule_the_field_cannot_span_is_one_line():
    edm_only = gaussian_field(EDM)
    with pytest.raises(GenkitError, match=r"schedule uniform does not fit this field \(gaussian\); it takes"):
        edm_only.solve(NOISE, "euler", 4, "uniform")
    both = gaussian_field(RECTIFIED, FLOW_AS_EDM)
    with pytest.raises(GenkitError, match="dpmpp_2m works in sigma space; pick a sigma schedule"):
        both.solve(NOISE, "dpmpp_2m", 4, "uniform")


def test_the_default_schedule_is_native_time_where_the_solver_can_use_it():
    flow, edm_only = gaussian_field(RECTIFIED, FLOW_AS_EDM), gaussian_field(EDM)
    assert flow.default_schedule("euler") == "uniform"
    assert flow.default_schedule("dpmpp_2m") == edm_only.default_schedule("dpmpp_2m") == "logsnr"
    assert edm_only.default_schedule("euler") == "karras"


def test_a_mixture_field_is_solved_in_either_convention():
    field = FieldConfig(kind="mixture", components=1, shape=[3]).load()
    assert field.schedules == ("karras", "logsnr", "time_uniform", "uniform", "ds_respaced")
    assert field.dtype == torch.float64
