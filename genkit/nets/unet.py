"""A rectified-flow velocity for images: a diffusers UNet2DModel fed 999 t, as the RectifiedFlow reference does.

The network is a plain UNet2DModel: `save_pretrained` writes its diffusers folder, which diffusers loads without
genkit, and `UNetVelocity.from_pretrained` wraps such a folder again. A class-conditional velocity v(x, t, c) has
K + 1 class embeddings (diffusers' `num_class_embeds`): classes 0..K-1 and the null class K, which label dropout
trains and classifier-free guidance's unconditional branch reads (genkit/guidance.py).
"""

from pathlib import Path

import torch
from diffusers import UNet2DModel
from torch import Tensor, nn

from genkit.errors import GenkitError
from genkit.nets.mlp import TIME_SCALE
from genkit.velocity import with_bottleneck


class UNetVelocity(nn.Module):
    """v(x, t, c) = unet(x, 999 t, class_labels=c).sample for x [B, C, H, W], t [B] in [0, 1] and, for a
    class-conditional net, classes c [B] (None: the null class)."""

    def __init__(self, unet: UNet2DModel):
        super().__init__()
        self.unet = unet

    @classmethod
    def build(
        cls,
        channels: int,
        image_size: int,
        block_channels: tuple[int, ...] | list[int] = (32, 64),
        layers_per_block: int = 1,
        norm_groups: int = 8,
        attention: bool = False,
        num_classes: int = 0,
    ) -> "UNetVelocity":
        """An untrained U-Net with one down/up block per entry of block_channels, halving the resolution between them.

        attention=True makes the lowest-resolution blocks AttnDownBlock2D/AttnUpBlock2D and gives the middle block
        (also at that resolution) its self-attention. Parameters of the defaults: 635,427 for channels=3 (702,499 with
        attention), 634,273 for 1. num_classes=K > 0 adds K + 1 class embeddings (the last is the null class).
        """
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
        lowest_down, lowest_up = ("AttnDownBlock2D", "AttnUpBlock2D") if attention else ("DownBlock2D", "UpBlock2D")
        return cls(
            UNet2DModel(
                sample_size=image_size,
                in_channels=channels,
                out_channels=channels,
                block_out_channels=tuple(block_channels),
                layers_per_block=layers_per_block,
                norm_num_groups=norm_groups,
                down_block_types=("DownBlock2D",) * downsamples + (lowest_down,),
                up_block_types=(lowest_up,) + ("UpBlock2D",) * downsamples,
                add_attention=attention,
                num_class_embeds=num_classes + 1 if num_classes else None,
            )
        )

    @property
    def num_classes(self) -> int:
        """K for a class-conditional net (classes 0..K-1, null class K), 0 for an unconditional one."""
        embeddings = self.unet.config.num_class_embeds
        return embeddings - 1 if embeddings else 0

    @classmethod
    def from_pretrained(cls, folder: str | Path, torch_dtype: torch.dtype | None = None) -> "UNetVelocity":
        """The U-Net of a diffusers UNet2DModel folder (or Hub id) as a velocity, in eval mode."""
        return cls(UNet2DModel.from_pretrained(folder, torch_dtype=torch_dtype)).eval()

    def save_pretrained(self, folder: str | Path) -> None:
        """The U-Net's diffusers folder: config.json and safetensors weights."""
        self.unet.save_pretrained(folder)

    def forward(self, x: Tensor, t: Tensor, condition: Tensor | None = None) -> Tensor:
        if not self.num_classes:
            if condition is not None:
                raise GenkitError("this U-Net is unconditional: it takes no class")
            return self.unet(x, TIME_SCALE * t).sample
        if condition is None:
            condition = torch.full((len(x),), self.num_classes, dtype=torch.long, device=x.device)
        return self.unet(x, TIME_SCALE * t, class_labels=condition).sample

    def velocity_and_bottleneck(self, x: Tensor, t: Tensor, condition: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """v(x, t, c) and the middle block's output (lowest resolution) as 64 pooled values, for AMED predictors."""
        return with_bottleneck(self.unet, lambda: self(x, t, condition))
