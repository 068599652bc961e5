"""Training-free time-step search in the style of GITS: dynamic programming over a fine grid, against a teacher.

GITS (Chen, Zhou, Wang, Shen, Lyu, "On the Trajectory Regularity of ODE-based Diffusion Sampling", ICML 2024,
arXiv 2405.11326; code: zju-pi/diff-sampler, gits-main) picks N of the K times of a fine grid t_0 .. t_{K-1}:

1. a teacher solves accurately from a batch of noise and keeps its state x_i and slope d_i at every grid time;
2. the cost of jumping from grid time i to j > i is the local error of one step of the base solver started on the
   teacher's trajectory, C[i, j] = mean over the batch of ||step(x_i, t_i -> t_j) - x_j||^2;
3. dynamic programming finds the path t_0 -> t_{K-1} of exactly N steps with the least summed cost, in O(K^2 N).

A multistep solver (iPNDM, DPM-Solver++(2M)) is costed by its single-step form, the step it takes from a fresh
state (no history): for both that is Euler / DDIM from the teacher's slope, which is the cost GITS uses for every
solver. The teacher's slope d_i is reused for the first evaluation of every step from x_i, so single-evaluation
solvers cost no field evaluation beyond the teacher's; two-stage solvers (Heun, DPM-Solver-2) one per pair (i, j).
docs/samplers.md §8.
"""

import torch
from torch import Tensor

from samplers.registry import solver_spec
from samplers.solvers import batch_time
from samplers.velocity import Velocity


class KnownSlope:
    """A field that returns the teacher's slope at the teacher's own state (GITS reuses it), and evaluates elsewhere."""

    def __init__(self, field: Velocity, x: Tensor, t: Tensor, slope: Tensor):
        self.field, self.x, self.t, self.slope = field, x, t, slope

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if x is self.x and bool((t == self.t).all()):
            return self.slope
        return self.field(x, t)


@torch.no_grad()
def local_errors(field: Velocity, solver: str, grid: Tensor, states: Tensor, slopes: Tensor) -> Tensor:
    """C[i, j]: batch mean of ||one `solver` step from states[i], grid[i] -> grid[j] - states[j]||^2; inf for j <= i.

    The step is the solver run on the two times [grid[i], grid[j]], i.e. its single-step form (module docstring).
    """
    function = solver_spec(solver).function
    count = len(grid)
    cost = torch.full((count, count), torch.inf, dtype=torch.float64, device=states.device)
    for i in range(count - 1):
        x, t = states[i], grid[i].to(states.device, states.dtype)
        known = KnownSlope(field, x, batch_time(t, x), slopes[i])
        for j in range(i + 1, count):
            x_next = function(known, x, torch.stack([grid[i], grid[j]]))
            cost[i, j] = (x_next - states[j]).double().pow(2).flatten(1).sum(1).mean()
    return cost.cpu()


def optimal_path(cost: Tensor, steps: int) -> tuple[list[int], float]:
    """Indices 0 = i_0 < i_1 < ... < i_steps = K - 1 minimising sum_k cost[i_k, i_{k+1}], and that sum (GITS's DP).

    best[k, j] is the least cost of reaching grid point j from 0 in exactly k steps:
    best[k, j] = min_{i < j} best[k - 1, i] + cost[i, j]; the path is read back through the minimising i.
    Costs below the diagonal are ignored (time only moves forward).
    """
    count = cost.shape[0]
    if not 1 <= steps <= count - 1:
        raise ValueError(f"a path of {steps} steps does not fit a grid of {count} points")
    forward = torch.triu(torch.ones(count, count, dtype=torch.bool), diagonal=1)
    cost = torch.where(forward, cost.to(torch.float64), torch.inf)
    best = torch.full((steps + 1, count), torch.inf, dtype=torch.float64)
    best[0, 0] = 0.0
    previous = torch.zeros((steps + 1, count), dtype=torch.long)
    for k in range(1, steps + 1):
        # Entry [i, j]: reach i in k - 1 steps, then jump to j; the minimum over i is taken for every j at once.
        best[k], previous[k] = (best[k - 1][:, None] + cost).min(dim=0)
    path = [count - 1]
    for k in range(steps, 0, -1):
        path.append(int(previous[k, path[-1]]))
    return path[::-1], best[steps, count - 1].item()
