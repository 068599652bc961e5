"""Schedules as data: timesteps saved with the field they were made for, and the GITS search that makes them.

A saved schedule holds the N + 1 float64 timesteps a solver runs on, in the time of the field form it is solved in
(`time`: sigma for the EDM form, rectified for rectified time), from the start of integration to its end; the base
solver it was made for (none: any solver); the id of the field (its weights' digest, genkit.fields), a name, and
the settings it was made with. `load_schedule` refuses it for another field, as `load_predictor` refuses a
predictor. `genkit schedule search` writes one, a `genkit compare` schedule entry and AMED's `amed.schedule_file`
read one (docs/samplers.md §8).

The file is one JSON document (Python writes each float64 as its shortest round-trip repr, so timesteps come back
bit-equal), written atomically:

    {"format": "genkit-schedule", "version": 1, "field_id": "...", "time": "sigma", "solver": "euler",
     "name": "gits_euler_nfe5_karras", "timesteps": [80.0, ..., 0.002], "settings": {"method": "gits", ...}}
"""

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

import samplers
from genkit.checkpoint import write_json
from genkit.errors import GenkitError
from genkit.fields import Field
from genkit.paths import EDMPath, ProbabilityPath, RectifiedPath
from genkit.velocity import VelocityModel
from samplers.search import local_errors, optimal_path, teacher_trajectory

FORMAT, VERSION = "genkit-schedule", 1
PREDICTOR_SCHEDULE = "schedule.json"  # in the model folder of a predictor distilled on a saved schedule
TIMES = {"sigma": EDMPath, "rectified": RectifiedPath}
# The teacher of the search: Heun (second order, any field) on the grid refined by `teacher_steps` points an interval.
TEACHER = "heun"


@dataclass
class SavedSchedule:
    """Timesteps in a field's `time` (sigma or rectified), the solver they were made for (None: any), the field's id."""

    field_id: str
    time: str
    timesteps: Tensor
    solver: str | None = None
    name: str = "schedule"
    settings: dict = dataclasses.field(default_factory=dict)

    def nfe(self, solver: str | None = None, **options) -> int:
        """Field evaluations of `solver` (default: the one it was made for) on these timesteps."""
        return samplers.solver_spec(solver or self.solver or "euler").nfe(self.timesteps, **options)


def save_schedule(schedule: SavedSchedule, path: Path) -> None:
    """Write `schedule` to `path` as JSON, atomically (all of it or the previous file)."""
    document = {"format": FORMAT, "version": VERSION, "field_id": schedule.field_id, "time": schedule.time}
    document |= {"solver": schedule.solver, "name": schedule.name, "timesteps": schedule.timesteps.double().tolist()}
    write_json(Path(path), document | {"settings": schedule.settings})


def read_schedule(path: Path) -> SavedSchedule:
    """The schedule saved at `path`, for whichever field it was made (load_schedule checks that it fits one)."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise GenkitError(f"cannot read a saved schedule from {path} ({error}); pass a file genkit wrote") from None
    keys = ("field_id", "time", "timesteps", "solver", "name", "settings")
    if (
        not isinstance(document, dict)
        or (document.get("format"), document.get("version")) != (FORMAT, VERSION)
        or not all(key in document for key in keys)
    ):
        raise GenkitError(f"{path} is not a saved schedule ({FORMAT} version {VERSION}); pass a file genkit wrote")
    field_id, time_name, timesteps, solver, name, settings = (document[key] for key in keys)
    try:
        timesteps = torch.tensor(timesteps, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        timesteps = torch.empty(0, dtype=torch.float64)
    one_way = (
        timesteps.ndim == 1 and len(timesteps) >= 2 and bool(abs(timesteps.diff().sign().sum()) == len(timesteps) - 1)
    )
    if time_name not in TIMES or not one_way:
        raise GenkitError(
            f"{path} holds no valid schedule: time {time_name!r} (sigma or rectified) and timesteps that run one way "
            f"from start to end, got {timesteps.tolist()}"
        )
    if solver is not None:
        samplers.solver_spec(solver)
    return SavedSchedule(field_id, time_name, timesteps, solver, name, settings)


def load_schedule(path: Path, field: Field) -> SavedSchedule:
    """The schedule saved at `path`, refused (one line naming both ids) unless it was made for this field."""
    schedule = read_schedule(path)
    if schedule.field_id != field.field_id:
        raise GenkitError(
            f"the schedule in {path} was made for field {schedule.field_id}, not for this field {field.field_id}; "
            "search one for it (genkit schedule search)"
        )
    timesteps_form(field, schedule.timesteps, schedule.solver or "euler")
    return schedule


def time_of(path: ProbabilityPath) -> str:
    """The name of a path's time convention in a saved schedule."""
    return next(name for name, kind in TIMES.items() if isinstance(path, kind))


