"""The data-aware analytical first step: exact on Gaussian data N(mu, s^2), the zero-mean AFS as its special case,
and the data statistics saved with a distilled predictor (docs/amed.md §3.4)."""

import math

import pytest
import torch
from test_amed import constant
from torch.utils.data import TensorDataset

from genkit import GaussianMixture
from genkit.config import config_dict
from genkit.errors import GenkitError
from genkit.fields import Field, FieldConfig
from genkit.paths import EDMPath
from genkit.predictors import load_predictor
from genkit.train.amed import AmedRunConfig, AmedSettings, AmedTrainer, data_statistics, start_states
from genkit.train.config import TrainConfig
from genkit.train.loop import Loop
from samplers import CountingVelocity, SamplerError, amed, amed_plugin, karras
from samplers.amed import gaussian_first_slope

SIGMA_MAX = 80.0
SHAPE = (3, 4, 4)


@pytest.fixture(scope="module")
def gaussian():
    """N(mu, diag(s^2)) on 3x4x4 'images' with a mean far from 0 (as the digits' background at -1)."""
    generator = torch.Generator().manual_seed(0)
    mean = -0.8 + 0.3 * torch.rand((1, *SHAPE), generator=generator, dtype=torch.float64)
    std = 0.05 + 0.3 * torch.rand((1, *SHAPE), generator=generator, dtype=torch.float64)
    return GaussianMixture(mean, std)


