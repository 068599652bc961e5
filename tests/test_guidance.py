"""Conditions and classifier-free guidance (genkit/guidance.py) against a Gaussian mixture's closed form."""

import pytest
import torch

import samplers
from genkit.errors import GenkitError
from genkit.fields import FieldConfig
from genkit.gaussian_mixture import GaussianMixture
from genkit.guidance import Guidance
from genkit.noise import initial_conditions

CONFIG = FieldConfig(kind="mixture", components=4, shape=[3], seed=1, diagonal=True, conditional=True)


def component_velocity(mixture: GaussianMixture, k: int, x, sigma):
    """Component k alone in closed form: dx/dsigma = sigma / (s_k^2 + sigma^2) (x - mu_k)."""
    variance = mixture.variances[k] + sigma[:, None] ** 2
    return sigma[:, None] / variance * (x - mixture.means[k])


def test_w1_is_the_component_w0_the_mixture_and_w_extrapolates():
    field = CONFIG.load()
    mixture = GaussianMixture.random(4, (3,), 1, True)
    x = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = torch.linspace(0.05, 5, 8, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    exact = torch.cat([component_velocity(mixture, k, x[i : i + 1], sigma[i : i + 1]) for i, k in enumerate(labels)])
    unconditional = mixture.edm(x, sigma)
    at = lambda w: field.bind(labels, Guidance(w)).edm(x, sigma)  # noqa: E731
    torch.testing.assert_close(at(1.0), exact, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(at(0.0), unconditional, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(at(3.0), unconditional + 3 * (exact - unconditional), rtol=1e-10, atol=1e-12)


def test_guidance_costs_one_evaluation_a_call_and_w1_equals_the_conditional_solve():
    field = CONFIG.load()
    z = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    calls = []
    for w in (1.0, 2.5):
        bound = field.bind(labels, Guidance(w))
        velocity, path = bound.form("karras", "heun")
        counting = samplers.CountingVelocity(velocity)
        samplers.solve(counting, path.start(z), "heun", 6, "karras", path.schedule_options())
        calls.append(counting.nfe)
    assert calls == [6, 6]
    # w = 1 on the batch of both branches (an interval that holds every sigma) equals the one-branch solve.
    both = field.bind(labels, Guidance(1.0 + 1e-300, interval=(0.0, 1e9)))
    torch.testing.assert_close(both.solve(z, "heun", 6, "karras"), field.bind(labels).solve(z, "heun", 6, "karras"))


def test_a_guidance_interval_guides_only_inside_it():
    field = CONFIG.load()
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 3])
    sigma = torch.tensor([0.1, 1.0, 2.0, 10.0], dtype=torch.float64)
    inside = field.bind(labels, Guidance(4.0, interval=(0.5, 3.0))).edm(x, sigma)
    guided, conditional = field.bind(labels, Guidance(4.0)).edm(x, sigma), field.bind(labels).edm(x, sigma)
    torch.testing.assert_close(inside[[1, 2]], guided[[1, 2]])
    torch.testing.assert_close(inside[[0, 3]], conditional[[0, 3]])


def test_conditions_are_drawn_as_in_data_and_per_sample():
    frequencies = torch.tensor([0.1, 0.2, 0.7], dtype=torch.float64)
    draws = initial_conditions(list(range(4000)), frequencies, seed=3)
    shares = torch.bincount(draws, minlength=3) / len(draws)
    # The binomial standard error at n = 4000 is at most 0.008: the margin is 5 of them.
    torch.testing.assert_close(shares.double(), frequencies, atol=0.04, rtol=0)
    torch.testing.assert_close(initial_conditions([5, 7], frequencies, 3), draws[[5, 7]])


def test_bad_conditions_are_one_line():
    field = CONFIG.load()
    with pytest.raises(GenkitError, match="class 4 is out of range: the model has classes 0..3"):
        field.bind(torch.tensor([0, 4]))
    with pytest.raises(GenkitError, match="does not fit this model"):
        field.bind(torch.zeros(2, 5))
    with pytest.raises(GenkitError, match="unconditional"):
        FieldConfig(kind="mixture", components=4, shape=[3]).load().bind(torch.tensor([0]), Guidance(2.0))
    with pytest.raises(GenkitError, match="class-conditional"):
        field.solve(torch.zeros(2, 3), "euler", 4, "karras")
    with pytest.raises(GenkitError, match="guidance weight"):
        Guidance(-1.0)
    with pytest.raises(GenkitError, match="bound to 2 conditions but was called on 3"):
        field.bind(torch.tensor([0, 1])).edm(torch.zeros(3, 3), torch.ones(3))
