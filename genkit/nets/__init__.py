"""Velocity networks v(x, t), built by name from a config: `build_velocity_net("unet", channels=3, image_size=32)`."""

import inspect

from torch import nn

from genkit.errors import GenkitError
from genkit.nets.mlp import TimeMLP
from genkit.nets.unet import UNetVelocity

VELOCITY_NETS = {"mlp": TimeMLP, "unet": UNetVelocity.build}

__all__ = ["VELOCITY_NETS", "TimeMLP", "UNetVelocity", "build_velocity_net"]


def build_velocity_net(kind: str, **config) -> nn.Module:
    """VELOCITY_NETS[kind](**config); an unknown kind, an unknown or a missing argument is a GenkitError."""
    if kind not in VELOCITY_NETS:
        raise GenkitError(f"unknown velocity net kind {kind!r}; choose one of {', '.join(VELOCITY_NETS)}")
    build = VELOCITY_NETS[kind]
    parameters = inspect.signature(build).parameters
    unknown = sorted(set(config) - set(parameters))
    if unknown:
        raise GenkitError(
            f"unknown argument(s) {', '.join(unknown)} for velocity net {kind!r}; it takes {', '.join(parameters)}"
        )
    missing = [
        name for name, parameter in parameters.items() if parameter.default is parameter.empty and name not in config
    ]
    if missing:
        raise GenkitError(f"velocity net {kind!r} needs {', '.join(missing)}; add it to the model config")
    return build(**config)