@pytest.fixture
def x():
    return SIGMA_MAX * torch.randn((5, *SHAPE), generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def statistics(gaussian: GaussianMixture) -> tuple[torch.Tensor, torch.Tensor]:
    return gaussian.means.reshape(SHAPE), gaussian.variances.reshape(SHAPE)


def test_the_data_aware_first_slope_is_the_exact_one_and_the_zero_mean_one_is_not(gaussian, x):
    sigma = torch.full((x.shape[0],), SIGMA_MAX, dtype=torch.float64)
    exact = gaussian.edm(x, sigma)
    torch.testing.assert_close(gaussian_first_slope(x, SIGMA_MAX, *statistics(gaussian)), exact, rtol=1e-12, atol=0)
    zero_mean = x / math.sqrt(1 + SIGMA_MAX**2)
    assert (zero_mean - exact).abs().max() > 1e-3  # the mean's pull, -mu / sigma_max ~ 1e-2
    # An isotropic (scalar) variance is the same formula.
    isotropic = GaussianMixture(gaussian.means.reshape(1, *SHAPE), torch.tensor([0.3], dtype=torch.float64))
    slope = gaussian_first_slope(x, SIGMA_MAX, gaussian.means.reshape(SHAPE), 0.09)
    torch.testing.assert_close(slope, isotropic.edm(x, sigma), rtol=1e-12, atol=0)


@pytest.mark.parametrize("solver", ["amed", "ipndm", "dpmpp_2m", "euler"])
def test_with_the_data_aware_afs_a_solve_equals_the_one_that_evaluates_the_field_at_sigma_max(gaussian, x, solver):
    """The first step is the only difference between AFS and no AFS, so on Gaussian data they agree to round-off,
    one evaluation cheaper."""
    timesteps = karras(4)
    counting = CountingVelocity(gaussian.edm)
    if solver == "amed":
        run = lambda field, **afs: amed(field, x, timesteps, constant(0.4, c=1.005, a=0.95), **afs)  # noqa: E731
    else:
        run = lambda field, **afs: amed_plugin(field, x, timesteps, constant(0.4, c=1.005), base=solver, **afs)  # noqa: E731
    exact = run(gaussian.edm, afs=False)
    mean, variance = statistics(gaussian)
    data_aware = run(counting, afs=True, afs_mean=mean, afs_var=variance)
    torch.testing.assert_close(data_aware, exact, rtol=1e-10, atol=1e-10)
    assert counting.nfe == 2 * (len(timesteps) - 1) - 1
    zero_mean = run(gaussian.edm, afs=True)
    assert (zero_mean - exact).abs().max() > 1e3 * (data_aware - exact).abs().max()


def test_zero_mean_and_vanishing_variance_give_todays_afs(x):
    """Today's AFS x / sqrt(1 + t^2) is the exact slope of N(0, v) with v = t (sqrt(1 + t^2) - t) ~ 1/2, and the
    zero-mean, zero-variance slope x / t to within 1 / (2 t^2)."""
    timesteps = karras(4)
    field = lambda x, t: x / (1 + t.view(-1, 1, 1, 1))  # noqa: E731
    todays = amed(field, x, timesteps, constant(0.4), afs=True)
    zero = torch.zeros(SHAPE, dtype=torch.float64)
    v = SIGMA_MAX * (math.sqrt(1 + SIGMA_MAX**2) - SIGMA_MAX)
    data_aware = amed(field, x, timesteps, constant(0.4), afs=True, afs_mean=zero, afs_var=v)
    torch.testing.assert_close(data_aware, todays, rtol=1e-10, atol=0)  # v is the difference of two numbers ~80
    for variance in (0.0, 1e-8):
        torch.testing.assert_close(
            gaussian_first_slope(x, SIGMA_MAX, zero, variance),
            x / math.sqrt(1 + SIGMA_MAX**2),
            rtol=1 / (2 * SIGMA_MAX**2) * 1.01,
            atol=0,
        )
    torch.testing.assert_close(gaussian_first_slope(x, SIGMA_MAX, zero, 0.0), x / SIGMA_MAX, rtol=1e-15, atol=0)


def test_the_statistics_come_together_and_only_with_afs():
    x = torch.ones(2, 4, dtype=torch.float64)
    with pytest.raises(SamplerError, match="both afs_mean and afs_var"):
        amed(lambda x, t: x, x, karras(3), constant(0.5), afs_mean=torch.zeros(4))
    with pytest.raises(GenkitError, match="amed.afs=true"):
        AmedSettings(afs=False, afs_from="data")
    with pytest.raises(GenkitError, match="afs_from"):
        AmedSettings(afs_from="mean")


def test_a_mixtures_statistics_are_its_moments():
    config = FieldConfig(kind="mixture", components=3, shape=[8], seed=4, diagonal=True)
    mean, variance = data_statistics(config)
    mixture = GaussianMixture.random(3, (8,), seed=4, diagonal=True)
    draws = mixture.sample(200_000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(mean, draws.mean(0), atol=5e-3, rtol=0)
    torch.testing.assert_close(variance, draws.var(0), atol=5e-3, rtol=0.02)
    with pytest.raises(GenkitError, match="afs_from=zero_mean"):
        data_statistics(FieldConfig(kind="diffusers", path="somewhere"))


def test_a_distilled_predictor_keeps_the_statistics_and_its_solver_options_pass_them_on(gaussian, tmp_path, x):
    settings = AmedSettings(solver="amed_plugin", base="ipndm", num_steps=3, schedule="karras", afs_from="data")
    config = AmedRunConfig(
        name="afs",
        output_dir=str(tmp_path),
        num_samples=64,
        amed=settings,
        train=TrainConfig(steps=2, batch_size=32, tracker="none", log_every=1000, eval_every=1000, ema_decay=0),
    )
    loop = Loop(config.train, tmp_path / "afs", config_dict(config))
    field = Field("gaussian", SHAPE, torch.float64, [(gaussian.edm, EDMPath())])
    mean, variance = statistics(gaussian)
    trainer = AmedTrainer(config, field, loop.device, afs_statistics=(mean, variance))
    loop.run(trainer, TensorDataset(start_states(field, config.num_samples, seed=0)))

    predictor = load_predictor(tmp_path / "afs" / "model", "gaussian").to(torch.float64)
    torch.testing.assert_close(predictor.afs_mean, mean.float().double(), rtol=0, atol=0)
    torch.testing.assert_close(predictor.afs_var, variance.float().double(), rtol=0, atol=0)
    options = predictor.tied_settings.solver_options(predictor)
    assert options["afs_mean"] is predictor.afs_mean and options["afs_var"] is predictor.afs_var
    with torch.no_grad():
        sampled = amed_plugin(gaussian.edm, x, karras(3), **options)
        explicit = amed_plugin(gaussian.edm, x, karras(3), predictor, afs_mean=mean, afs_var=variance)
        without = amed_plugin(gaussian.edm, x, karras(3), predictor)
    torch.testing.assert_close(sampled, explicit, rtol=1e-6, atol=1e-6)
    assert (sampled - without).abs().max() > 1e-3
