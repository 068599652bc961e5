"""What a solver asks of a velocity field: `field(x, t) -> dx/dt` with `t` of shape [batch].

A field may also offer `velocity_and_bottleneck(x, t) -> (velocity, features)`: the same velocity and 64 numbers
a sample summarising its network's bottleneck, which AMED predictors built with features="bottleneck" read
(docs/amed.md). genkit's U-Net adapters offer it.
"""

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from samplers.errors import SamplerError

Velocity = Callable[[Tensor, Tensor], Tensor]
FEATURE_SIZE = 64


def pooled_features(activation: Tensor) -> Tensor:
    """A [B, C, H, W] activation as 64 numbers per sample: channel mean, then 8x8 adaptive average pool."""
    return F.adaptive_avg_pool2d(activation.mean(1, keepdim=True).float(), 8).flatten(1)


def velocity_and_bottleneck(field: Velocity, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """field(x, t) and its 64 bottleneck features, from the field's `velocity_and_bottleneck` method."""
    method = getattr(field, "velocity_and_bottleneck", None)
    if method is None:
        raise SamplerError(
            f"this AMED predictor reads bottleneck features, but the field ({type(field).__name__}) has no "
            "velocity_and_bottleneck(x, t) method; use a predictor distilled with features='slope'"
        )
    return method(x, t)
