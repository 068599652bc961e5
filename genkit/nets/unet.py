"""A rectified-flow velocity for images: a diffusers UNet2DModel fed 999 t, as the RectifiedFlow reference does."""

from diffusers import UNet2DModel
from torch import Tensor, nn

from genkit.errors import GenkitError
from genkit.velocity import with_bottleneck

TIME_SCALE = 999


class UNetVelocity(nn.Module):
    """v(x, t) = UNet2DModel(x, 999 t).sample for x [B, C, H, W] and t [B] in [0, 1].

    One down/up block per entry of block_channels, halving the resolution between them; attention=True makes the
    lowest-resolution blocks AttnDownBlock2D/AttnUpBlock2D and gives the middle block (also at that resolution) its
    self-attention. Parameters of the defaults: 635,427 for channels=3 (702,499 with attention), 634,273 for 1.
    `config` holds every constructor argument, so `UNetVelocity(**unet.config)` rebuilds the architecture.
    """

    def __init__(
        self,
        channels: int,
        image_size: int,
        block_channels: tuple[int, ...] | list[int] = (32, 64),
        layers_per_block: int = 1,
        norm_groups: int = 8,
        attention: bool = False,
    ):
        super().__init__()
        downsamples = len(block_channels) - 1
        if image_size % 2**downsamples:
            raise GenkitError(
                f"image_size {image_size} must be divisible by 2^{downsamples}, the U-Net's downsampling with "
                f"{len(block_channels)} blocks; change the image size or the number of block_channels"
            )
        if any(width % norm_groups for width in block_channels):
            raise GenkitError(
                f"every entry of block_channels {list(block_channels)} must be divisible by norm_groups={norm_groups}"
            )
        self.config = {
            "channels": channels,
            "image_size": image_size,
            "block_channels": list(block_channels),
            "layers_per_block": layers_per_block,
            "norm_groups": norm_groups,
            "attention": attention,
        }
        lowest_down, lowest_up = ("AttnDownBlock2D", "AttnUpBlock2D") if attention else ("DownBlock2D", "UpBlock2D")
        self.unet = UNet2DModel(
            sample_size=image_size,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=tuple(block_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_groups,
            down_block_types=("DownBlock2D",) * downsamples + (lowest_down,),
            up_block_types=(lowest_up,) + ("UpBlock2D",) * downsamples,
            add_attention=attention,
        )

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.unet(x, TIME_SCALE * t).sample

    def velocity_and_bottleneck(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """v(x, t) and the middle block's output (lowest resolution) as 64 pooled values, for AMED predictors."""
        return with_bottleneck(self.unet, lambda: self(x, t))
