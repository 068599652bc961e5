"""A time-conditioned MLP velocity v(x, t) for flat, low-dimensional data such as the 2-D toys."""

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import get_timestep_embedding
from torch import Tensor, nn

from genkit.errors import GenkitError

# The network sees 999 t, the timestep scale of the RectifiedFlow reference and of UNetVelocity: over t in [0, 1]
# the sinusoid frequencies of get_timestep_embedding then range from ~160 periods down to 1/50 of one.
TIME_SCALE = 999


class TimeMLP(ModelMixin, ConfigMixin):
    """v(x, t) = MLP([x, emb(999 t)]): `depth` SiLU layers of width `hidden`, then a linear map back to `dim`.

    x is [B, dim] or [B, *shape] with prod(shape) = dim (flattened, and the output reshaped back); t is [B] in [0, 1].
    """

    @register_to_config
    def __init__(self, dim: int, hidden: int = 256, depth: int = 3, time_features: int = 64):
        super().__init__()
        if depth < 1:
            raise GenkitError(f"TimeMLP depth is its number of hidden layers and must be at least 1, got {depth}")
        layers = [nn.Linear(dim + time_features, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, dim))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.config.dim:
            raise GenkitError(
                f"TimeMLP(dim={self.config.dim}) got samples of shape {tuple(x.shape[1:])}; "
                "build it with dim equal to the number of values in one sample"
            )
        # flip_sin_to_cos and no frequency shift: the embedding UNet2DModel uses by default.
        embedding = get_timestep_embedding(
            TIME_SCALE * t, self.config.time_features, flip_sin_to_cos=True, downscale_freq_shift=0
        )
        return self.net(torch.cat([flat, embedding.to(flat.dtype)], dim=1)).reshape(x.shape)
