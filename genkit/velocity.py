"""The velocity-field interface every sampler, trainer and metric shares, and adapters into EDM form.

EDM form: time is sigma, x = x_data + sigma * noise, dx/dsigma = (x - D(x, sigma)) / sigma.
Rectified form: x_t = t x1 + (1 - t) x0 with noise at t = 0, dx/dt = E[x1 - x0 | x_t].
"""

from collections.abc import Callable

import torch
from torch import Tensor

from genkit.errors import GenkitError
from genkit.paths import broadcast_time
from samplers.velocity import Velocity, pooled_features, velocity_and_bottleneck


def with_bottleneck(unet: torch.nn.Module, forward: Callable[[], Tensor]) -> tuple[Tensor, Tensor]:
    """forward()'s output and the 64 pooled features of a diffusers UNet2DModel's mid_block output during it."""
    if getattr(unet, "mid_block", None) is None:
        raise GenkitError("bottleneck features need a U-Net with a middle block (diffusers UNet2DModel.mid_block)")
    captured = []
    handle = unet.mid_block.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        output = forward()
    finally:
        handle.remove()
    return output, pooled_features(captured[0])


class DenoiserVelocity:
    """EDM velocity of a denoiser D(x, sigma): dx/dsigma = (x - D(x, sigma)) / sigma."""

    def __init__(self, denoiser: Callable[[Tensor, Tensor], Tensor]):
        self.denoiser = denoiser

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        return (x - self.denoiser(x, sigma)) / broadcast_time(sigma, x)


class RectifiedAsEDM:
    """A rectified-flow velocity v(x_t, t) in EDM form: x~ = x_t / t, sigma = (1 - t) / t.

    By the chain rule dx~/dsigma = (v / t - x_t / t^2) / (-1 / t^2) = t (x~ - v(t x~, t)), t = 1 / (1 + sigma).
    """

    def __init__(self, field: Velocity):
        self.field = field

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        t = 1 / (1 + sigma)
        t_x = broadcast_time(t, x)
        return t_x * (x - self.field(t_x * x, t))

    def velocity_and_bottleneck(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """The EDM velocity and the wrapped field's bottleneck features (AMED predictors may read them)."""
        t = 1 / (1 + sigma)
        t_x = broadcast_time(t, x)
        velocity, features = velocity_and_bottleneck(self.field, t_x * x, t)
        return t_x * (x - velocity), features


class GradientVelocity:
    """The gradient of a potential as a field: v(x, t) = grad_x potential(x), time ignored."""

    def __init__(self, potential: Callable[[Tensor], Tensor]):
        self.potential = potential

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.potential(x).sum(), x)
        return grad


class DiffusersVelocity:
    """A diffusers U-Net with its DDPM-family scheduler as an EDM velocity, conditional when the U-Net is.

    sigma = sqrt((1 - alpha_bar) / alpha_bar) over the scheduler's table; the network sees the VP input
    x / sqrt(1 + sigma^2) at the fractional timestep found by linear interpolation of log sigma, and its
    epsilon prediction is the EDM velocity. Sigmas beyond the table's range use its end timesteps.

    The condition of `__call__(x, sigma, condition)` is what the U-Net takes: class labels (long [B]) for a
    class-conditional UNet2DModel (config `num_class_embeds`), embeddings (float [B, L, D]) for a
    UNet2DConditionModel (config `cross_attention_dim`), None for an unconditional UNet2DModel.
    """

    PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

    def __init__(self, unet: torch.nn.Module, scheduler):
        self.unet = unet
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type not in self.PREDICTION_TYPES:
            raise GenkitError(
                f"scheduler prediction_type {self.prediction_type!r} is not supported; "
                f"use one of {', '.join(self.PREDICTION_TYPES)}"
            )
        alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)
        self.log_sigmas = 0.5 * ((1 - alphas_cumprod) / alphas_cumprod).log()
        # Read off the config rather than the class, so that this module needs no diffusers import.
        config = getattr(unet, "config", {})
        self.condition_argument: str | None = None
        if config.get("cross_attention_dim") is not None:
            self.condition_argument = "encoder_hidden_states"
        elif config.get("num_class_embeds"):
            self.condition_argument = "class_labels"

    @property
    def sigma_min(self) -> float:
        return self.log_sigmas[0].exp().item()

    @property
    def sigma_max(self) -> float:
        return self.log_sigmas[-1].exp().item()

    def sigma_to_timestep(self, sigma: Tensor) -> Tensor:
        """Fractional timestep whose interpolated log sigma equals log(sigma), clamped to the table."""
        log_sigmas = self.log_sigmas.to(sigma.device, torch.float64)
        log_sigma = sigma.to(torch.float64).log()
        high = torch.searchsorted(log_sigmas, log_sigma).clamp(1, len(log_sigmas) - 1)
        low = high - 1
        weight = ((log_sigma - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low])).clamp(0, 1)
        return (low + weight).to(sigma.dtype)

    def timestep_to_sigma(self, timestep: Tensor) -> Tensor:
        """sigma at a fractional timestep, by linear interpolation of log sigma."""
        log_sigmas = self.log_sigmas.to(timestep.device, torch.float64)
        timestep = timestep.to(torch.float64)
        low = timestep.floor().long().clamp(0, len(log_sigmas) - 2)
        weight = timestep - low
        return ((1 - weight) * log_sigmas[low] + weight * log_sigmas[low + 1]).exp()

    def velocity_and_bottleneck(
        self, x: Tensor, sigma: Tensor, condition: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The velocity and the U-Net's middle-block output pooled to 64 values (AMED predictors may read them)."""
        return with_bottleneck(self.unet, lambda: self(x, sigma, condition))

    def _condition(self, condition: Tensor | None) -> dict[str, Tensor]:
        """The U-Net's keyword argument for `condition`; one error when it is missing or not taken."""
        if (condition is None) != (self.condition_argument is None):
            raise GenkitError(
                f"this U-Net is conditional (it takes {self.condition_argument}): give it a condition (Field.bind)"
                if condition is None
                else "this U-Net is unconditional: call it without a condition"
            )
        if condition is None:
            return {}
        if self.condition_argument == "class_labels":
            return {"class_labels": condition.long()}
        return {"encoder_hidden_states": condition.to(self.unet.dtype)}

    def __call__(self, x: Tensor, sigma: Tensor, condition: Tensor | None = None) -> Tensor:
        sigma_x = broadcast_time(sigma, x)
        c_in = 1 / (1 + sigma_x**2).sqrt()
        x_vp = c_in * x
        timestep = self.sigma_to_timestep(sigma)
        output = self.unet(x_vp.to(self.unet.dtype), timestep, **self._condition(condition)).sample.to(x.dtype)
        if self.prediction_type == "epsilon":
            return output
        if self.prediction_type == "v_prediction":
            # v = sqrt(a) eps - sqrt(1 - a) x0 and x_vp = sqrt(a) x0 + sqrt(1 - a) eps, sqrt(a) = c_in.
            return c_in * output + sigma_x * c_in * x_vp
        return (x - output) / sigma_x
