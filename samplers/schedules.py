"""Time schedules: `n` timesteps from the start of integration to its end, as float64 tensors.

The sigma schedules follow diff-sampler's `get_schedule` (no trailing zero): they start at
`sigma_max` and end at `sigma_min`.
"""

import math

import torch
from torch import Tensor

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0


def _check_count(n: int) -> None:
    if n < 2:
        raise ValueError(f"a schedule needs at least 2 timesteps (one interval), got n={n}")


def karras(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = 7.0) -> Tensor:
    """EDM polynomial schedule: sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho."""
    _check_count(n)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def logsnr(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX) -> Tensor:
    """Uniform in lambda = -log(sigma): geometric spacing from sigma_max to sigma_min (DPM-Solver)."""
    _check_count(n)
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), n, dtype=torch.float64)


def vp_refit(sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, eps_s: float = 1e-3) -> tuple[float, float]:
    """(beta_d, beta_min) of the VP schedule with sigma(1) = sigma_max and sigma(eps_s) = sigma_min.

    sigma(tau)^2 = exp(beta_d tau^2 / 2 + beta_min tau) - 1, so log(1 + sigma^2) is a quadratic in tau
    through two known points with no constant term.
    """
    log_max, log_min = math.log1p(sigma_max**2), math.log1p(sigma_min**2)
    beta_d = 2 * (log_min / eps_s - log_max) / (eps_s - 1)
    return beta_d, log_max - beta_d / 2


def time_uniform(
    n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = 1.0, eps_s: float = 1e-3
) -> Tensor:
    """Uniform in VP time tau_i = (1 + i/(n-1) (eps_s^(1/rho) - 1))^rho, mapped to sigma by the refitted VP schedule."""
    _check_count(n)
    beta_d, beta_min = vp_refit(sigma_min, sigma_max, eps_s)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    tau = (1 + ramp * (eps_s ** (1 / rho) - 1)) ** rho
    return torch.expm1(0.5 * beta_d * tau**2 + beta_min * tau).sqrt()


def uniform(n: int, t0: float = 0.0, t1: float = 1.0) -> Tensor:
    """Equal steps from t0 to t1 (rectified flow: noise at 0, data at 1)."""
    _check_count(n)
    return torch.linspace(t0, t1, n, dtype=torch.float64)


# DS-Solver's fitted respacing of rectified time (t = 0 noise): t' = -1.96 t^4 + 3.51 t^3 - 0.97 t^2 + 0.43 t.
DS_RESPACING = (0.0, 0.43, -0.97, 3.51, -1.96)


def ds_respaced(n: int, t0: float = 0.0, t1: float = 1.0) -> Tensor:
    """DS-Solver's rectified-flow respacing of `n` equal steps: p(u) = -1.96 u^4 + 3.51 u^3 - 0.97 u^2 + 0.43 u,
    divided by p(1) = 1.01 so that it ends exactly at t1 (p is increasing on [0, 1]: steps short near the noise, then
    long, then short again near the data)."""
    _check_count(n)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    fraction = sum(c * ramp**k for k, c in enumerate(DS_RESPACING)) / sum(DS_RESPACING)
    fraction[-1] = 1.0  # exact end despite round-off
    return t0 + (t1 - t0) * fraction


SCHEDULES = {
    "karras": karras,
    "logsnr": logsnr,
    "time_uniform": time_uniform,
    "uniform": uniform,
    "ds_respaced": ds_respaced,
}
