"""Learned timesteps in the style of LD3: a monotone schedule fitted by backpropagating through the whole solve.

LD3 (Tong et al., "Learning to Discretize Denoising Diffusion ODEs", 2024) treats the N + 1 timesteps of a few-step
solver as parameters and fits them so that the solver's terminal states match a teacher's from the same noise. genkit
keeps the ends fixed, t_0 = t_start and t_N = t_end, and writes the interior times as the cumulative softmax of N logits
in the schedule's natural coordinate u (log sigma for an EDM-form field, t for rectified time):

    u_i = u_0 + (u_N - u_0) sum_{k < i} softmax(logits)_k,    t_i = exp(u_i) or u_i,

so every schedule the logits can express is strictly monotone and spans the same interval. The loss is the mean
squared error of the terminal states (LD3's plain L2 objective, without its slack ball or perceptual metric), minimised
with Adam on a cosine-decayed step size from logits that reproduce the initial schedule. docs/samplers.md §8.3.

Every baseline solver of samplers/solvers.py is differentiable in its timesteps (they stay tensors throughout);
AMED's analytical first step reads t_0 as a Python float, which is harmless here since t_0 is fixed.

`learn_solver` fits the correction table of a learned solver (samplers.corrections) with the times, through the same
solve and loss (docs/samplers.md §8.5).
"""

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from samplers.corrections import Corrections
from samplers.velocity import Velocity

Solver = Callable[..., Tensor]


def coordinate(timesteps: Tensor, log_time: bool) -> Tensor:
    """The natural coordinate u of the times: log t (sigma) or t itself (rectified)."""
    return timesteps.log() if log_time else timesteps


def monotone_timesteps(logits: Tensor, t_start: float, t_end: float, log_time: bool) -> Tensor:
    """N + 1 times from t_start to t_end (both exact) whose steps in u are softmax(logits) of the whole span."""
    u_start, u_end = (
        coordinate(torch.tensor(t, dtype=logits.dtype, device=logits.device), log_time) for t in (t_start, t_end)
    )
    fractions = torch.softmax(logits, dim=0).cumsum(0)[:-1]
    interior = u_start + (u_end - u_start) * fractions
    interior = interior.exp() if log_time else interior
    ends = torch.tensor([t_start, t_end], dtype=logits.dtype, device=logits.device)
    return torch.cat([ends[:1], interior, ends[1:]])


def initial_logits(timesteps: Tensor, log_time: bool) -> Tensor:
    """The logits whose monotone_timesteps are `timesteps` (log of each step's share of the span in u)."""
    steps = coordinate(timesteps.double(), log_time).diff()
    return (steps / steps.sum()).log()


def correction_table(fitted: list[Tensor], timesteps: Tensor, log_time: bool) -> Corrections:
    """The correction table (samplers.corrections) of the two fitted tables at these timesteps.

    A velocity term nearly repeats a state term: h_i d_j = h_i / (t_N - t_j) (e_j - x_j), where e_j = x_j +
    (t_N - t_j) d_j is the end point one Euler step from x_j predicts (the denoised state in sigma time, the data
    prediction in rectified time), of the size of data. So a velocity and a state coefficient trade off along a valley
    that Adam crosses slowly (in sigma time, where x_j is of size sigma_j, 80 at the start, a one-step fit on Gaussian
    data stalled at RMSE 3e-3). The fitted tables are instead the coefficients u of e_j and w of x_j in units of its
    size s_j (sqrt(1 + sigma_j^2) in sigma time, 1 in rectified time): u e_j + (w / s_j) x_j is the table's term with
    velocity[i, j] = u (t_N - t_j) / h_i and state[i, j] = u + w / s_j.
    """
    first, second = fitted
    times = timesteps.to(first)
    size = (1 + times[:-1] ** 2).sqrt() if log_time else torch.ones_like(times[:-1])
    velocity = first * (times[-1] - times[:-1])[None, :] / times.diff()[:, None]
    return Corrections(velocity, first + second / size[None, :])


def learn_solver(
    solver: Solver,
    field: Velocity,
    x: Tensor,
    target: Tensor,
    timesteps: Tensor,
    log_time: bool,
    iterations: int = 300,
    lr: float = 0.05,
    batch_size: int | None = None,
    solver_opts: dict | None = None,
    generator: torch.Generator | None = None,
    corrections: bool = False,
    correction_lr: float = 0.01,
    shard: tuple[int, int, int] | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
    progress: Callable[[range], Iterable[int]] = iter,
) -> tuple[Tensor, Corrections | None, list[float]]:
    """The timesteps (float64, same ends and length as `timesteps`) minimising mean ||solver(x) - target||^2, and
    with `corrections` a correction table (samplers.corrections) fitted jointly from zero.

    `x` are the solver's start states, `target` the teacher's terminal states from them; each Adam iteration solves a
    random `batch_size` of them (all by default) and backpropagates through the whole trajectory. The times move at
    step size `lr`, the corrections at `correction_lr` (in correction_table's coordinates). Returns the iterate with
    the least loss seen (the loss before each update), its table, and the loss history.

    Several processes fit as one: `shard` = (rank, processes, total draws) says that x and target are the draws
    rank, rank + processes, ... of the whole set, and `reduce` sums a tensor over the processes; every process draws
    the same batch indices, solves its own of them, and all take the same step on the summed gradient.
    """
    solver_opts = solver_opts or {}
    rank, processes, total = shard or (0, 1, len(x))
    t_start, t_end = timesteps[0].item(), timesteps[-1].item()
    steps = len(timesteps) - 1
    logits = initial_logits(timesteps, log_time).to(x.device).requires_grad_(True)
    groups = [{"params": [logits], "lr": lr}]
    # The tables start at zero (the base solver) in correction_table's coordinates; their upper triangles are unused.
    tables = [torch.zeros(steps, steps, dtype=torch.float64, device=x.device, requires_grad=True) for _ in range(2)]
    if corrections:
        groups.append({"params": tables, "lr": correction_lr})
    optimizer = torch.optim.Adam(groups)
    decay = lambda k: 0.5 * (1 + math.cos(math.pi * k / iterations))  # noqa: E731
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
    best = [p.detach().clone() for p in (logits, *tables)]
    best_loss, history = math.inf, []
    size = x[0].numel()
    for _ in progress(range(iterations)):
        if batch_size is None or batch_size >= total:
            x_batch, target_batch, count = x, target, total
        else:
            chosen = torch.randperm(total, generator=generator)[:batch_size]
            mine = chosen[chosen % processes == rank] // processes
            x_batch, target_batch, count = x[mine.to(x.device)], target[mine.to(x.device)], batch_size
        times = monotone_timesteps(logits, t_start, t_end, log_time)
        options = solver_opts | ({"corrections": correction_table(tables, times, log_time)} if corrections else {})
        error = (solver(field, x_batch, times, **options) - target_batch).double().pow(2).sum() / (count * size)
        optimizer.zero_grad()
        error.backward()
        loss = error.detach()
        if reduce is not None:
            loss = reduce(loss)
            for parameter in (p for group in groups for p in group["params"]):
                parameter.grad = reduce(parameter.grad)
        history.append(loss.item())
        if history[-1] < best_loss:
            best, best_loss = [p.detach().clone() for p in (logits, *tables)], history[-1]
        optimizer.step()
        schedule.step()
    times = monotone_timesteps(best[0], t_start, t_end, log_time).detach().double().cpu()
    fitted = correction_table([table.cpu() for table in best[1:]], times, log_time) if corrections else None
    return times, fitted, history
