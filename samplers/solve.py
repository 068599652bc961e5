"""Solving at an exact budget: pick the schedule length that makes a solver spend exactly `nfe` field evaluations."""

import inspect

from torch import Tensor

from samplers.errors import SamplerError
from samplers.registry import solver_spec
from samplers.schedules import SCHEDULES
from samplers.solvers import Callback
from samplers.velocity import Velocity, velocity_and_bottleneck


class CountingVelocity:
    """A field that counts its evaluations: one per call, whatever the batch size."""

    def __init__(self, field: Velocity):
        self.field = field
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return self.field(x, t)

    def velocity_and_bottleneck(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The wrapped field's velocity and bottleneck features, one evaluation."""
        self.nfe += 1
        return velocity_and_bottleneck(self.field, x, t)


def _check_options(what: str, function, options: dict, leading: int) -> None:
    """Options `function` accepts after its `leading` positional arguments, or a SamplerError naming them."""
    try:
        inspect.signature(function).bind(*[None] * leading, **options)
    except TypeError as error:
        raise SamplerError(f"bad options {options} for {what}: {error}") from None


def schedule_length(
    solver: str, nfe: int, schedule: str = "karras", schedule_opts: dict | None = None, solver_opts: dict | None = None
) -> int:
    """The (shortest) number of times of `schedule` on which `solver` spends exactly `nfe` evaluations."""
    spec, schedule_opts, solver_opts = solver_spec(solver), schedule_opts or {}, solver_opts or {}
    if schedule not in SCHEDULES:
        raise SamplerError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    make_schedule = SCHEDULES[schedule]
    _check_options(f"schedule {schedule!r}", make_schedule, schedule_opts, leading=1)
    if nfe < 1:
        raise SamplerError(f"nfe must be at least 1, got {nfe}")
    costs = {n: spec.nfe(make_schedule(n, **schedule_opts), **solver_opts) for n in range(2, nfe + 3)}
    lengths = [n for n, cost in costs.items() if cost == nfe]
    if not lengths:
        reachable = sorted(cost for cost in costs.values() if abs(cost - nfe) <= 2)
        raise SamplerError(
            f"{solver} spends {spec.evaluations_per_step} evaluations a step and cannot spend exactly "
            f"nfe={nfe} on the {schedule!r} schedule; nearby budgets it can spend: {reachable}"
        )
    return lengths[0]


def solve(
    field: Velocity,
    x: Tensor,
    solver: str = "euler",
    nfe: int | None = 10,
    schedule: str | Tensor = "karras",
    schedule_opts: dict | None = None,
    solver_opts: dict | None = None,
    callback: Callback = None,
) -> Tensor:
    """Integrate from x at the schedule's first time with `solver`, spending exactly `nfe` evaluations.

    `schedule` is a schedule's name, whose length is then picked to cost exactly `nfe`, or the timesteps themselves,
    on which `nfe` (when given) must be what the solver spends.
    """
    spec, solver_opts = solver_spec(solver), solver_opts or {}
    _check_options(f"solver {solver!r}", spec.function, {"callback": None, **solver_opts}, leading=3)
    if isinstance(schedule, str):
        if nfe is None:
            raise SamplerError(f"solving on the {schedule!r} schedule needs nfe, the number of evaluations")
        length = schedule_length(solver, nfe, schedule, schedule_opts, solver_opts)
        timesteps = SCHEDULES[schedule](length, **(schedule_opts or {}))
    else:
        timesteps, spent = schedule, spec.nfe(schedule, **solver_opts)
        if nfe not in (None, spent):
            raise SamplerError(f"{solver} spends {spent} evaluations on these {len(schedule)} timesteps, not nfe={nfe}")
        nfe = spent
    counting = CountingVelocity(field)
    x = spec.function(counting, x, timesteps, callback=callback, **solver_opts)
    if counting.nfe != nfe:
        raise RuntimeError(f"{solver} spent {counting.nfe} evaluations, expected {nfe}: SolverSpec.nfe is out of date")
    return x