def timesteps_form(field: Field, timesteps: Tensor, solver: str) -> tuple[VelocityModel, ProbabilityPath]:
    """The field form whose path starts at timesteps[0] and ends at timesteps[-1] (the one they are times of)."""
    ends = timesteps[0].item(), timesteps[-1].item()
    for _, path in field.forms:
        if all(
            math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
            for a, b in zip(ends, (path.t_start, path.t_end), strict=True)
        ):
            return field.form(path.schedules[0], solver)
    spans = ", ".join(f"{time_of(path)} time from {path.t_start:g} to {path.t_end:g}" for _, path in field.forms)
    raise GenkitError(f"timesteps from {ends[0]:g} to {ends[1]:g} fit no form of this field ({spans})")


def solve_on_timesteps(
    field: Field, z: Tensor, solver: str, timesteps: Tensor, solver_opts: dict | None = None, callback=None
) -> Tensor:
    """Data samples from noise z: `solver` on exactly these timesteps in the form they are times of (as Field.solve)."""
    velocity, path = timesteps_form(field, timesteps, solver)
    spec, solver_opts = samplers.solver_spec(solver), solver_opts or {}
    counting = samplers.CountingField(velocity)
    x = spec.function(counting, path.start(z.to(field.dtype)), timesteps, callback=callback, **solver_opts)
    if counting.nfe != spec.nfe(timesteps, **solver_opts):
        raise RuntimeError(f"{solver} spent {counting.nfe} evaluations: SolverSpec.nfe is out of date")
    return path.to_data(x)


def steps_for(solver: str, nfe: int, timesteps: Tensor) -> int:
    """How many steps make `solver` spend exactly `nfe` evaluations on times spanning `timesteps`."""
    spec = samplers.solver_spec(solver)
    start, end = timesteps[0].item(), timesteps[-1].item()
    steps = [n - 1 for n in range(2, nfe + 3) if spec.nfe(torch.linspace(start, end, n, dtype=torch.float64)) == nfe]
    if not steps:
        raise GenkitError(
            f"{solver} spends {spec.evaluations_per_step} evaluations a step and cannot spend exactly nfe={nfe}"
        )
    return steps[0]


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
    """GITS (Chen et al. 2024, arXiv 2405.11326; samplers/search.py): the `nfe`-evaluation schedule of `solver`.

    The grid is `grid_points` times of `schedule` (default: the solver's usual schedule on this field); a Heun
    teacher refined by `teacher_steps` points an interval solves `num_samples` noise draws (generator `seed`) across
    it, and the path of the right number of steps with the least summed squared local error is kept.
    """
    if solver not in samplers.BASELINES:
        raise GenkitError(f"GITS searches a baseline solver's schedule ({', '.join(samplers.BASELINES)}), not {solver}")
    started = time.perf_counter()
    schedule = schedule or field.default_schedule(solver)
    velocity, path = field.form(schedule, solver)
    teacher_times = path.timesteps(schedule, (teacher_steps + 1) * (grid_points - 1) + 1)
    grid = teacher_times[:: teacher_steps + 1]
    steps = steps_for(solver, nfe, grid)
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
    settings |= {"seconds": time.perf_counter() - started}
    name = f"gits_{solver}_nfe{nfe}_{schedule}"
    return SavedSchedule(field.field_id, time_of(path), timesteps, solver, name, settings)
