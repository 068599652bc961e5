"""The one table of solvers: each name's function and the facts callers need about it.

Adding a solver is one entry here (and its function): `solve`, the CLI, `genkit compare` and AMED distillation
read every fact from this table.
"""

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from samplers.amed import amed, amed_plugin
from samplers.errors import SamplerError
from samplers.solvers import dpm_solver_2, dpmpp_2m, euler, heun, ipndm


@dataclass(frozen=True)
class SolverSpec:
    """A solver: its function, field evaluations a step, the field form it needs, and its usual schedule.

    sigma_space: it works in sigma (log sigma), so it needs an EDM-form field; the others take any field.
    predictor: it needs a distilled AMED predictor (`predictor=` option).
    multistep: it carries slopes from step to step (a distilled student keeps its own state between intervals).
    default_schedule: the sigma schedule it is usually run on (diff-solvers' baselines, the AMED paper's settings).
    """

    name: str
    function: Callable[..., Tensor]
    evaluations_per_step: int
    sigma_space: bool
    predictor: bool
    multistep: bool
    default_schedule: str

    def nfe(self, timesteps: Tensor, **options) -> int:
        """Exact field evaluations on `timesteps` with these options."""
        steps = len(timesteps) - 1
        if self.predictor:
            # The analytical first step (on by default) replaces the evaluation at t_0: NFE = 2(N - 1) - [afs].
            return self.evaluations_per_step * steps - int(options.get("afs", True))
        # Two-stage solvers take a plain Euler step when the last time is 0 (the EDM field is undefined there).
        return self.evaluations_per_step * steps - (self.evaluations_per_step == 2 and bool(timesteps[-1] == 0))


SOLVERS = {
    spec.name: spec
    for spec in (
        # name, function, evaluations a step, sigma space, predictor, multistep, default schedule
        SolverSpec("euler", euler, 1, False, False, False, "karras"),
        SolverSpec("heun", heun, 2, False, False, False, "karras"),
        SolverSpec("dpm_solver_2", dpm_solver_2, 2, True, False, False, "karras"),
        SolverSpec("dpmpp_2m", dpmpp_2m, 1, True, False, True, "logsnr"),
        SolverSpec("ipndm", ipndm, 1, False, False, True, "karras"),
        SolverSpec("amed", amed, 2, True, True, False, "time_uniform"),
        SolverSpec("amed_plugin", amed_plugin, 2, True, True, False, "karras"),
    )
}
# The solvers that need nothing but a field.
BASELINES = tuple(name for name, spec in SOLVERS.items() if not spec.predictor)
# The bases of a learned solver: the single-evaluation ones, which take a correction table (samplers.corrections).
CORRECTED = ("euler", "ipndm", "dpmpp_2m")


def solver_spec(name: str) -> SolverSpec:
    """The registry entry of `name`, or a SamplerError listing the solvers."""
    if name not in SOLVERS:
        raise SamplerError(f"unknown solver {name!r}; choose one of: {', '.join(SOLVERS)}")
    return SOLVERS[name]
