"""A tiny diffusers DDPM folder (unet/ + scheduler/) for tests that load a model from disk."""

from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel


def save_tiny_ddpm(folder: Path) -> Path:
    """An 8x8 one-channel UNet2DModel (seed 0) and a 1000-step DDPM scheduler saved in `folder`."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    unet.save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    return folder
