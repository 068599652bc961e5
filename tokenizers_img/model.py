"""The image tokenizer: diffusers Encoder -> quantizer -> diffusers Decoder, images in [-1, 1] <-> integer tokens."""

import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import Decoder, Encoder
from torch import Tensor, nn

from tokenizers_img.fsq import FSQ
from tokenizers_img.precision import at_least_float32
from tokenizers_img.vq import VectorQuantizer

QUANTIZERS = {"fsq": FSQ, "vq": VectorQuantizer}
LOSSES = {"l1": F.l1_loss, "l2": F.mse_loss}


def build_quantizer(latent_dim: int, kind: str, **options) -> nn.Module:
    """An FSQ (options: levels, ...) or VectorQuantizer (options: codebook_size, ...) acting on latent_dim channels."""
    if kind not in QUANTIZERS:
        raise ValueError(f"unknown quantizer kind {kind!r}; choose one of: {', '.join(QUANTIZERS)}")
    return QUANTIZERS[kind](dim=latent_dim, **options)


class Tokenizer(ModelMixin, ConfigMixin):
    """Encoder (downsampling 2^(len(channels) - 1)) -> quantizer on latent_dim channels -> decoder.

    A diffusers model: `save_pretrained(folder)` writes config.json and safetensors weights, which
    `Tokenizer.from_pretrained(folder)` loads (also from the Hub), and `Tokenizer.from_config(config)` rebuilds it.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        channels: tuple[int, ...] = (32, 64, 64),
        layers_per_block: int = 1,
        latent_dim: int = 4,
        norm_groups: int = 8,
        mid_attention: bool = False,
        quantizer_config: dict | None = None,
        loss: str = "l1",
    ):
        super().__init__()
        quantizer_config = dict(quantizer_config or {"kind": "fsq", "levels": [8, 5, 5, 5]})
        self.register_to_config(quantizer_config=quantizer_config)  # the quantizer in config.json, default or not
        if loss not in LOSSES:
            raise ValueError(f"unknown reconstruction loss {loss!r}; choose one of: {', '.join(LOSSES)}")
        blocks = len(channels)
        self.encoder = Encoder(
            in_channels=in_channels,
            out_channels=latent_dim,
            down_block_types=("DownEncoderBlock2D",) * blocks,
            block_out_channels=tuple(channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_groups,
            double_z=False,
            mid_block_add_attention=mid_attention,
        )
        self.quantizer = build_quantizer(latent_dim, **quantizer_config)
        self.decoder = Decoder(
            in_channels=latent_dim,
            out_channels=in_channels,
            up_block_types=("UpDecoderBlock2D",) * blocks,
            block_out_channels=tuple(channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_groups,
            mid_block_add_attention=mid_attention,
        )
        self.reconstruction_loss = LOSSES[loss]

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.config.channels) - 1)

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def encode(self, images: Tensor) -> Tensor:
        """Images (B, C, H, W) -> token indices (B, H/f, W/f)."""
        _, indices, _ = self.quantizer(self.encoder(images))
        return indices

    def decode(self, indices: Tensor) -> Tensor:
        """Token indices (B, h, w) -> images (B, C, h f, w f)."""
        latents = self.quantizer.indices_to_latents(indices)
        return self.decoder(latents.movedim(-1, 1))

    def forward(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """(reconstruction, losses): `reconstruction` (L1 or L2), `quantizer` (aux), `total` (their sum)."""
        quantized, _, aux_loss = self.quantizer(self.encoder(images))
        reconstruction = self.decoder(quantized)
        reconstruction_loss = self.reconstruction_loss(at_least_float32(reconstruction), at_least_float32(images))
        losses = {"reconstruction": reconstruction_loss, "quantizer": aux_loss, "total": reconstruction_loss + aux_loss}
        return reconstruction, losses
