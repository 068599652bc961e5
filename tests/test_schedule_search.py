"""Saved schedules and the GITS search (docs/samplers.md §8): the DP's optimum, the file, and its users.

The dynamic programme is checked against brute force over every monotone path of a small grid; the search against
the mixture's accurate solve; the file by a bit-equal round trip and its refusal for another field; its users by a
`genkit compare` cell, an AMED distillation on its timesteps and `genkit schedule search` on a diffusers folder.
"""

import itertools
import json

import pytest
import torch
import yaml
from launching import genkit
from tiny_models import save_tiny_ddpm

from genkit.errors import GenkitError
from genkit.fields import FieldConfig
from genkit.noise import initial_noise
from genkit.predictors import PREDICTOR_SCHEDULE
from genkit.schedules.file import SavedSchedule, load_schedule, read_schedule, save_schedule
from genkit.schedules.gits import search_schedule
from genkit.schedules.grid import fitted_grid
from samplers import CountingVelocity, euler, reference
from samplers.gits import local_errors, optimal_path
from samplers.teacher import teacher_trajectory

# The mixture of tests/test_compare.py: small enough for an accurate reference in a fraction of a second.
MIXTURE = {"kind": "mixture", "components": 4, "shape": [8], "seed": 1}


@pytest.mark.parametrize(("seed", "steps"), [(0, 1), (1, 3), (2, 3), (3, 5), (4, 7)])
def test_the_dp_path_is_the_cheapest_of_all_monotone_paths(seed, steps):
    """Brute force over every path 0 < i_1 < ... < 7 of `steps` steps on an 8-point grid: same cost, same path."""
    cost = torch.rand(8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    path, total = optimal_path(cost, steps)

    def summed(path: tuple[int, ...]) -> float:
        value = 0.0  # summed left to right, as the DP does: the minimum is then bit-equal
        for i, j in itertools.pairwise(path):
            value += cost[i, j].item()
        return value

    paths = [(0, *inner, 7) for inner in itertools.combinations(range(1, 7), steps - 1)]
    best = min(paths, key=summed)
    assert total == summed(best) and tuple(path) == best


def test_one_evaluation_solvers_cost_nothing_beyond_the_teacher_and_their_cost_is_the_euler_step():
    """The teacher's slope serves every step from its state; a two-stage solver evaluates once a pair (i, j)."""
    field = FieldConfig(**MIXTURE).load()
    velocity, path = field.form("karras")
    counting = CountingVelocity(velocity)
    teacher_times = path.timesteps("karras", 2 * 11 + 1)
    grid = teacher_times[::2]
    x = path.start(torch.randn(16, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    states, slopes = teacher_trajectory(counting, x, teacher_times, stride=2)
    assert counting.nfe == 2 * 22 and states.shape == (12, 16, 8)
    for solver in ("euler", "ipndm", "dpmpp_2m"):
        cost = local_errors(counting, solver, grid, states, slopes)
        assert counting.nfe == 44, solver
    step = euler(velocity, states[3], grid[[3, 9]])
    assert cost[3, 9].item() == pytest.approx((step - states[9]).pow(2).sum(1).mean().item(), rel=1e-9)
    backward = torch.ones(12, 12, dtype=torch.bool).tril()
    assert cost[backward].isinf().all() and cost[~backward].isfinite().all()
    local_errors(counting, "heun", grid, states, slopes)
    assert counting.nfe == 44 + 12 * 11 // 2


def test_a_saved_schedule_round_trips_bit_equal_and_is_refused_for_another_field(tmp_path):
    field = FieldConfig(**MIXTURE).load()
    found = search_schedule(field, "ipndm", 4, grid_points=24, num_samples=32)
    assert len(found.timesteps) == 5 and found.nfe() == 4 and found.time == "sigma"
    save_schedule(found, tmp_path / "gits.json")
    loaded = load_schedule(tmp_path / "gits.json", field)
    assert torch.equal(loaded.timesteps, found.timesteps) and loaded.timesteps.dtype == torch.float64
    assert (loaded.field_id, loaded.time, loaded.solver, loaded.name) == (field.field_id, "sigma", "ipndm", found.name)
    assert loaded.settings == found.settings and loaded.settings["method"] == "gits"
    assert torch.equal(load_schedule(tmp_path / "gits.json", field).timesteps, found.timesteps)
    other = FieldConfig(**{**MIXTURE, "seed": 2}).load()
    with pytest.raises(GenkitError) as refused:
        load_schedule(tmp_path / "gits.json", other)
    message = str(refused.value)
    assert "\n" not in message and field.field_id in message and other.field_id in message
    (tmp_path / "bad.json").write_text(json.dumps({"format": "genkit-schedule", "version": 1}))
    with pytest.raises(GenkitError, match="is not a saved schedule"):
        load_schedule(tmp_path / "bad.json", field)
    rectified = SavedSchedule(field.field_id, "rectified", torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    save_schedule(rectified, tmp_path / "rectified.json")
    with pytest.raises(GenkitError, match="dpmpp_2m works in sigma space"):
        field.solve(torch.zeros(2, 8), "dpmpp_2m", None, load_schedule(tmp_path / "rectified.json", field))


@pytest.mark.parametrize("nfe", [4, 5])
def test_a_searched_euler_schedule_beats_karras_on_a_mixture(nfe):
    """GITS for Euler on the 64-dim mixture of configs/amed/gmm64.yaml, scored on noise the search never saw."""
    field = FieldConfig(kind="mixture", components=8, shape=[64], seed=0).load()
    found = search_schedule(field, "euler", nfe, grid_points=32, num_samples=128)
    z = torch.randn(128, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = reference(field.edm, 80 * z, 80.0, 0.002, rtol=1e-8, atol=1e-8)
    searched = (field.solve(z, "euler", None, found) - target).pow(2).mean().sqrt()
    karras = (field.solve(z, "euler", nfe, "karras") - target).pow(2).mean().sqrt()
    # Measured: 0.101 against 0.171 at NFE 4, 0.081 against 0.134 at NFE 5 (1.69x and 1.65x).
    assert searched < karras / 1.3, (searched, karras)


def test_compare_and_amed_distillation_take_a_saved_schedule(tmp_path):
    """A compare cell on the file, at the NFE its timesteps give; an AMED predictor distilled on it, and its cell."""
    field = FieldConfig(**MIXTURE).load()
    found = search_schedule(field, "euler", 4, grid_points=24, num_samples=32)
    save_schedule(found, tmp_path / "gits.json")
    distil = {"task": "amed", "name": "amed", "num_samples": 64, "output_dir": str(tmp_path / "runs")}
    distil |= {"field": MIXTURE, "amed": {"schedule_file": str(tmp_path / "gits.json"), "teacher_steps": 1}}
    distil |= {"train": {"steps": 2, "batch_size": 32, "tracker": "none", "eval_every": 2}}
    (tmp_path / "amed.yaml").write_text(yaml.safe_dump(distil))
    result = genkit(tmp_path, "train", "amed.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    model = tmp_path / "runs" / "amed" / "model"
    assert torch.equal(load_schedule(model / PREDICTOR_SCHEDULE, field).timesteps, found.timesteps)
    assert yaml.safe_load((tmp_path / "runs" / "amed" / "config.yaml").read_text())["amed"]["num_steps"] == 5

    samplers = {"field": MIXTURE, "solvers": ["euler", "ipndm"], "nfe": [4], "metrics": ["rmse"]}
    samplers |= {"schedules": ["karras", "gits.json"], "predictors": [str(model)], "reference_tolerance": 1e-9}
    config = {"task": "compare", "name": "cmp", "num_samples": 24, "seed": 2, "tracker": "none"}
    (tmp_path / "compare.yaml").write_text(yaml.safe_dump({**config, "samplers": samplers, "output_dir": "runs"}))
    result = genkit(tmp_path, "compare", "compare.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads((tmp_path / "runs" / "cmp" / "comparison.json").read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["rows"]]
    # The file defines its cell: Euler (the solver it was made for) at NFE 4, named after the search.
    assert [(r["method"], r["schedule"], r["nfe"], r["nfe_counted"]) for r in rows] == [
        ("euler", "karras", 4, 4),
        ("ipndm", "karras", 4, 4),
        ("euler", found.name, 4, 4),
        ("amed", found.name, 7, 7),
    ]
    z = initial_noise(list(range(24)), (8,), 2).double()
    target = reference(field.edm, 80 * z, 80.0, 0.002, rtol=1e-9, atol=1e-9)
    out = field.solve(z, "euler", None, found)
    assert rows[2]["rmse"] == pytest.approx((out - target).pow(2).mean().sqrt().item(), rel=1e-6)

    other = {**samplers, "field": {**MIXTURE, "seed": 2}, "predictors": []}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({**config, "samplers": other, "output_dir": "runs"}))
    result = genkit(tmp_path, "compare", "other.yaml")
    assert result.returncode == 2 and "was made for field gmm(" in result.stderr and "Traceback" not in result.stderr


def test_genkit_schedule_search_writes_a_schedule_for_a_diffusers_model(tmp_path):
    save_tiny_ddpm(tmp_path / "ddpm")
    arguments = ["schedule", "search", "ddpm", "--solver", "dpmpp_2m", "--nfe", "3", "--grid-points", "16"]
    result = genkit(tmp_path, *arguments, "--samples", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    written = tmp_path / "ddpm" / "schedules" / "gits_dpmpp_2m_nfe3_logsnr.json"
    assert str(written.relative_to(tmp_path)) in result.stdout and "RMSE to the teacher" in result.stdout
    field = FieldConfig(kind="diffusers", path=str(tmp_path / "ddpm")).load()
    saved = load_schedule(written, field)
    # The search spans the model's own sigma range (the DDPM table's 157.4 down to 0.0100), not EDM's 80 to 0.002.
    assert saved.solver == "dpmpp_2m" and len(saved.timesteps) == 4
    ends = saved.timesteps[0].item(), saved.timesteps[-1].item()
    assert ends == pytest.approx((field.edm_path.t_start, field.edm_path.t_end), rel=1e-9)
    assert ends == pytest.approx((157.4, 0.0100), rel=1e-3)
    result = genkit(tmp_path, "schedule", "search", "ddpm", "--solver", "heun", "--nfe", "3")
    assert result.returncode == 2 and "cannot spend exactly nfe=3" in result.stderr


def test_a_grid_of_fitted_schedules_is_fitted_once_then_read_back(tmp_path, monkeypatch):
    field = FieldConfig(**MIXTURE).load()
    options = {"gits": {"grid_points": 16, "num_samples": 8}, "ld3": {"iterations": 2, "num_samples": 8}}
    paths = fitted_grid(field, tmp_path, options, ["euler"], [3, 4])
    assert [path.name for path in paths] == [f"{m}_euler_nfe{n}.json" for m in ("gits", "ld3") for n in (3, 4)]
    saved = [load_schedule(path, field) for path in paths]
    assert [len(schedule.timesteps) for schedule in saved] == [4, 5, 4, 5]
    assert [schedule.name for schedule in saved] == [path.stem for path in paths]
    # Seeded: a fresh fit of the same cell gives the same timesteps.
    again = search_schedule(field, "euler", 3, grid_points=16, num_samples=8)
    assert torch.equal(again.timesteps, saved[0].timesteps)

    def never(*args, **kwargs):
        raise AssertionError("a schedule already saved was fitted again")

    monkeypatch.setattr("genkit.schedules.grid.FITS", {"gits": never, "ld3": never})
    assert fitted_grid(field, tmp_path, options, ["euler"], [3, 4]) == paths


def test_compare_fits_its_grid_of_schedules_once_and_reports_the_fitting_time(tmp_path):
    options = {"grid_points": 16, "num_samples": 8}
    fit = {"method": "gits", "solvers": ["euler", "ipndm"], "nfe": [4], "options": options}
    samplers = {"field": MIXTURE, "solvers": ["euler"], "nfe": [4], "metrics": ["rmse"], "fit": [fit]}
    config = {"task": "compare", "name": "cmp", "num_samples": 8, "tracker": "none", "output_dir": "runs"}
    (tmp_path / "compare.yaml").write_text(yaml.safe_dump({**config, "samplers": samplers}))
    names = ("gits_euler_nfe4", "gits_ipndm_nfe4")
    folder = tmp_path / "runs" / "cmp"

    def compared() -> tuple[list[dict], list[float]]:
        result = genkit(tmp_path, "compare", "compare.yaml")
        assert result.returncode == 0, result.stderr[-3000:]
        table = json.loads((folder / "comparison.json").read_text())
        seconds = [read_schedule(folder / "schedules" / f"{name}.json").settings["seconds"] for name in names]
        return [dict(zip(table["columns"], row, strict=True)) for row in table["rows"]], seconds

    rows, seconds = compared()
    assert [(r["method"], r["schedule"], r["nfe_counted"]) for r in rows] == [
        ("euler", "karras", 4),
        ("euler", "gits_euler_nfe4", 4),
        ("ipndm", "gits_ipndm_nfe4", 4),
    ]
    assert [r["fit_seconds"] for r in rows] == [None, *seconds], "each cell reports what its fit took"
    again, seconds_again = compared()
    assert seconds_again == seconds, "fitted once: the second run read the saved schedules back"
    assert [r["fit_seconds"] for r in again] == [None, *seconds]
