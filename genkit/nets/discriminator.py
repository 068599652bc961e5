"""The patch discriminator of pix2pix (Isola et al. 2017) as taming's VQGAN uses it: a logit per overlapping patch.

Strided 4x4 convolutions halve the image `layers` times (the first without normalisation), one stride-1 convolution
follows, and a last 4x4 convolution gives one channel; with layers=3 each logit sees a 70x70 patch. GroupNorm
stands where pix2pix has BatchNorm, whose batch statistics would make the logits depend on how a batch is split
over processes.
"""

import math

from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn

# Channel widths stop doubling at this multiple of `width` (pix2pix's nf_mult cap).
MAX_WIDTH_MULTIPLE = 8


def patch_grid_side(image_size: int, layers: int) -> int:
    """The side of the logit grid for square images: image_size / 2^layers, less 1 for each stride-1 convolution."""
    return image_size // 2**layers - 2


class PatchDiscriminator(ModelMixin, ConfigMixin):
    """D(x) -> logits [B, 1, h, w] for images [B, in_channels, H, W] in [-1, 1]."""

    @register_to_config
    def __init__(self, in_channels: int = 3, width: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        channels = width
        for layer in range(1, layers + 1):
            out = width * min(2**layer, MAX_WIDTH_MULTIPLE)
            stride = 2 if layer < layers else 1
            blocks += [
                nn.Conv2d(channels, out, 4, stride=stride, padding=1, bias=False),
                nn.GroupNorm(math.gcd(32, out), out),
                nn.LeakyReLU(0.2),
            ]
            channels = out
        blocks.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*blocks)
        for module in self.modules():
            # pix2pix's initialisation: N(0, 0.02) convolutions, N(1, 0.02) norm scales.
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.GroupNorm):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)
