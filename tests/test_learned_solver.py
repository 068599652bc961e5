"""Learned solvers (docs/samplers.md §8.5): corrections that change nothing, exact fits where the flow map is affine,
DPM-Solver++(2M)'s first-order last step against diffusers, the file, the command and two ranks.

On data N(mu, s^2 I) every flow map is affine in the noise: in rectified time (x_t = (1 - t) z + t x_1) the velocity
is v(x, t) = mu + (t s^2 - (1 - t)) / ((1 - t)^2 + t^2 s^2) (x - t mu) and the solution x_1 = mu + s z; in sigma
time the denoiser is D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu) and x(sigma) = mu + sqrt((s^2 + sigma^2) /
(s^2 + sigma_T^2)) (x_T - mu). A learned solver of one or two steps can express each map exactly, so its fit must
reach it to the optimiser's round-off.
"""

import dataclasses
import json
import math

import pytest
import torch
from launching import genkit, genkit_on_two_ranks
from tiny_models import save_tiny_ddpm

from genkit.errors import GenkitError
from genkit.fields import FieldConfig
from genkit.gaussian_mixture import GaussianMixture
from genkit.noise import initial_noise
from genkit.schedules.file import load_schedule, read_schedule, save_schedule
from genkit.schedules.ld3 import learn_schedule
from samplers import Corrections, dpmpp_2m, euler, ipndm, karras, time_uniform, uniform
from samplers.ld3 import learn_solver

MU, S, SIGMA_MAX, SIGMA_MIN = 0.7, 0.4, 80.0, 0.002
MIXTURE = {"kind": "mixture", "components": 4, "shape": [8], "seed": 1}


def rectified_gaussian(x, t):
    t = t[:, None]
    return MU + (t * S**2 - (1 - t)) / ((1 - t) ** 2 + t**2 * S**2) * (x - t * MU)


def sigma_gaussian(x, sigma):
    sigma = sigma[:, None]
    return (x - (MU + S**2 / (S**2 + sigma**2) * (x - MU))) / sigma


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture.random(8, (16,), 0, True)


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_zero_corrections_are_the_base_solver_bit_for_bit(mixture, steps):
    z = torch.randn(16, 16, generator=torch.Generator().manual_seed(steps), dtype=torch.float64)
    zeros = Corrections.zeros(steps)
    for times in (karras(steps + 1), time_uniform(steps + 1)):
        x = times[0] * z
        for order in (1, 2, 3, 4):
            base = ipndm(mixture.edm, x, times, max_order=order)
            assert torch.equal(ipndm(mixture.edm, x, times, max_order=order, corrections=zeros), base)
        assert torch.equal(euler(mixture.edm, x, times, corrections=zeros), euler(mixture.edm, x, times))
        for final in (False, True):
            base = dpmpp_2m(mixture.edm, x, times, lower_order_final=final)
            assert torch.equal(dpmpp_2m(mixture.edm, x, times, lower_order_final=final, corrections=zeros), base)
    for solver in (euler, ipndm):
        assert torch.equal(
            solver(mixture.rectified, z, uniform(steps + 1), corrections=zeros),
            solver(mixture.rectified, z, uniform(steps + 1)),
        )


def test_corrections_add_their_rows_on_the_history():
    """Step i adds velocity[i, j] h_i d_j + state[i, j] x_j for j <= i: checked on a constant field by hand."""
    field = lambda x, t: torch.ones_like(x)  # noqa: E731
    rows = [[0.5, 0.0], [0.25, -1.0]], [[0.1, 0.0], [0.2, 0.3]]
    table = Corrections(*(torch.tensor(r, dtype=torch.float64) for r in rows))
    x0 = torch.full((1, 1), 2.0, dtype=torch.float64)
    times = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    x1 = x0 + 0.5 + 0.5 * 0.5 + 0.1 * x0
    x2 = x1 + 0.5 + 0.25 * 0.5 - 1.0 * 0.5 + 0.2 * x0 + 0.3 * x1
    torch.testing.assert_close(euler(field, x0, times, corrections=table), x2, rtol=1e-15, atol=0)


