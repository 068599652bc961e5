"""Baseline ODE solvers: `x = solver(field, x, timesteps, callback=None, **opts)`.

Each integrates dx/dt = field(x, t) from timesteps[0] to timesteps[-1], whichever way time runs,
and calls the field with `t` of shape [batch]. `euler`, `heun` and `ipndm` work on any field;
`dpm_solver_2` and `dpmpp_2m` work in sigma space and need an EDM-form field (time = sigma > 0,
denoised = x - sigma * velocity). The callback receives {"x", "i", "t", "velocity"} before step i.

The single-evaluation solvers (euler, ipndm, dpmpp_2m) are one loop (`multistep`) around a step formula, and take a
learned correction table (`corrections`, samplers.corrections) added to each step; zero corrections change nothing.
"""

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from samplers.corrections import Corrections
from samplers.errors import SamplerError
from samplers.velocity import Velocity

Callback = Callable[[dict], None] | None
# A step formula: x_{i+1} from step i, the timesteps and the recent states and velocities (newest last).
Step = Callable[[int, Tensor, list[Tensor], list[Tensor]], Tensor]
HISTORY = 4  # states and velocities the step formulas read back (iPNDM's highest order)

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


def multistep(
    field: Velocity,
    x: Tensor,
    timesteps: Tensor,
    step: Step,
    callback: Callback = None,
    corrections: Corrections | None = None,
) -> Tensor:
    """x_{i+1} = step(i, timesteps, states, velocities) (+ corrections), one evaluation d_i = field(x_i, t_i) a step.

    Without corrections only the last HISTORY states and velocities are kept (a long solve holds no trajectory).
    """
    timesteps = as_timesteps(timesteps, x)
    if corrections is not None:
        corrections.check(len(timesteps) - 1)
    states: list[Tensor] = []
    velocities: list[Tensor] = []
    for i, t in enumerate(timesteps[:-1]):
        d = field(x, batch_time(t, x))
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "velocity": d})
        states.append(x)
        velocities.append(d)
        if corrections is None:
            del states[:-HISTORY], velocities[:-HISTORY]
            x = step(i, timesteps, states, velocities)
        else:
            x = corrections.correct(i, step(i, timesteps, states, velocities), timesteps, states, velocities)
    return x


def euler_step(i: int, timesteps: Tensor, states: list[Tensor], velocities: list[Tensor]) -> Tensor:
    """Euler (DDIM in EDM form): x_{n+1} = x_n + (t_{n+1} - t_n) v(x_n, t_n)."""
    return states[-1] + (timesteps[i + 1] - timesteps[i]) * velocities[-1]


def euler(
    field: Velocity, x: Tensor, timesteps: Tensor, callback: Callback = None, corrections: Corrections | None = None
) -> Tensor:
    """Euler (DDIM in EDM form): x_{n+1} = x_n + (t_{n+1} - t_n) v(x_n, t_n)."""
    return multistep(field, x, timesteps, euler_step, callback, corrections)


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


def dpmpp_2m_step(
    i: int, timesteps: Tensor, states: list[Tensor], velocities: list[Tensor], lower_order_final: bool = False
) -> Tensor:
    """DPM-Solver++(2M): x_{n+1} = (t_{n+1}/t_n) x_n + (1 - e^{-h}) D_hat, D_hat = (1 + 1/2r) D_n - (1/2r) D_{n-1}.

    D_n = x_n - t_n d_n, h = log(t_n / t_{n+1}) and r = h_{n-1} / h_n. The first step, and a last step to sigma = 0,
    are first order (DDIM); with `lower_order_final` so is every last step (diffusers' default below 15 steps).
    """
    t, t_next = timesteps[i], timesteps[i + 1]
    denoised = states[-1] - t * velocities[-1]
    if t_next == 0:
        return denoised
    h = (t / t_next).log()
    if i == 0 or (lower_order_final and i == len(timesteps) - 2):
        denoised_hat = denoised
    else:
        t_prev = timesteps[i - 1]
        r = (t_prev / t).log() / h
        denoised_hat = (1 + 1 / (2 * r)) * denoised - (states[-2] - t_prev * velocities[-2]) / (2 * r)
    return (t_next / t) * states[-1] - torch.expm1(-h) * denoised_hat


def dpmpp_2m(
    field: Velocity,
    x: Tensor,
    timesteps: Tensor,
    callback: Callback = None,
    lower_order_final: bool = False,
    corrections: Corrections | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (`dpmpp_2m_step`); `lower_order_final`: the last step first order, as diffusers runs it."""
    timesteps = as_timesteps(timesteps, x)
    require_sigma(timesteps, "dpmpp_2m")
    step = partial(dpmpp_2m_step, lower_order_final=lower_order_final)
    return multistep(field, x, timesteps, step, callback, corrections)


def ipndm_step(i: int, timesteps: Tensor, states: list[Tensor], velocities: list[Tensor], max_order: int = 4) -> Tensor:
    """iPNDM: Adams-Bashforth with equal-step weights on the last max_order slopes (fewer at the start)."""
    history = velocities[::-1][:max_order]
    weights = ADAMS_BASHFORTH[len(history) - 1]
    slope = sum(w * d_k for w, d_k in zip(weights, history, strict=True))
    return states[-1] + (timesteps[i + 1] - timesteps[i]) * slope


def ipndm(
    field: Velocity,
    x: Tensor,
    timesteps: Tensor,
    callback: Callback = None,
    max_order: int = 4,
    corrections: Corrections | None = None,
) -> Tensor:
    """iPNDM: Adams-Bashforth with equal-step weights on the slope history, order ramping up to max_order."""
    if max_order not in (1, 2, 3, 4):
        raise SamplerError(f"ipndm max_order must be 1, 2, 3 or 4, got {max_order}")
    return multistep(field, x, timesteps, partial(ipndm_step, max_order=max_order), callback, corrections)
