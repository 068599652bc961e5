"""The teacher every learned or searched few-step method is measured against: an accurate solve on a fine grid.

GITS's search (samplers/gits.py), LD3's fit (samplers/ld3.py) and AMED's distillation (docs/amed.md §6.1) all take
Heun on a fine grid that nests the student's times as their teacher, and read its states at the student's times.
"""

import torch
from torch import Tensor

from samplers.registry import solver_spec
from samplers.velocity import Velocity

TEACHER = "heun"  # second order, any field


@torch.no_grad()
def teacher_trajectory(
    field: Velocity, x: Tensor, timesteps: Tensor, stride: int, teacher: str = TEACHER
) -> tuple[Tensor, Tensor]:
    """The teacher's states [K, *x.shape] and slopes at every `stride`-th of `timesteps` (K = the grid's length).

    `timesteps` refines the search grid by stride - 1 points inside each of its intervals (nested, as AMED's teacher
    grid, docs/amed.md §6.1); the slope at the last grid time is not needed and left zero.
    """
    if (len(timesteps) - 1) % stride:
        raise ValueError(f"{len(timesteps)} teacher times do not nest a grid with stride {stride}")
    states, slopes = [], []

    def keep(info: dict) -> None:
        if info["i"] % stride == 0:
            states.append(info["x"])
            slopes.append(info["velocity"])

    final = solver_spec(teacher).function(field, x, timesteps, callback=keep)
    return torch.stack([*states, final]), torch.stack([*slopes, torch.zeros_like(final)])
