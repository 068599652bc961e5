"""Baseline ODE solvers: `x = solver(field, x, timesteps, callback=None, **opts)`.

Each integrates dx/dt = field(x, t) from timesteps[0] to timesteps[-1], whichever way time runs,
and calls the field with `t` of shape [batch]. `euler`, `heun` and `ipndm` work on any field;
`dpm_solver_2` and `dpmpp_2m` work in sigma space and need an EDM-form field (time = sigma > 0,
denoised = x - sigma * velocity). The callback receives {"x", "i", "t", "velocity"} before step i
(and "denoised" for the data-prediction solver).
"""

from collections.abc import Callable

import torch
from torch import Tensor

from samplers.errors import SamplerError
from samplers.velocity import Velocity

Callback = Callable[[dict], None] | None

# Adams-Bashforth weights for equal steps, newest slope first (orders 1-4).
ADAMS_BASHFORTH = (
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)


def as_timesteps(timesteps: Tensor, x: Tensor) -> Tensor:
    """The schedule on x's device and dtype, checked to hold at least one interval."""
    timesteps = torch.as_tensor(timesteps).to(device=x.device, dtype=x.dtype)
    if timesteps.ndim != 1 or len(timesteps) < 2:
        raise SamplerError(f"timesteps must be a 1-D tensor of at least 2 times, got shape {tuple(timesteps.shape)}")
    return timesteps


def batch_time(t: Tensor, x: Tensor) -> Tensor:
    """The scalar time t repeated for every sample of x: shape [batch]."""
    return t.expand(x.shape[0])


def require_sigma(timesteps: Tensor, solver: str) -> None:
    """Sigma-space solvers need sigma > 0 everywhere except a final 0."""
    if (timesteps[:-1] <= 0).any() or timesteps[-1] < 0:
        raise SamplerError(
            f"{solver} works in sigma space and needs an EDM-form field with timesteps sigma > 0 "
            "(a final 0 is allowed); convert a rectified-flow field with genkit.velocity.RectifiedAsEDM"
        )


def euler(field: Velocity, x: Tensor, timesteps: Tensor, callback: Callback = None) -> Tensor:
    """Euler (DDIM in EDM form): x_{n+1} = x_n + (t_{n+1} - t_n) v(x_n, t_n)."""
    timesteps = as_timesteps(timesteps, x)
    for i, (t, t_next) in enumerate(zip(timesteps[:-1], timesteps[1:], strict=True)):
        d = field(x, batch_time(t, x))
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "velocity": d})
        x = x + (t_next - t) * d
    return x


def heun(field: Velocity, x: Tensor, timesteps: Tensor, callback: Callback = None) -> Tensor:
    """Heun (EDM Alg. 1): x_{n+1} = x_n + h/2 (d_n + d(x_n + h d_n, t_{n+1})); Euler on a final step to t=0."""
    timesteps = as_timesteps(timesteps, x)
    for i, (t, t_next) in enumerate(zip(timesteps[:-1], timesteps[1:], strict=True)):
        h = t_next - t
        d = field(x, batch_time(t, x))
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "velocity": d})
        x_pred = x + h * d
        # An EDM field is (x - D)/sigma, undefined at sigma = 0: the last step to 0 stays first order.
        if t_next == 0:
            x = x_pred
        else:
            d_prime = field(x_pred, batch_time(t_next, x))
            x = x + h * (d + d_prime) / 2
    return x


def dpm_solver_2(field: Velocity, x: Tensor, timesteps: Tensor, callback: Callback = None) -> Tensor:
    """DPM-Solver-2: slope at s = sqrt(t_n t_{n+1}) after an Euler half-step, then the full step from x_n."""
    timesteps = as_timesteps(timesteps, x)
    require_sigma(timesteps, "dpm_solver_2")
    for i, (t, t_next) in enumerate(zip(timesteps[:-1], timesteps[1:], strict=True)):
        d = field(x, batch_time(t, x))
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "velocity": d})
        if t_next == 0:
            x = x + (t_next - t) * d
        else:
            t_mid = (t * t_next).sqrt()
            x_mid = x + (t_mid - t) * d
            x = x + (t_next - t) * field(x_mid, batch_time(t_mid, x))
    return x


def dpmpp_2m(field: Velocity, x: Tensor, timesteps: Tensor, callback: Callback = None) -> Tensor:
    """DPM-Solver++(2M): x_{n+1} = (t_{n+1}/t_n) x_n + (1 - e^{-h}) D_hat, D_hat = (1 + 1/2r) D_n - (1/2r) D_{n-1}.

    h = log(t_n / t_{n+1}) and r = h_{n-1} / h_n; the first step, and a last step to sigma = 0, are first order (DDIM).
    """
    timesteps = as_timesteps(timesteps, x)
    require_sigma(timesteps, "dpmpp_2m")
    denoised_prev, h_prev = None, None
    for i, (t, t_next) in enumerate(zip(timesteps[:-1], timesteps[1:], strict=True)):
        d = field(x, batch_time(t, x))
        denoised = x - t * d
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "velocity": d, "denoised": denoised})
        if t_next == 0:
            x = denoised
            continue
        h = (t / t_next).log()
        if denoised_prev is None:
            denoised_hat = denoised
        else:
            r = h_prev / h
            denoised_hat = (1 + 1 / (2 * r)) * denoised - denoised_prev / (2 * r)
        x = (t_next / t) * x - torch.expm1(-h) * denoised_hat
        denoised_prev, h_prev = denoised, h
    return x


def ipndm(field: Velocity, x: Tensor, timesteps: Tensor, callback: Callback = None, max_order: int = 4) -> Tensor:
    """iPNDM: Adams-Bashforth with equal-step weights on the slope history, order ramping up to max_order."""
    if max_order not in (1, 2, 3, 4):
        raise SamplerError(f"ipndm max_order must be 1, 2, 3 or 4, got {max_order}")
    timesteps = as_timesteps(timesteps, x)
    history: list[Tensor] = []
    for i, (t, t_next) in enumerate(zip(timesteps[:-1], timesteps[1:], strict=True)):
        d = field(x, batch_time(t, x))
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "velocity": d})
        history = [d, *history[: max_order - 1]]
        weights = ADAMS_BASHFORTH[len(history) - 1]
        x = x + (t_next - t) * sum(w * d_k for w, d_k in zip(weights, history, strict=True))
    return x
