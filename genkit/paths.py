"""Probability paths: how noise x0 and data x1 mix at time t, the velocity a model learns, and the prior.

Both paths take noise as `x0` and data as `x1`; they differ in what time means.
"""

from dataclasses import dataclass

import torch
from torch import Tensor


def broadcast_time(t: Tensor, x: Tensor) -> Tensor:
    """t of shape [batch] viewed as [batch, 1, ...] to broadcast against x."""
    return t.reshape(-1, *[1] * (x.ndim - 1))


@dataclass(frozen=True)
class RectifiedPath:
    """x_t = t x1 + (1 - t) x0: noise x0 ~ N(0, I) at t = 0, data x1 at t = 1, target velocity x1 - x0."""

    @property
    def t_start(self) -> float:
        return 0.0

    @property
    def t_end(self) -> float:
        return 1.0

    def interpolate(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        t = broadcast_time(t, x0)
        return t * x1 + (1 - t) * x0

    def target(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """dx_t/dt = x1 - x0."""
        return x1 - x0

    def prior(self, shape: tuple[int, ...], generator: torch.Generator | None = None, **tensor_opts) -> Tensor:
        """x0 ~ N(0, I) at t = 0."""
        return torch.randn(shape, generator=generator, **tensor_opts)


@dataclass(frozen=True)
class EDMPath:
    """x_sigma = x1 + sigma x0 (EDM/VE): time is sigma, run from sigma_max down to sigma_min; target dx/dsigma = x0."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0

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

    def prior(self, shape: tuple[int, ...], generator: torch.Generator | None = None, **tensor_opts) -> Tensor:
        """sigma_max * N(0, I): the data's contribution is negligible at sigma_max."""
        return self.sigma_max * torch.randn(shape, generator=generator, **tensor_opts)
