import math

import pytest
import torch

from samplers import SamplerError, karras, logsnr, time_uniform, uniform
from samplers.schedules import vp_refit


@pytest.mark.parametrize(
    ("schedule", "n", "expected"),
    [
        (karras, 4, [80, 9.7232, 0.4700, 0.002]),
        (karras, 5, [80, 17.53, 2.515, 0.1698, 0.002]),
        (logsnr, 4, [80, 2.3392, 0.0684, 0.002]),
        (time_uniform, 4, [80, 6.950, 1.287, 0.002]),
        (time_uniform, 5, [80, 11.73, 2.824, 0.8565, 0.002]),
    ],
)
def test_schedule_matches_diff_sampler_vectors(schedule, n, expected):
    values = schedule(n)
    assert values.dtype == torch.float64
    torch.testing.assert_close(values, torch.tensor(expected, dtype=torch.float64), rtol=5e-4, atol=0)


def test_time_uniform_refit_constants_hit_both_ends():
    beta_d, beta_min = vp_refit()
    assert beta_d == pytest.approx(17.538, abs=1e-3)
    assert beta_min == pytest.approx(-0.00477, abs=1e-5)
    for tau, sigma in [(1.0, 80.0), (1e-3, 0.002)]:
        assert math.sqrt(math.expm1(0.5 * beta_d * tau**2 + beta_min * tau)) == pytest.approx(sigma, rel=1e-9)


def test_karras_rho_one_is_uniform_in_sigma_and_logsnr_is_geometric():
    torch.testing.assert_close(karras(6, 1.0, 11.0, rho=1), torch.linspace(11, 1, 6, dtype=torch.float64))
    ratios = logsnr(7)[1:] / logsnr(7)[:-1]
    torch.testing.assert_close(ratios, ratios[:1].expand(6))


def test_uniform_runs_either_way():
    torch.testing.assert_close(uniform(5), torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=torch.float64))
    torch.testing.assert_close(uniform(3, 1.0, 0.0), torch.tensor([1, 0.5, 0], dtype=torch.float64))


def test_schedule_needs_an_interval():
    with pytest.raises(ValueError, match="at least 2"):
        karras(1)
    assert issubclass(SamplerError, ValueError)
