"""LD3-style learned schedules (docs/samplers.md §8.3): the brute-force optimum, parameterisation, file and CLI.

On data N(0, s^2 I) the EDM velocity is sigma / (s^2 + sigma^2) x and the exact solution is
x(sigma) = x_T sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_T^2); Euler multiplies x_T by a product of one factor a step, so
its terminal error on any schedule is a closed form that a fine grid over the interior times minimises by brute force.
"""

import math

import pytest
import torch
from launching import genkit
from tiny_models import save_tiny_ddpm

from genkit.fields import FieldConfig
from genkit.gaussian_mixture import GaussianMixture
from genkit.schedules.file import load_schedule, save_schedule
from genkit.schedules.gits import search_schedule
from genkit.schedules.ld3 import learn_schedule
from samplers import AMEDPredictor, amed_plugin, euler, karras
from samplers.ld3 import initial_logits, learn_solver, monotone_timesteps

S, SIGMA_MAX, SIGMA_MIN = 0.5, 80.0, 0.002
RATIO = math.sqrt(S**2 + SIGMA_MIN**2) / math.sqrt(S**2 + SIGMA_MAX**2)  # x(sigma_min) / x(sigma_max)
MIXTURE = {"kind": "mixture", "components": 4, "shape": [8], "seed": 1}  # as tests/test_schedule_search.py


def gaussian_velocity(x, sigma):
    return (sigma / (S**2 + sigma**2))[:, None] * x


def euler_factor(t, t_next):
    """x_{n+1} / x_n of one Euler step on the Gaussian field."""
    return 1 + (t_next - t) * t / (S**2 + t**2)


def test_the_closed_form_field_is_the_one_component_mixture():
    mixture = GaussianMixture(torch.zeros(1, 4), torch.tensor([S]))
    x, sigma = torch.randn(5, 4, dtype=torch.float64), torch.linspace(0.01, 80, 5, dtype=torch.float64)
    assert torch.allclose(mixture.edm(x, sigma), gaussian_velocity(x, sigma), rtol=1e-12)


@pytest.fixture(scope="module")
def noise():
    x = SIGMA_MAX * torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return x, RATIO * x


def learned_loss(x, target, steps):
    timesteps, _, _ = learn_solver(euler, gaussian_velocity, x, target, karras(steps + 1), log_time=True)
    loss = (euler(gaussian_velocity, x, timesteps) - target).pow(2).mean().item()
    return timesteps, loss


def test_a_learned_two_step_euler_schedule_is_the_grid_optimum(noise):
    """One interior time on a grid of 20001 log-sigma points (spacing h): the learned loss and time match its best.

    The true minimiser lies within h/2 of the grid's best, where the loss exceeds the minimum by at most
    L''(h/2)^2/2 = (second difference)/8: the learned loss may not exceed the grid's by more than that.
    """
    x, target = noise
    u = torch.linspace(math.log(SIGMA_MIN), math.log(SIGMA_MAX), 20001, dtype=torch.float64)
    h, t = (u[1] - u[0]).item(), u.exp()
    loss = (euler_factor(SIGMA_MAX, t) * euler_factor(t, SIGMA_MIN) - RATIO) ** 2 * x.pow(2).mean()
    k = int(loss.argmin())
    margin = (loss[k - 1] - 2 * loss[k] + loss[k + 1]).item() / 8
    timesteps, learned = learned_loss(x, target, 2)
    assert loss[k].item() - margin <= learned <= loss[k].item() + margin, (learned, loss[k].item(), margin)
    assert abs(timesteps[1].log().item() - u[k].item()) <= h
    # Measured: the optimum is near sigma = s (0.4989), learned 0.4989, loss 0.0615.
    assert t[k].item() == pytest.approx(S, rel=0.01)


def test_a_learned_three_step_euler_schedule_is_the_grid_optimum(noise):
    """Two interior times on a 1201 x 1201 log-sigma grid: margin sum_ij |second differences_ij| / 8 (|d_i| <= h/2)."""
    x, target = noise
    u = torch.linspace(math.log(SIGMA_MIN), math.log(SIGMA_MAX), 1201, dtype=torch.float64)
    h = (u[1] - u[0]).item()
    a, b = torch.meshgrid(u.exp(), u.exp(), indexing="ij")
    product = euler_factor(SIGMA_MAX, a) * euler_factor(a, b) * euler_factor(b, SIGMA_MIN)
    loss = torch.where(a > b, (product - RATIO) ** 2 * x.pow(2).mean(), torch.inf)
    i, j = divmod(int(loss.argmin()), len(u))
    best = loss[i, j].item()
    d_aa = loss[i - 1, j] - 2 * best + loss[i + 1, j]
    d_bb = loss[i, j - 1] - 2 * best + loss[i, j + 1]
    d_ab = (loss[i + 1, j + 1] - loss[i + 1, j - 1] - loss[i - 1, j + 1] + loss[i - 1, j - 1]) / 4
    margin = (d_aa.abs() + d_bb.abs() + 2 * d_ab.abs()).item() / 8
    timesteps, learned = learned_loss(x, target, 3)
    assert best - margin <= learned <= best + margin, (learned, best, margin)
    assert (timesteps[1:3].log() - torch.stack([u[i], u[j]])).abs().max().item() <= h


