"""Training image tokenizers (FSQ or VQ inside a diffusers autoencoder) through the shared loop."""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from genkit.checkpoint import save_pretrained
from genkit.config import RunConfig, check_choice, config_dict, ranged, register_task
from genkit.data import DataConfig, build_dataset, image_channels, validation_samples
from genkit.errors import GenkitError
from genkit.metrics import reconstruction_metrics
from genkit.train.config import OptimizerConfig, TrainConfig
from genkit.train.loop import Loop, StepContext
from tokenizers_img.model import LOSSES, QUANTIZERS, Tokenizer


@dataclass
class QuantizerConfig:
    """`fsq` uses levels (and symmetric); `vq` uses codebook_size, beta, ema, decay, cosine, dead_code_threshold."""

    kind: str = "fsq"
    levels: list[int] = ranged(lambda: [8, 5, 5, 5], minimum=2)
    symmetric: bool = False
    codebook_size: int = ranged(1024, minimum=1)
    beta: float = ranged(0.25, minimum=0)
    ema: bool = True
    decay: float = ranged(0.99, minimum=0, below=1)
    cosine: bool = False
    dead_code_threshold: float = ranged(0.0, minimum=0)

    def options(self) -> dict:
        """The constructor options of the chosen quantizer kind."""
        if self.kind == "fsq":
            return {"kind": "fsq", "levels": list(self.levels), "symmetric": self.symmetric}
        keys = ("codebook_size", "beta", "ema", "decay", "cosine", "dead_code_threshold")
        return {"kind": "vq", **{key: getattr(self, key) for key in keys}}

    def __post_init__(self):
        check_choice("model.quantizer.kind", self.kind, tuple(QUANTIZERS))
        if not self.levels or (min(self.levels) < 3 and not self.symmetric):
            raise GenkitError(
                f"config key model.quantizer.levels={self.levels} needs entries of at least 3 (2 only with "
                "model.quantizer.symmetric=true, whose grid includes +-1)"
            )


@dataclass
class TokenizerModelConfig:
    """Autoencoder shape: one resolution per entry of `channels` (downsampling 2^(len - 1))."""

    channels: list[int] = ranged(lambda: [32, 64, 64], minimum=1)
    layers_per_block: int = ranged(1, minimum=1)
    latent_dim: int = ranged(4, minimum=1)
    norm_groups: int = ranged(8, minimum=1)
    mid_attention: bool = False
    loss: str = "l1"
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)

    def __post_init__(self):
        check_choice("model.loss", self.loss, tuple(LOSSES))
        if not self.channels:
            raise GenkitError("config key model.channels is empty; give one width per resolution, e.g. [32, 64, 64]")
        for width in self.channels:
            if width % self.norm_groups:
                raise GenkitError(f"model.channels {self.channels} must all be multiples of model.norm_groups")


@register_task("tokenizer")
@dataclass
class TokenizerRunConfig(RunConfig):
    """A tokenizer training run: `runs/<name>/` holds its config, checkpoints, metrics, grids and model."""

    task: str = "tokenizer"
    name: str = "tokenizer"
    eval_images: int = ranged(64, minimum=1)
    data: DataConfig = field(default_factory=DataConfig)
    model: TokenizerModelConfig = field(default_factory=TokenizerModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        image_channels(self.data)  # a tokenizer needs images, not points
        downsampling = 2 ** (len(self.model.channels) - 1)
        if self.data.image_size % downsampling:
            raise GenkitError(
                f"config key data.image_size={self.data.image_size} must be divisible by {downsampling}, the "
                f"tokenizer's downsampling with {len(self.model.channels)} model.channels; change either"
            )


def build_tokenizer(config: TokenizerModelConfig, in_channels: int) -> Tokenizer:
    """The untrained tokenizer a model config describes."""
    try:
        return Tokenizer(
            in_channels=in_channels,
            channels=tuple(config.channels),
            layers_per_block=config.layers_per_block,
            latent_dim=config.latent_dim,
            norm_groups=config.norm_groups,
            mid_attention=config.mid_attention,
            quantizer_config=config.quantizer.options(),
            loss=config.loss,
        )
    except ValueError as error:
        raise GenkitError(f"bad model config: {error}") from None


@torch.no_grad()
def reconstruct(tokenizer: Tokenizer, images: Tensor) -> tuple[dict[str, float], Tensor]:
    """decode(encode(images)) and its metrics: PSNR, codebook usage and perplexity."""
    indices = tokenizer.encode(images)
    reconstruction = tokenizer.decode(indices).clamp(-1, 1)
    return reconstruction_metrics(images, reconstruction, indices, tokenizer.codebook_size), reconstruction


class TokenizerTrainer:
    """One model, one optimizer, loss = reconstruction + quantizer aux loss."""

    ema_model = "tokenizer"

    def __init__(self, config: TokenizerRunConfig, in_channels: int, val_images: Tensor):
        tokenizer = build_tokenizer(config.model, in_channels)
        self.models = {"tokenizer": tokenizer}
        self.optimizers = {"tokenizer": config.optimizer.build(tokenizer.parameters())}
        self.val_images = val_images

    def optimizer_steps(self, steps: int) -> dict[str, int]:
        return {"tokenizer": steps}

    def train_step(self, batch: Tensor, context: StepContext) -> dict[str, Tensor]:
        _, losses = self.models["tokenizer"](batch)
        context.update("tokenizer", losses["total"])
        return losses

    def evaluate(self, context: StepContext, step: int) -> dict[str, float]:
        tokenizer = context.unwrap("tokenizer")
        tokenizer.eval()
        images = context.to_device(self.val_images)
        metrics, reconstruction = reconstruct(tokenizer, images)
        tokenizer.train()
        # Originals and reconstructions in alternating rows of up to eight.
        width = min(8, len(images))
        rows = min(4, len(images) // width)
        shown = torch.stack([images[: rows * width], reconstruction[: rows * width]])
        context.log_images(
            "reconstruction", shown.unflatten(1, (rows, width)).transpose(0, 1).flatten(0, 2), step, width
        )
        return metrics

    def export(self, context: StepContext, folder: Path) -> None:
        save_pretrained(context.unwrap("tokenizer"), folder)


def train(config: TokenizerRunConfig) -> dict[str, float]:
    """Train a tokenizer as `config` says; returns the last evaluation's metrics."""
    loop = Loop(config.train, config.run_dir, config_dict(config))
    dataset = build_dataset(config.data, "train")
    trainer = TokenizerTrainer(config, image_channels(config.data), validation_samples(config.data, config.eval_images))
    return loop.run(trainer, dataset)
