"""Probability paths and their time conventions (docs/samplers.md §1).

A path says how noise x0 and data x1 mix at time t and what velocity a model learns; as a time convention it also
says where a solve starts (`start(z)` from standard normal noise z), which schedules span its time, and how the
final state maps to data (`to_data`). Both take noise as `x0` and data as `x1`; they differ in what time means.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from samplers.schedules import SCHEDULES, SIGMA_MAX, SIGMA_MIN


def broadcast_time(t: Tensor, x: Tensor) -> Tensor:
    """t of shape [batch] viewed as [batch, 1, ...] to broadcast against x."""
    return t.reshape(-1, *[1] * (x.ndim - 1))


@dataclass(frozen=True)
class RectifiedPath:
    """x_t = t x1 + (1 - t) x0: noise x0 ~ N(0, I) at t = 0, data x1 at t = 1, target velocity x1 - x0."""

    schedules: ClassVar[tuple[str, ...]] = ("uniform", "ds_respaced")
    t_start: ClassVar[float] = 0.0
    t_end: ClassVar[float] = 1.0

    def interpolate(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        t = broadcast_time(t, x0)
        return t * x1 + (1 - t) * x0

    def target(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """dx_t/dt = x1 - x0."""
        return x1 - x0

    def start(self, z: Tensor) -> Tensor:
        """The state at t = 0 for standard normal noise z: z itself."""
        return z

    def schedule_options(self) -> dict:
        """What a schedule function needs to span this time: nothing, its schedules run from 0 to 1."""
        return {}

    def timesteps(self, schedule: str, n: int) -> Tensor:
        """`n` times of a rectified schedule (uniform, ds_respaced) from 0 to 1."""
        return SCHEDULES[schedule](n)

    def to_data(self, x: Tensor) -> Tensor:
        """The state at t = 1 is data."""
        return x


@dataclass(frozen=True)
class EDMPath:
    """x_sigma = x1 + sigma x0 (EDM/VE): time is sigma, solved from sigma_max down to sigma_min; target x0.

    `data_scale` maps the state at sigma_min to data: 1 for a field trained in this form, 1 / (1 + sigma_min) for a
    rectified field seen through RectifiedAsEDM (x~ = x_t / t with t = 1 / (1 + sigma)).
    """

    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX
    data_scale: float = 1.0
    schedules: ClassVar[tuple[str, ...]] = ("karras", "logsnr", "time_uniform")

    @property
    def t_start(self) -> float:
        return self.sigma_max

    @property
    def t_end(self) -> float:
        return self.sigma_min

    def interpolate(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        return x1 + broadcast_time(t, x0) * x0

    def target(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """dx_sigma/dsigma = x0, the noise."""
        return x0

    def start(self, z: Tensor) -> Tensor:
        """The state at sigma_max for standard normal noise z: sigma_max z (the data term is negligible there)."""
        return self.sigma_max * z

    def schedule_options(self) -> dict:
        """What a sigma schedule function needs to span this time: its sigma bounds."""
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def timesteps(self, schedule: str, n: int) -> Tensor:
        """`n` sigmas of a schedule from sigma_max to sigma_min (no trailing zero)."""
        return SCHEDULES[schedule](n, **self.schedule_options())

    def to_data(self, x: Tensor) -> Tensor:
        """The state at sigma_min as data."""
        return self.data_scale * x


ProbabilityPath = RectifiedPath | EDMPath


def nested_timesteps(path: ProbabilityPath, student: str | Tensor, refinement: int, points: int = 0) -> Tensor:
    """A teacher's grid nesting a student's times: `refinement` more times inside each student interval, so that
    every (refinement + 1)-th is the student's (docs/amed.md §6.1).

    For a named schedule the student has `points` times and the grid is the same schedule with
    (refinement + 1)(points - 1) + 1; for given timesteps the times added are geometric in sigma (as AMED's s_n,
    docs/amed.md §3.1).
    """
    if isinstance(student, str):
        return path.timesteps(student, (refinement + 1) * (points - 1) + 1)
    fraction = torch.arange(refinement + 1, dtype=torch.float64) / (refinement + 1)
    inner = student[:-1, None] ** (1 - fraction) * student[1:, None] ** fraction
    return torch.cat([inner.flatten(), student[-1:]])
