"""A high-accuracy ODE solution with scipy, the yardstick for measuring solver error."""

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from samplers.velocity import Velocity


@torch.no_grad()
def reference(
    field: Velocity, x: Tensor, t0: float, t1: float, rtol: float = 1e-8, atol: float = 1e-8, method: str = "DOP853"
) -> Tensor:
    """x(t1) of dx/dt = field(x, t) from x(t0) = x, by scipy's adaptive `solve_ivp` on the flattened batch.

    The field is evaluated in x's dtype: pass float64 x for a reference tighter than float32 round-off.
    """
    shape, dtype, device = x.shape, x.dtype, x.device

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        state = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
        velocity = field(state, torch.full((shape[0],), t, device=device, dtype=dtype))
        return velocity.reshape(-1).to(device="cpu", dtype=torch.float64).numpy()

    y0 = x.reshape(-1).to(device="cpu", dtype=torch.float64).numpy()
    solution = solve_ivp(rhs, (float(t0), float(t1)), y0, method=method, rtol=rtol, atol=atol, t_eval=[float(t1)])
    if not solution.success:
        raise RuntimeError(f"reference solve from t={t0} to t={t1} failed: {solution.message}")
    return torch.from_numpy(solution.y[:, -1]).reshape(shape).to(device=device, dtype=dtype)
