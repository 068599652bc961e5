"""AMED-Solver against DPM-Solver-2 and Euler (facts 1-2), the Gaussian's exact r (fact 10), NFE, predictor."""

import math

import pytest
import torch

from genkit import GaussianMixture
from samplers import (
    AMEDPredictor,
    CountingVelocity,
    SamplerError,
    amed,
    amed_plugin,
    dpm_solver_2,
    dpmpp_2m,
    euler,
    karras,
    solve,
)
from samplers.amed import amed_plugin_step, intermediate_time, slope_features

DATA_STD = 0.5


def constant(r: float, c: float = 1.0, a: float = 1.0):
    """A predictor that always answers (r, c, a)."""

    def predict(features, t, t_next):
        full = lambda value: torch.full((features.shape[0],), value, dtype=torch.float64)  # noqa: E731
        return full(r), full(c), full(a)

    return predict


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture.random(4, (64,), seed=2, diagonal=True)


@pytest.fixture
def x():
    return 80 * torch.randn(6, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_r_one_half_is_dpm_solver_2_and_r_zero_is_euler(mixture, x):
    timesteps = karras(5)
    torch.testing.assert_close(
        amed(mixture.edm, x, timesteps, constant(0.5), afs=False), dpm_solver_2(mixture.edm, x, timesteps)
    )
    torch.testing.assert_close(
        amed(mixture.edm, x, timesteps, constant(0.0), afs=False), euler(mixture.edm, x, timesteps)
    )


def test_scale_factors_enter_as_the_formula_says(mixture, x):
    """c scales the full step; a rescales the time the network sees while the slope is divided by s."""
    t, t_next = karras(4)[1:3]
    two = torch.stack([t, t_next])
    out = amed(mixture.edm, x, two, constant(0.3, c=1.01, a=0.9), afs=False)
    s = intermediate_time(t, t_next, torch.tensor(0.3, dtype=torch.float64))
    x_s = x + (s - t) * mixture.edm(x, t.expand(6))
    denoised = mixture.denoiser(x_s, (0.9 * s).expand(6))
    torch.testing.assert_close(out, x + 1.01 * (t_next - t) * (x_s - denoised) / s)


def test_the_intermediate_time_lies_between_the_ends_and_is_log_linear_in_r():
    t, t_next = torch.tensor(9.7232, dtype=torch.float64), torch.tensor(0.47, dtype=torch.float64)
    r = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    s = intermediate_time(t, t_next, r)
    assert ((s < t) & (s > t_next)).all()
    torch.testing.assert_close(s.log(), t.log() + r * (t_next.log() - t.log()))


def exact_r(t_from: float, t_to: float, data_std: float = DATA_STD) -> float:
    """The r that makes one AMED step exact on data N(0, s^2) (fact 10), by bisection on the 1-D error."""
    field = lambda x, sigma: sigma.view(-1, 1) * x / (data_std**2 + sigma.view(-1, 1) ** 2)  # noqa: E731
    x = torch.ones(1, 1, dtype=torch.float64)
    exact = math.sqrt((data_std**2 + t_to**2) / (data_std**2 + t_from**2))
    timesteps = torch.tensor([t_from, t_to], dtype=torch.float64)
    error = lambda r: (amed(field, x, timesteps, constant(r), afs=False) - exact).item()  # noqa: E731
    low, high = 1e-6, 1 - 1e-6
    assert error(low) * error(high) < 0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if error(low) * error(middle) > 0 else (low, middle)
    return (low + high) / 2


def test_an_exact_r_exists_on_the_isotropic_gaussian_with_the_documented_values():
    assert exact_r(80.0, 9.7232) == pytest.approx(0.43, abs=0.01)
    assert exact_r(0.47, 0.002) == pytest.approx(0.13, abs=0.01)


@pytest.mark.parametrize(("afs", "expected"), [(True, 5), (False, 6)])
def test_nfe_is_two_per_interval_less_one_with_afs(mixture, x, afs, expected):
    counting = CountingVelocity(mixture.edm)
    called_at = []
    recording = lambda y, t: called_at.append(t[0].item()) or counting(y, t)  # noqa: E731
    amed(recording, x, karras(4), constant(0.4), afs=afs)
    assert counting.nfe == expected
    assert (80.0 in called_at) is not afs
    counting = CountingVelocity(mixture.edm)
    solve(counting, x, "amed", expected, solver_opts={"predictor": constant(0.4), "afs": afs})
    assert counting.nfe == expected


def test_afs_uses_the_analytic_slope_and_zero_features(mixture, x):
    seen = []

    def predict(features, t, t_next):
        seen.append(features.abs().sum().item())
        return constant(0.5)(features, t, t_next)

    amed(mixture.edm, x, karras(3), predict, afs=True)
    assert seen[0] == 0 and seen[1] > 0


def test_sample_needs_a_predictor_and_amed_refuses_sigma_zero(mixture, x):
    with pytest.raises(SamplerError, match="predictor"):
        solve(mixture.edm, x, "amed", 5)
    with pytest.raises(SamplerError, match="sigma > 0"):
        amed(mixture.edm, x, torch.tensor([1.0, 0.0], dtype=torch.float64), constant(0.5))


def test_predictor_size_bounds_and_features():
    """About 9k parameters (fact 11), r in (0, 1), c within its +-1% bound (fact 5), a = 1 when off."""
    predictor = AMEDPredictor(scale_dir=0.01)
    assert sum(p.numel() for p in predictor.parameters()) == 64 * 128 + 128 + 128 * 4 + 4 + 8 * 8 + 8 + 2 * 21
    features = 3 * torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    r, c, a = predictor(features, torch.tensor(80.0), torch.tensor(9.7))
    # Closed bounds: in float32 a saturated sigmoid reaches the ends exactly.
    assert ((r >= 0) & (r <= 1)).all() and ((c >= 0.99) & (c <= 1.01)).all() and torch.equal(a, torch.ones(32))
    assert r.std() > 0 and c.std() > 0
    images = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    pooled = slope_features(images)
    assert pooled.shape == (2, 64)
    torch.testing.assert_close(pooled[0, 0], images[0, :, :2, :2].mean())


def test_plugins_at_their_neutral_r_are_their_base_solvers(mixture, x):
    """docs/amed.md §4.1-4.3: DPM-2 plugin at r = 1/2 is DPM-Solver-2; Euler plugin at r = 0 is Euler;
    order-1 iPNDM is Euler's."""
    timesteps = karras(5)
    plugin = lambda base, r, **opts: amed_plugin(mixture.edm, x, timesteps, constant(r), base=base, afs=False, **opts)  # noqa: E731
    torch.testing.assert_close(plugin("dpm_solver_2", 0.5), dpm_solver_2(mixture.edm, x, timesteps))
    torch.testing.assert_close(plugin("euler", 0.0), euler(mixture.edm, x, timesteps))
    torch.testing.assert_close(plugin("ipndm", 0.3, max_order=1), plugin("euler", 0.3))
    # DPM-Solver++(2M) plugin at r = 1/2 is DPM-Solver++(2M) on the grid with the geometric midpoints inserted.
    midpoints = (timesteps[:-1] * timesteps[1:]).sqrt()
    refined = torch.stack([timesteps[:-1], midpoints], dim=1).flatten().tolist() + [timesteps[-1].item()]
    torch.testing.assert_close(plugin("dpmpp_2m", 0.5), dpmpp_2m(mixture.edm, x, torch.tensor(refined)))
    with pytest.raises(SamplerError, match="base 'unipc'"):
        plugin("unipc", 0.5)


def test_ipndm_plugin_keeps_slopes_at_t_and_s_in_one_history(mixture, x):
    """Two intervals by hand: sub-steps of orders 1-4 over the slopes d0, d_s0, d1, d_s1; c on the second sub-steps."""
    t0, t1, t2 = karras(3)
    r, c = torch.tensor(0.4, dtype=torch.float64), 1.005
    v = lambda y, sigma: mixture.edm(y, sigma.expand(6))  # noqa: E731
    s0, s1 = intermediate_time(t0, t1, r), intermediate_time(t1, t2, r)
    d0 = v(x, t0)
    x_s0 = x + (s0 - t0) * d0
    d_s0 = v(x_s0, s0)
    x1 = x_s0 + c * (t1 - s0) * (3 * d_s0 - d0) / 2
    d1 = v(x1, t1)
    x_s1 = x1 + (s1 - t1) * (23 * d1 - 16 * d_s0 + 5 * d0) / 12
    d_s1 = v(x_s1, s1)
    x2 = x_s1 + c * (t2 - s1) * (55 * d_s1 - 59 * d1 + 37 * d_s0 - 9 * d0) / 24
    out = amed_plugin(mixture.edm, x, karras(3), constant(0.4, c=c), base="ipndm", afs=False)
    torch.testing.assert_close(out, x2)


def test_plugin_nfe_and_sample(mixture, x):
    for afs, expected in ((True, 5), (False, 6)):
        counting = CountingVelocity(mixture.edm)
        solve(counting, x, "amed_plugin", expected, solver_opts={"predictor": constant(0.5), "afs": afs})
        assert counting.nfe == expected


def test_dpmpp_plugin_scales_the_second_increment_and_uses_the_afs_denoised(mixture, x):
    """With AFS the first denoised value is x - t x / sqrt(1 + t^2); c multiplies x_{n+1} - x_s (docs/amed.md §4)."""
    t0, t1 = karras(2)
    r, c = torch.tensor(0.3, dtype=torch.float64), 0.995
    s = intermediate_time(t0, t1, r)
    denoised0 = x - t0 * x / math.sqrt(1 + t0.item() ** 2)
    x_s = (s / t0) * x - torch.expm1(-(t0 / s).log()) * denoised0
    denoised_s = x_s - s * mixture.edm(x_s, s.expand(6))
    ratio = (t0 / s).log() / (s / t1).log()
    denoised_hat = (1 + 1 / (2 * ratio)) * denoised_s - denoised0 / (2 * ratio)
    x1 = (t1 / s) * x_s - torch.expm1(-(s / t1).log()) * denoised_hat
    out = amed_plugin(mixture.edm, x, karras(2), constant(0.3, c=c), base="dpmpp_2m", afs=True)
    torch.testing.assert_close(out, x_s + c * (x1 - x_s))


@pytest.mark.parametrize("base", ["euler", "dpm_solver_2", "ipndm", "dpmpp_2m"])
def test_the_plugin_is_its_step_function_chained_with_the_history(mixture, x, base):
    timesteps = karras(4).to(torch.float64)
    x_steps, history = x, []
    for i in range(3):
        x_steps, history = amed_plugin_step(
            mixture.edm, x_steps, timesteps[i], timesteps[i + 1], constant(0.4), history, base, afs=i == 0
        )
    torch.testing.assert_close(x_steps, amed_plugin(mixture.edm, x, timesteps, constant(0.4), base=base))


class BottleneckField:
    """The mixture field with a made-up bottleneck: the first 64 coordinates of x, scaled."""

    def __init__(self, field):
        self.field = field

    def __call__(self, x, t):
        return self.field(x, t)

    def velocity_and_bottleneck(self, x, t):
        return self.field(x, t), 2 * x[:, :64]


def test_a_bottleneck_predictor_reads_the_fields_features_and_refuses_a_field_without(mixture, x):
    seen = []

    def predict(features, t, t_next):
        seen.append(features)
        return constant(0.5)(features, t, t_next)

    predict.features = "bottleneck"
    counting = CountingVelocity(BottleneckField(mixture.edm))
    out = amed(counting, x, karras(3), predict, afs=True)
    torch.testing.assert_close(out, amed(mixture.edm, x, karras(3), constant(0.5), afs=True))
    assert counting.nfe == 3
    assert torch.equal(seen[0], torch.zeros(6, 64, dtype=torch.float64))
    x1 = amed(mixture.edm, x, karras(3)[:2], constant(0.5), afs=True)
    torch.testing.assert_close(seen[1], 2 * x1[:, :64])
    with pytest.raises(SamplerError, match="no velocity_and_bottleneck"):
        amed(mixture.edm, x, karras(3), predict, afs=True)
    assert AMEDPredictor(features="bottleneck").features == "bottleneck"
    with pytest.raises(SamplerError, match="features 'pixels'"):
        AMEDPredictor(features="pixels")
