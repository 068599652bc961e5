"""GITS on a Field (samplers/gits.py; docs/samplers.md §8.2): a solver's schedule at an exact NFE, saved as a file.

The grid is `grid_points` times of a schedule; the teacher (samplers.teacher) refined by `teacher_steps` points an
interval solves noise draws across it, and the path of the right number of steps with the least summed squared
local error is kept. `genkit schedule search` writes the result (genkit.schedules.file).
"""

import time

import torch

import samplers
from genkit.errors import GenkitError
from genkit.fields import Field
from genkit.paths import nested_timesteps
from genkit.schedules.file import SavedSchedule, time_of
from samplers.gits import local_errors, optimal_path
from samplers.teacher import TEACHER, teacher_trajectory


@torch.no_grad()
def search_schedule(
    field: Field,
    solver: str,
    nfe: int,
    schedule: str | None = None,
    grid_points: int = 128,
    teacher_steps: int = 1,
    num_samples: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> SavedSchedule:
    """GITS (Chen et al. 2024, arXiv 2405.11326; samplers/gits.py): the `nfe`-evaluation schedule of `solver`.

    The grid is `grid_points` times of `schedule` (default: the solver's usual schedule on this field); a Heun
    teacher refined by `teacher_steps` points an interval solves `num_samples` noise draws (generator `seed`) across
    it, and the path of the right number of steps with the least summed squared local error is kept.
    """
    if solver not in samplers.BASELINES:
        raise GenkitError(f"GITS searches a baseline solver's schedule ({', '.join(samplers.BASELINES)}), not {solver}")
    started = time.perf_counter()
    schedule = schedule or field.default_schedule(solver)
    velocity, path = field.form(schedule, solver)
    teacher_times = nested_timesteps(path, schedule, teacher_steps, grid_points)
    grid = teacher_times[:: teacher_steps + 1]
    steps = field.steps(solver, nfe, schedule)
    if steps > grid_points - 1:
        raise GenkitError(f"nfe={nfe} needs {steps} steps, more than a grid of {grid_points} points holds; add points")
    z = torch.randn((num_samples, *field.shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = path.start(z).to(device, field.dtype)
    states, slopes = teacher_trajectory(velocity, x, teacher_times, teacher_steps + 1, TEACHER)
    cost = local_errors(velocity, solver, grid, states, slopes)
    indices, total = optimal_path(cost, steps)
    timesteps = grid[indices]
    # The final RMSE to the teacher on the search noise, searched against the same-length `schedule`: a quick check.
    rmse = lambda y: (y - states[-1]).double().pow(2).mean().sqrt().item()  # noqa: E731
    function = samplers.solver_spec(solver).function
    searched, usual = (rmse(function(velocity, x, t)) for t in (timesteps, path.timesteps(schedule, steps + 1)))
    settings = {"method": "gits", "schedule": schedule, "grid_points": grid_points, "grid_indices": indices}
    settings |= {"teacher": TEACHER, "teacher_steps": teacher_steps, "num_samples": num_samples, "seed": seed}
    settings |= {"cost": total, "rmse_to_teacher": searched, f"rmse_to_teacher_{schedule}": usual}
    settings |= {"seconds": time.perf_counter() - started} | field.made_for()
    name = f"gits_{solver}_nfe{nfe}_{schedule}"
    return SavedSchedule(field.field_id, time_of(path), timesteps, solver, name, settings)
