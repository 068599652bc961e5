"""AMED-Solver (Zhou et al., CVPR 2024): a learned intermediate time per interval, mean-value direction.

Works on any EDM-form field (time = sigma > 0, velocity = (x - D(x, sigma)) / sigma). The predictor sees
features that every field provides (a pooled summary of the slope d_n), never a network's module names; a
predictor built with features="bottleneck" instead reads the 64 values a field's `velocity_and_bottleneck`
returns with the slope (samplers.velocity; genkit's U-Net adapters pool the U-Net's middle block to 8x8).
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samplers.errors import SamplerError
from samplers.solvers import ADAMS_BASHFORTH, Callback, as_timesteps, batch_time
from samplers.velocity import FEATURE_SIZE, Velocity, pooled_features, velocity_and_bottleneck

PLUGIN_BASES = ("euler", "dpm_solver_2", "ipndm", "dpmpp_2m")
FEATURES = ("slope", "bottleneck")
Predictor = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


def slope_features(d: Tensor) -> Tensor:
    """The slope pooled to 64 numbers per sample: channel mean then 8x8 average pool for images, 1-D pool else."""
    if d.ndim == 4:
        return pooled_features(d)
    return F.adaptive_avg_pool1d(d.reshape(d.shape[0], 1, -1), FEATURE_SIZE).flatten(1)


def time_embedding(sigma: Tensor, channels: int = 8, max_positions: int = 10_000) -> Tensor:
    """Sinusoidal embedding of raw sigma, [cos, sin] with endpoint frequencies (docs/amed.md §5)."""
    frequencies = (1 / max_positions) ** (torch.arange(channels // 2, device=sigma.device) / (channels // 2 - 1))
    angles = sigma.float()[:, None] * frequencies[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class AMEDPredictor(nn.Module):
    """g(features, t_n, t_{n+1}) -> (r, c, a): r in (0, 1); c in (1 +- scale_dir), a in (1 +- scale_time), 1 when 0.

    `features` names what the 64 inputs are: "slope" (slope_features of d_n) or "bottleneck" (the field's).
    """

    def __init__(self, features: str = "slope", scale_dir: float = 0.01, scale_time: float = 0.0):
        super().__init__()
        if features not in FEATURES:
            raise SamplerError(f"AMEDPredictor features {features!r} is not one of: {', '.join(FEATURES)}")
        self.features, self.scale_dir, self.scale_time = features, scale_dir, scale_time
        self.encoder = nn.Sequential(nn.Linear(FEATURE_SIZE, 128), nn.SiLU(), nn.Linear(128, 4))
        self.time_layer = nn.Sequential(nn.Linear(8, 8), nn.SiLU())
        nn.init.xavier_uniform_(self.time_layer[0].weight)
        self.fc_r = nn.Linear(20, 1)
        self.fc_scale_dir = nn.Linear(20, 1) if scale_dir > 0 else None
        self.fc_scale_time = nn.Linear(20, 1) if scale_time > 0 else None

    def forward(self, features: Tensor, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch, dtype = features.shape[0], self.fc_r.weight.dtype
        times = torch.stack([t, t_next]).reshape(2).to(features.device)
        embedded = self.time_layer(time_embedding(times).to(dtype)).reshape(1, 16).expand(batch, 16)
        hidden = torch.cat([self.encoder(features.to(dtype)), embedded], dim=1)
        r = torch.sigmoid(self.fc_r(hidden)).squeeze(1)
        ones = torch.ones_like(r)
        c = ones if self.fc_scale_dir is None else self._bounded(self.fc_scale_dir(hidden), self.scale_dir)
        a = ones if self.fc_scale_time is None else self._bounded(self.fc_scale_time(hidden), self.scale_time)
        return r, c, a

    @staticmethod
    def _bounded(logit: Tensor, scale: float) -> Tensor:
        """(1 - scale) + 2 scale sigmoid(logit): a factor within (1 - scale, 1 + scale)."""
        return (1 - scale + 2 * scale * torch.sigmoid(logit)).squeeze(1)


def intermediate_time(t: Tensor, t_next: Tensor, r: Tensor) -> Tensor:
    """s = t^(1-r) t_next^r: geometric interpolation, uniform in log sigma, between t_next and t."""
    return t ** (1 - r) * t_next**r


def gaussian_first_slope(x: Tensor, sigma: Tensor | float, mean: Tensor, variance: Tensor | float) -> Tensor:
    """The exact EDM slope (x - D(x; sigma)) / sigma for data N(mean, variance): AFS exact for Gaussian data.

    D(x; sigma) = mean + variance / (variance + sigma^2) (x - mean), per dimension (docs/amed.md §3.4); `mean` and
    `variance` broadcast against one sample (a scalar variance is isotropic). Zero mean and variance -> 0 give
    x / sigma, the zero-mean AFS up to its factor sigma / sqrt(1 + sigma^2).
    """
    mean, variance = (torch.as_tensor(value).to(x) for value in (mean, variance))
    denoised = mean + variance / (variance + sigma**2) * (x - mean)
    return (x - denoised) / sigma


def _afs_statistics(mean: Tensor | None, variance: Tensor | float | None) -> tuple[Tensor, Tensor] | None:
    """(mean, variance) of the data-aware AFS, or None for the zero-mean one; both or neither must be given."""
    if (mean is None) != (variance is None):
        raise SamplerError("the data-aware first step needs both afs_mean and afs_var (or neither, for zero mean)")
    return None if mean is None else (mean, variance)


def _checked(timesteps: Tensor, x: Tensor, solver: str) -> Tensor:
    timesteps = as_timesteps(timesteps, x)
    if (timesteps <= 0).any():
        raise SamplerError(f"{solver} needs an EDM-form field on timesteps sigma > 0 (end at sigma_min, not 0)")
    return timesteps


def _predicted_interval(
    field: Velocity,
    x: Tensor,
    i: int,
    t: Tensor,
    t_next: Tensor,
    predictor: Predictor,
    afs: bool,
    callback: Callback,
    statistics: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(d_n, r, c, a, s_n) for interval i; `afs`: features zero, no call, and the slope x / sqrt(1 + t^2), or the
    exact slope of data N(mean, variance) when `statistics` gives them."""
    if afs:
        d = x / math.sqrt(1 + t.item() ** 2) if statistics is None else gaussian_first_slope(x, t.item(), *statistics)
        features = torch.zeros(x.shape[0], FEATURE_SIZE, device=x.device, dtype=x.dtype)
    elif getattr(predictor, "features", "slope") == "bottleneck":
        d, features = velocity_and_bottleneck(field, x, batch_time(t, x))
    else:
        d = field(x, batch_time(t, x))
        features = slope_features(d)
    r, c, a = (value.to(x.dtype) for value in predictor(features, t, t_next))
    if callback is not None:
        callback({"x": x, "i": i, "t": t, "velocity": d, "r": r, "c": c, "a": a})
    return d, r, c, a, intermediate_time(t, t_next, r)


def _per_sample(value: Tensor, x: Tensor) -> Tensor:
    """A [batch] tensor viewed to broadcast against x."""
    return value.reshape((-1,) + (1,) * (x.ndim - 1))


def _mean_slope(field: Velocity, x_s: Tensor, s: Tensor, a: Tensor) -> Tensor:
    """(x_s - D(x_s; a s)) / s = a v(x_s, a s): the network sees the rescaled time, the slope divides by s."""
    return _per_sample(a, x_s) * field(x_s, a * s)


def _adams_bashforth(history: list[Tensor]) -> Tensor:
    return sum(w * d for w, d in zip(ADAMS_BASHFORTH[len(history) - 1], history, strict=True))


def amed(
    field: Velocity,
    x: Tensor,
    timesteps: Tensor,
    predictor: Predictor,
    afs: bool = True,
    callback: Callback = None,
    afs_mean: Tensor | None = None,
    afs_var: Tensor | float | None = None,
) -> Tensor:
    """AMED-Solver: s = t_n^(1-r) t_{n+1}^r, x_s = x_n + (s - t_n) d_n, x_{n+1} = x_n + c (t_{n+1} - t_n) d_s.

    d_s = a v(x_s, a s). Costs 2 evaluations an interval, one fewer with AFS (no evaluation at t_0); `afs_mean` and
    `afs_var` make that first slope the exact one of data N(afs_mean, afs_var) (gaussian_first_slope).
    """
    timesteps, statistics = _checked(timesteps, x, "amed"), _afs_statistics(afs_mean, afs_var)
    for i, (t, t_next) in enumerate(zip(timesteps[:-1], timesteps[1:], strict=True)):
        d, r, c, a, s = _predicted_interval(field, x, i, t, t_next, predictor, afs and i == 0, callback, statistics)
        d_s = _mean_slope(field, x + _per_sample(s - t, x) * d, s, a)
        x = x + _per_sample(c * (t_next - t), x) * d_s
    return x


def _dpmpp_substep(x: Tensor, t: Tensor, t_next: Tensor, denoised: Tensor, history: list[Tensor]) -> Tensor:
    """DPM-Solver++(2M) t -> t_next: D_hat = (1 + 1/2r) D - D_prev / 2r, r = h_prev / h; history [D_prev, h_prev]."""
    h = (t / t_next).log()
    if history:
        denoised_prev, h_prev = history
        r = h_prev / h
        denoised = (1 + 1 / (2 * r)) * denoised - denoised_prev / (2 * r)
    return (t_next / t) * x - torch.expm1(-h) * denoised


def amed_plugin_step(
    field: Velocity,
    x: Tensor,
    t: Tensor,
    t_next: Tensor,
    predictor: Predictor,
    history: list[Tensor],
    base: str = "ipndm",
    afs: bool = False,
    max_order: int = 4,
    index: int = 0,
    callback: Callback = None,
    afs_mean: Tensor | None = None,
    afs_var: Tensor | float | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """One AMED-Plugin interval t -> s -> t_next: (x_{n+1}, the base solver's history for the next interval).

    `history` is [] on the first interval; `afs` replaces the evaluation at t (the first interval only), with the
    exact slope of data N(afs_mean, afs_var) when they are given.
    """
    statistics = _afs_statistics(afs_mean, afs_var)
    d, r, c, a, s = _predicted_interval(field, x, index, t, t_next, predictor, afs, callback, statistics)
    if base == "ipndm":
        history = [d, *history[: max_order - 1]]
        x_s = x + _per_sample(s - t, x) * _adams_bashforth(history)
        history = [_mean_slope(field, x_s, s, a), *history[: max_order - 1]]
        return x_s + _per_sample(c * (t_next - s), x) * _adams_bashforth(history), history
    if base == "dpmpp_2m":
        denoised = x - _per_sample(t, x) * d
        x_s = _dpmpp_substep(x, t, _per_sample(s, x), denoised, history)
        denoised_s = x_s - _per_sample(s, x) * _mean_slope(field, x_s, s, a)
        step = [denoised, _per_sample((t / s).log(), x)]
        x_next = _dpmpp_substep(x_s, _per_sample(s, x), t_next, denoised_s, step)
        return x_s + _per_sample(c, x) * (x_next - x_s), [denoised_s, _per_sample((s / t_next).log(), x)]
    x_s = x + _per_sample(s - t, x) * d
    d_s = _mean_slope(field, x_s, s, a)
    if base == "euler":
        return x_s + _per_sample(c * (t_next - s), x) * d_s, history
    weight = _per_sample(1 / (2 * r), x)
    return x + _per_sample(c * (t_next - t), x) * (weight * d_s + (1 - weight) * d), history


def amed_plugin(
    field: Velocity,
    x: Tensor,
    timesteps: Tensor,
    predictor: Predictor,
    base: str = "ipndm",
    afs: bool = True,
    max_order: int = 4,
    callback: Callback = None,
    afs_mean: Tensor | None = None,
    afs_var: Tensor | float | None = None,
) -> Tensor:
    """AMED-Plugin (docs/amed.md §4): the predicted s_n inserted into a base solver, 2 evaluations an interval.

    euler: x_{n+1} = x_s + c (t_{n+1} - s) d_s, continuing from x_s (not from x_n as AMED-Solver does);
    dpm_solver_2: x_{n+1} = x_n + c h (d_s / 2r + (1 - 1/2r) d_n);
    ipndm: both sub-steps t_n -> s -> t_{n+1} are Adams-Bashforth steps on the history of slopes at every
    t and s point (equal-step weights, order ramping up to max_order), c scaling the second;
    dpmpp_2m: s_n is one more node of DPM-Solver++(2M) (data prediction), c scaling the second increment.
    `afs_mean` and `afs_var`: the AFS slope is the exact one of data N(afs_mean, afs_var), as in amed.
    """
    if base not in PLUGIN_BASES:
        raise SamplerError(f"amed_plugin base {base!r} is not one of: {', '.join(PLUGIN_BASES)}")
    if max_order not in (1, 2, 3, 4):
        raise SamplerError(f"amed_plugin max_order must be 1, 2, 3 or 4, got {max_order}")
    timesteps = _checked(timesteps, x, "amed_plugin")
    _afs_statistics(afs_mean, afs_var)
    history: list[Tensor] = []
    for i, (t, t_next) in enumerate(zip(timesteps[:-1], timesteps[1:], strict=True)):
        x, history = amed_plugin_step(
            field, x, t, t_next, predictor, history, base, afs and i == 0, max_order, i, callback, afs_mean, afs_var
        )
    return x
