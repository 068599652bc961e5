"""LD3 and learned solvers on a Field (samplers/ld3.py; docs/samplers.md §8.3, §8.5), fitted to a teacher, saved.

The teacher (samplers.teacher: Heun) with many steps solves a few hundred noise draws; the base solver's N + 1
timesteps, initialised from its usual schedule on the field (or from a saved one, e.g. a GITS search), are fitted by
Adam through its whole trajectory to land on the teacher's terminal states, and with `corrections` a correction table
for the solver with them (a learned solver). `genkit schedule learn [--corrections]` writes the result.

Under `accelerate launch` the draws are split over the processes (draw i to process i mod P), each solves its own and
the gradients are summed, so P processes fit what one does; a conditional field's draws are bound to their classes
in one batch, so there every process fits on all of them.
"""

import time

import torch
from accelerate.utils import reduce

import samplers
from genkit.errors import GenkitError
from genkit.fields import Field
from genkit.paths import EDMPath
from genkit.processes import process_state
from genkit.progress import progress
from genkit.schedules.file import SavedSchedule, time_of
from samplers.ld3 import learn_solver
from samplers.teacher import TEACHER


def learn_schedule(
    field: Field,
    solver: str,
    nfe: int,
    schedule: str | None = None,
    initial: SavedSchedule | None = None,
    iterations: int = 300,
    num_samples: int = 256,
    teacher_steps: int = 64,
    lr: float = 0.05,
    batch_size: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    corrections: bool = False,
    correction_lr: float = 0.01,
) -> SavedSchedule:
    """LD3 (Tong et al. 2024, "Learning to Discretize Denoising Diffusion ODEs"): `solver`'s timesteps at `nfe`; with
    `corrections`, a learned solver: the timesteps and a correction table (samplers.corrections) fitted together.

    Both are fitted to a Heun teacher by backpropagation through the whole solve (samplers/ld3.py).

    Starts from `initial` (a saved schedule of this field at this NFE) or else `schedule` (default: the solver's usual
    one on the field), and takes `iterations` Adam steps on `num_samples` noise draws (generator `seed`), each on a
    random `batch_size` of them (all by default), in log sigma for the EDM form and in t for rectified time.
    """
    if solver not in samplers.BASELINES:
        raise GenkitError(
            f"a schedule is learned here for a baseline solver ({', '.join(samplers.BASELINES)}), not {solver}; "
            "an AMED predictor learns its timesteps with it (genkit train amed amed.loss=end_to_end "
            "amed.learn_timesteps=true)"
        )
    if field.guidance is not None and batch_size not in (None, num_samples):
        raise GenkitError("LD3 fits a conditional model on all its draws at once (each has its class); drop batch_size")
    started = time.perf_counter()
    if initial is not None:
        timesteps, init = initial.timesteps, initial.name
        velocity, path = field.form(initial, solver)
        if initial.nfe(solver) != nfe:
            raise GenkitError(f"the initial schedule {init} gives {solver} NFE {initial.nfe(solver)}, not {nfe}")
    else:
        init = schedule or field.default_schedule(solver)
        velocity, path = field.form(init, solver)
        timesteps = path.timesteps(init, field.steps(solver, nfe, init) + 1)
    if corrections and solver not in samplers.CORRECTED:
        raise GenkitError(f"a learned solver corrects {', '.join(samplers.CORRECTED)}, not {solver}")
    state = process_state()
    rank, processes = (state.process_index, state.num_processes) if field.guidance is None else (0, 1)
    z = torch.randn((num_samples, *field.shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = path.start(z[rank::processes]).to(device, field.dtype)
    # The teacher on `teacher_steps` steps of the form's first schedule (karras for sigma, uniform for rectified). On
    # the 64-dim mixture of configs/amed/gmm64.yaml 64 Heun steps are 9e-4 RMS from DOP853, a few-step solve ~0.1.
    with torch.no_grad():
        teacher = samplers.solver_spec(TEACHER).function
        target = teacher(velocity, x, path.timesteps(path.schedules[0], teacher_steps + 1))
    function = samplers.solver_spec(solver).function
    generator = torch.Generator().manual_seed(seed + 1)
    sums = (lambda total: reduce(total, "sum")) if processes > 1 else None  # noqa: E731
    method = "learned" if corrections else "ld3"
    bar = lambda steps: progress(steps, desc=f"{method} {solver} nfe {nfe}", disable=not state.is_main_process)  # noqa: E731
    options = {"iterations": iterations, "lr": lr, "batch_size": batch_size, "generator": generator}
    options |= {"corrections": corrections, "correction_lr": correction_lr, "progress": bar, "reduce": sums}
    options |= {"shard": (rank, processes, num_samples)}
    log_time = isinstance(path, EDMPath)
    learned, table, history = learn_solver(function, velocity, x, target, timesteps, log_time, **options)

    @torch.no_grad()
    def rmse(times: torch.Tensor, table: samplers.Corrections | None) -> float:
        """RMSE to the teacher on all the training draws: the learned solver against the initial one, a quick check."""
        learned = {} if table is None else {"corrections": table}
        squares = (function(velocity, x, times, **learned) - target).double().pow(2)
        total = torch.stack([squares.sum(), squares.new_tensor(squares.numel())])
        total = total if sums is None else sums(total)
        return (total[0] / total[1]).sqrt().item()

    fitted, start = rmse(learned, table), rmse(timesteps, None)
    settings = {"method": method, "init": init, "iterations": iterations, "lr": lr, "batch_size": batch_size}
    settings |= {"processes": processes} | ({"correction_lr": correction_lr} if corrections else {})
    settings |= {"teacher": TEACHER, "teacher_steps": teacher_steps, "num_samples": num_samples, "seed": seed}
    settings |= {"loss": min(history), "rmse_to_teacher": fitted, "rmse_to_teacher_init": start}
    settings |= {"seconds": time.perf_counter() - started} | field.made_for()
    name = f"{method}_{solver}_nfe{nfe}_{init}"
    return SavedSchedule(field.field_id, time_of(path), learned, solver, name, settings, table)