@pytest.mark.parametrize(
    ("solver", "time", "steps"),
    [
        (euler, "rectified", 1),
        (euler, "rectified", 2),
        (ipndm, "rectified", 2),
        (euler, "sigma", 1),
        (dpmpp_2m, "sigma", 2),
    ],
)
def test_a_learned_solver_reaches_the_affine_flow_map(solver, time, steps):
    z = torch.randn(256, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    if time == "rectified":
        field, times, x, exact = rectified_gaussian, uniform(steps + 1), z, MU + S * z
    else:
        ratio = math.sqrt((S**2 + SIGMA_MIN**2) / (S**2 + SIGMA_MAX**2))
        field, times, x = sigma_gaussian, karras(steps + 1), SIGMA_MAX * z
        exact = MU + ratio * (x - MU)
    base = (solver(field, x, times) - exact).pow(2).mean().sqrt().item()
    learned, table, history = learn_solver(solver, field, x, exact, times, time == "sigma", 1000, corrections=True)
    fitted = (solver(field, x, learned, corrections=table) - exact).pow(2).mean().sqrt().item()
    # Adam's last steps are ~1e-5 of the first (cosine decay): the fit lands within round-off of the exact map.
    assert base > 0.1 and fitted < 1e-6 * base
    assert history[-1] < 1e-12 and learned[0] == times[0] and learned[-1].item() == pytest.approx(times[-1].item())


def test_dpmpp_2m_with_a_first_order_last_step_is_diffusers_dpm_solver_plus_plus(mixture):
    """diffusers' DPMSolverMultistepScheduler (order 2, lower_order_final, a last sigma of sigma_min) on genkit's
    sigmas, fed the mixture's exact denoiser, lands where genkit does."""
    from diffusers import DPMSolverMultistepScheduler

    times = time_uniform(6)
    scheduler = DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++", solver_order=2, prediction_type="sample", final_sigmas_type="sigma_min"
    )
    scheduler.set_timesteps(5)
    scheduler.sigmas = times.clone()  # every step reads its sigmas from here
    z = torch.randn(32, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = times[0] * z
    sample = x / (1 + times[0] ** 2).sqrt()  # variance-preserving: x_vp = x / sqrt(1 + sigma^2)
    for i, step in enumerate(scheduler.timesteps):
        sigma = times[i]
        denoised = mixture.denoiser(sample * (1 + sigma**2).sqrt(), sigma.expand(len(z)))
        sample = scheduler.step(denoised, step, sample).prev_sample
    ours = dpmpp_2m(mixture.edm, x, times, lower_order_final=True)
    # diffusers casts the sample to float32 in every step: equal to float32 round-off on states of size ~1.
    torch.testing.assert_close(ours, sample * (1 + times[-1] ** 2).sqrt(), rtol=1e-5, atol=1e-5)
    assert (ours - dpmpp_2m(mixture.edm, x, times)).abs().max() > 1e-2  # the option changes the last step


def test_a_learned_solver_round_trips_runs_as_its_solver_and_is_refused_for_another_field(tmp_path):
    field = FieldConfig(**MIXTURE).load()
    learned = learn_schedule(field, "ipndm", 3, iterations=30, num_samples=32, teacher_steps=16, corrections=True)
    settings = learned.settings
    assert learned.name == "learned_ipndm_nfe3_karras" and settings["method"] == "learned"
    assert settings["rmse_to_teacher"] < settings["rmse_to_teacher_init"]
    assert learned.corrections.velocity.abs().max() > 0
    save_schedule(learned, tmp_path / "learned.json")
    assert json.loads((tmp_path / "learned.json").read_text())["version"] == 2
    loaded = load_schedule(tmp_path / "learned.json", field)
    assert torch.equal(loaded.timesteps, learned.timesteps) and loaded.solver == "ipndm"
    for table in ("velocity", "state"):
        assert torch.equal(getattr(loaded.corrections, table).tril(), getattr(learned.corrections, table).tril())
    z = torch.randn(4, 8, dtype=torch.float64)
    corrected = field.solve(z, "ipndm", 3, loaded)
    torch.testing.assert_close(corrected, field.solve(z, "ipndm", None, loaded))
    assert (corrected - field.solve(z, "ipndm", 3, dataclasses.replace(loaded, corrections=None))).abs().max() > 0
    with pytest.raises(GenkitError, match="learned solver for ipndm: solve it with ipndm, not euler"):
        field.solve(z, "euler", 3, loaded)
    other = FieldConfig(**MIXTURE | {"seed": 2}).load()
    with pytest.raises(GenkitError, match="was made for field gmm"):
        load_schedule(tmp_path / "learned.json", other)
    document = json.loads((tmp_path / "learned.json").read_text())
    document["corrections"]["state"] = document["corrections"]["state"][:2]
    (tmp_path / "bad.json").write_text(json.dumps(document))
    with pytest.raises(GenkitError, match="holds no valid learned solver"):
        read_schedule(tmp_path / "bad.json")
    document = json.loads((tmp_path / "learned.json").read_text())
    document["corrections"]["velocity"][1] = ["a", None]
    (tmp_path / "words.json").write_text(json.dumps(document))
    with pytest.raises(GenkitError, match="holds no valid learned solver: .* other than numbers"):
        read_schedule(tmp_path / "words.json")


@pytest.mark.slow  # two launched processes: ~16 s of the default run's budget
def test_two_ranks_learn_the_solver_one_does(tmp_path):
    save_tiny_ddpm(tmp_path / "ddpm")
    arguments = ["schedule", "learn", "ddpm", "--solver", "ipndm", "--nfe", "3", "--corrections", "--steps", "6"]
    arguments += ["--samples", "12", "--batch-size", "8", "--teacher-steps", "4"]
    one = genkit(tmp_path, *arguments, "--out", "one.json")
    assert one.returncode == 0, one.stderr[-3000:]
    assert "learned solver" not in one.stderr and "RMSE to the teacher" in one.stdout
    two = genkit_on_two_ranks(tmp_path, *arguments, "--out", "two.json")
    assert two.returncode == 0, two.stderr[-3000:]
    first, second = (read_schedule(tmp_path / name) for name in ("one.json", "two.json"))
    assert (first.settings["processes"], second.settings["processes"]) == (1, 2)  # each rank solved half the draws
    assert first.corrections.velocity.abs().max() > 0
    # Two ranks sum float32 U-Net outputs of other batch sizes: equal to float32 round-off carried through 6 steps.
    torch.testing.assert_close(second.timesteps, first.timesteps, rtol=1e-5, atol=1e-6)
    for table in ("velocity", "state"):
        torch.testing.assert_close(
            getattr(second.corrections, table), getattr(first.corrections, table), rtol=1e-4, atol=1e-6
        )
    assert second.settings["loss"] == pytest.approx(first.settings["loss"], rel=1e-4)


def test_compare_fits_a_learned_solver_and_runs_solver_options(tmp_path):
    fit = {"iterations": 20, "num_samples": 32, "teacher_steps": 16}
    config = {
        "task": "compare",
        "name": "learned",
        "num_samples": 16,
        "output_dir": str(tmp_path / "runs"),
        "samplers": {
            "field": MIXTURE,
            "solvers": ["ipndm", "dpmpp_2m lower_order_final=true"],
            "nfe": [3],
            "schedules": ["time_uniform", "ds_respaced"],  # a sigma-space solver skips the rectified one
            "fit": [{"method": "learned", "solvers": ["ipndm"], "nfe": [3], "options": fit}],
            "reference_tolerance": 1e-9,
        },
    }
    (tmp_path / "compare.yaml").write_text(json.dumps(config))
    result = genkit(tmp_path, "compare", "compare.yaml", "tracker=none")
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads((tmp_path / "runs" / "learned" / "comparison.json").read_text())
    cells = [dict(zip(table["columns"], row, strict=True)) for row in table["rows"]]
    rows = {(cell["method"], cell["schedule"]): cell for cell in cells}
    learned, base = rows[("ipndm", "learned_ipndm_nfe3")], rows[("ipndm", "time_uniform")]
    assert learned["nfe"] == learned["nfe_counted"] == learned["evaluations"] == 3 and learned["fit_seconds"] > 0
    assert rows[("dpmpp_2m lower_order_final=true", "time_uniform")]["rmse"] > 0
    field, z = FieldConfig(**MIXTURE).load(), initial_noise(list(range(16)), (8,), 0).double()
    final = field.solve(z, "dpmpp_2m", 3, "time_uniform", {"lower_order_final": True})
    reference, _ = field.reference(z, "time_uniform", 1e-9)
    entry = rows[("dpmpp_2m lower_order_final=true", "time_uniform")]["rmse"]
    assert entry == pytest.approx((final - reference).pow(2).mean().sqrt().item(), rel=1e-6)
    assert base["rmse"] > 0 and learned["rmse"] > 0 and rows[("ipndm", "ds_respaced")]["rmse"] > 0
    assert ("dpmpp_2m lower_order_final=true", "ds_respaced") not in rows
    config["samplers"]["solvers"] = ["dpmpp_2m lower_order_fnal=true"]
    (tmp_path / "typo.yaml").write_text(json.dumps(config))
    typo = genkit(tmp_path, "compare", "typo.yaml", "tracker=none")
    assert typo.returncode == 2 and "lower_order_fnal" in typo.stderr and len(typo.stderr.strip().splitlines()) == 1