def test_the_parameterisation_is_monotone_with_exact_ends_and_starts_at_the_initial_schedule():
    for timesteps, log_time in ((karras(6), True), (torch.linspace(0, 1, 6, dtype=torch.float64), False)):
        logits = initial_logits(timesteps, log_time)
        assert torch.allclose(
            monotone_timesteps(logits, timesteps[0].item(), timesteps[-1].item(), log_time), timesteps
        )
        shaken = logits + 3 * torch.randn(5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        times = monotone_timesteps(shaken, timesteps[0].item(), timesteps[-1].item(), log_time)
        assert times[0] == timesteps[0] and times[-1] == timesteps[-1]
        assert (times.diff().sign() == timesteps.diff().sign()).all()


@pytest.mark.parametrize(("solver", "schedule"), [("ipndm", None), ("dpmpp_2m", None), ("euler", "uniform")])
def test_a_learned_schedule_beats_its_start_and_round_trips(tmp_path, solver, schedule):
    """Sigma (log coordinate) and rectified (linear) time; bit-equal after save and load, monotone, fixed ends."""
    field = FieldConfig(**MIXTURE).load()
    learned = learn_schedule(field, solver, 4, schedule, iterations=40, num_samples=32, teacher_steps=32)
    settings = learned.settings
    assert settings["method"] == "ld3" and settings["rmse_to_teacher"] < settings["rmse_to_teacher_init"]
    assert learned.nfe() == 4 and learned.time == ("rectified" if schedule == "uniform" else "sigma")
    start, end = (0.0, 1.0) if schedule == "uniform" else (SIGMA_MAX, SIGMA_MIN)
    timesteps = learned.timesteps
    assert timesteps[0].item() == pytest.approx(start, abs=1e-12) and timesteps[-1].item() == pytest.approx(end)
    assert (timesteps.diff().sign() == math.copysign(1, end - start)).all()
    save_schedule(learned, tmp_path / "ld3.json")
    loaded = load_schedule(tmp_path / "ld3.json", field)
    assert torch.equal(loaded.timesteps, timesteps) and loaded.settings == settings and loaded.solver == solver
    field.solve(torch.zeros(2, 8), solver, None, loaded)


def test_a_learned_schedule_can_start_from_a_gits_search():
    field = FieldConfig(**MIXTURE).load()
    found = search_schedule(field, "euler", 3, grid_points=24, num_samples=32)
    learned = learn_schedule(field, "euler", 3, initial=found, iterations=30, num_samples=32, teacher_steps=32)
    assert learned.settings["init"] == found.name and learned.name == f"ld3_euler_nfe3_{found.name}"
    assert learned.settings["rmse_to_teacher"] <= learned.settings["rmse_to_teacher_init"]


def test_genkit_schedule_learn_writes_a_schedule_for_a_diffusers_model(tmp_path):
    save_tiny_ddpm(tmp_path / "ddpm")
    arguments = ["schedule", "learn", "ddpm", "--solver", "dpmpp_2m", "--nfe", "3", "--steps", "3", "--samples", "4"]
    result = genkit(tmp_path, *arguments, "--teacher-steps", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    written = tmp_path / "ddpm" / "schedules" / "ld3_dpmpp_2m_nfe3_logsnr.json"
    assert str(written.relative_to(tmp_path)) in result.stdout and "RMSE to the teacher" in result.stdout
    field = FieldConfig(kind="diffusers", path=str(tmp_path / "ddpm")).load()
    saved = load_schedule(written, field)
    assert saved.solver == "dpmpp_2m" and len(saved.timesteps) == 4 and saved.settings["method"] == "ld3"
    result = genkit(tmp_path, "schedule", "learn", "ddpm", "--nfe", "4", "--init", str(written))
    assert result.returncode == 2 and "gives euler NFE 3, not 4" in result.stderr


def test_amed_plugin_timesteps_learn_through_a_fixed_predictor(noise):
    """The predictor reads (t_n, t_{n+1}) as tensors, AFS only the fixed t_0: the gradient reaches the times."""
    x, target = noise
    predictor = AMEDPredictor().double().requires_grad_(False)
    options = {"predictor": predictor, "base": "euler"}
    start = (amed_plugin(gaussian_velocity, x, karras(3), **options) - target).pow(2).mean().item()
    solver_opts = {"iterations": 30, "solver_opts": options}
    timesteps, _, history = learn_solver(amed_plugin, gaussian_velocity, x, target, karras(3), True, **solver_opts)
    assert history[0] == pytest.approx(start) and min(history) < start / 2
    assert timesteps[0] == SIGMA_MAX and timesteps[-1] == pytest.approx(SIGMA_MIN) and (timesteps.diff() < 0).all()
