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
"""

import math
from collections.abc import Callable

import torch
from torch import Tensor

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


def learn_timesteps(
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
) -> tuple[Tensor, list[float]]:
    """The timesteps (float64, same ends and length as `timesteps`) minimising mean ||solver(x) - target||^2.

    `x` [M, ...] are the solver's start states, `target` the teacher's terminal states from them; each Adam
    iteration solves a random `batch_size` of them (all by default) and backpropagates through the whole trajectory.
    Returns the iterate with the least loss seen (the loss before each update) and the loss history.
    """
    solver_opts = solver_opts or {}
    t_start, t_end = timesteps[0].item(), timesteps[-1].item()
    logits = initial_logits(timesteps, log_time).to(x.device).requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 0.5 * (1 + math.cos(math.pi * k / iterations)))
    best, best_loss, history = logits.detach().clone(), math.inf, []
    for _ in range(iterations):
        if batch_size is None or batch_size >= len(x):
            x_batch, target_batch = x, target
        else:
            chosen = torch.randperm(len(x), generator=generator)[:batch_size].to(x.device)
            x_batch, target_batch = x[chosen], target[chosen]
        times = monotone_timesteps(logits, t_start, t_end, log_time)
        loss = (solver(field, x_batch, times, **solver_opts) - target_batch).double().pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        history.append(loss.item())
        if history[-1] < best_loss:
            best, best_loss = logits.detach().clone(), history[-1]
        optimizer.step()
        schedule.step()
    return monotone_timesteps(best, t_start, t_end, log_time).detach().double().cpu(), history
