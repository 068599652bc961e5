"""Sampling by NFE budget: pick the schedule length that makes a solver spend exactly `nfe` field evaluations."""

import inspect
from collections.abc import Callable

from torch import Tensor

from samplers.amed import amed, amed_plugin, velocity_and_bottleneck
from samplers.errors import SamplerError
from samplers.schedules import SCHEDULES
from samplers.solvers import Callback, Field, dpm_solver_2, dpmpp_2m, euler, heun, ipndm

SOLVERS: dict[str, Callable[..., Tensor]] = {
    "euler": euler,
    "heun": heun,
    "dpm_solver_2": dpm_solver_2,
    "dpmpp_2m": dpmpp_2m,
    "ipndm": ipndm,
    "amed": amed,
    "amed_plugin": amed_plugin,
}
# The solvers that need nothing but a field; the AMED ones also need a trained predictor.
BASELINES = ("euler", "heun", "dpm_solver_2", "dpmpp_2m", "ipndm")
EVALUATIONS_PER_STEP = {
    "euler": 1,
    "heun": 2,
    "dpm_solver_2": 2,
    "dpmpp_2m": 1,
    "ipndm": 1,
    "amed": 2,
    "amed_plugin": 2,
}


class CountingField:
    """A field that counts its evaluations: one per call, whatever the batch size."""

    def __init__(self, field: Field):
        self.field = field
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return self.field(x, t)

    def velocity_and_bottleneck(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The wrapped field's velocity and bottleneck features, one evaluation."""
        self.nfe += 1
        return velocity_and_bottleneck(self.field, x, t)


def solver_nfe(solver: str, timesteps: Tensor, **solver_opts) -> int:
    """Exact number of field evaluations `solver` spends on `timesteps` with these options."""
    per_step = EVALUATIONS_PER_STEP[solver]
    if solver in ("amed", "amed_plugin"):
        # The analytical first step (on by default) replaces the evaluation at t_0: NFE = 2(N - 1) - [afs].
        return per_step * (len(timesteps) - 1) - int(solver_opts.get("afs", True))
    # Two-stage solvers take a plain Euler step when the last time is 0 (the EDM field is undefined there).
    return per_step * (len(timesteps) - 1) - (per_step == 2 and bool(timesteps[-1] == 0))


def _check_choice(kind: str, name: str, choices: dict, opts: dict, leading: int, **extra) -> None:
    """A known name, and options its function accepts after its `leading` positional arguments."""
    if name not in choices:
        raise SamplerError(f"unknown {kind} {name!r}; choose one of: {', '.join(choices)}")
    try:
        inspect.signature(choices[name]).bind(*[None] * leading, **extra, **opts)
    except TypeError as error:
        raise SamplerError(f"bad options {opts} for {kind} {name!r}: {error}") from None


def sample(
    field: Field,
    x: Tensor,
    solver: str = "euler",
    nfe: int = 10,
    schedule: str = "karras",
    schedule_opts: dict | None = None,
    solver_opts: dict | None = None,
    callback: Callback = None,
) -> Tensor:
    """Integrate from x at the schedule's first time with `solver`, spending exactly `nfe` evaluations."""
    schedule_opts, solver_opts = schedule_opts or {}, solver_opts or {}
    _check_choice("solver", solver, SOLVERS, solver_opts, leading=3, callback=None)
    _check_choice("schedule", schedule, SCHEDULES, schedule_opts, leading=1)
    make_schedule = SCHEDULES[schedule]
    if nfe < 1:
        raise SamplerError(f"nfe must be at least 1, got {nfe}")

    costs = {n: solver_nfe(solver, make_schedule(n, **schedule_opts), **solver_opts) for n in range(2, nfe + 3)}
    lengths = [n for n, cost in costs.items() if cost == nfe]
    if not lengths:
        reachable = sorted(cost for cost in costs.values() if abs(cost - nfe) <= 2)
        raise SamplerError(
            f"{solver} spends {EVALUATIONS_PER_STEP[solver]} evaluations a step and cannot spend exactly "
            f"nfe={nfe} on the {schedule!r} schedule; nearby budgets it can spend: {reachable}"
        )
    counting = CountingField(field)
    x = SOLVERS[solver](counting, x, make_schedule(lengths[0], **schedule_opts), callback=callback, **solver_opts)
    if counting.nfe != nfe:
        raise RuntimeError(f"{solver} spent {counting.nfe} evaluations, expected {nfe}: solver_nfe is out of date")
    return x
