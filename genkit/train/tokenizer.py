"""Training image tokenizers (FSQ or VQ inside a diffusers autoencoder) through the shared loop.

The loss is the reconstruction's (L1 or L2) plus the quantizer's, and optionally a perceptual distance and, from
`adversarial.start_step` on, a patch discriminator's generator loss scaled by VQGAN's adaptive weight; the
discriminator is a second model with its own optimizer (docs/tokenizer_losses.md).
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import PartialState
from torch import Tensor

from genkit.config import RunConfig, check_choice, config_dict, ranged, register_task
from genkit.data import DataConfig, build_dataset, image_channels, validation_samples
from genkit.errors import GenkitError
from genkit.files import save_pretrained
from genkit.nets.discriminator import PatchDiscriminator, patch_grid_side
from genkit.perceptual import LPIPS_BACKBONES, NETWORKS, load_perceptual
from genkit.tokenizer_eval import BATCH_SIZE, evaluate_tokenizer
from genkit.train.adversarial import ADVERSARIAL_LOSSES, adaptive_weight, discriminator_loss, generator_loss
from genkit.train.config import OptimizerConfig, TrainConfig
from genkit.train.gan import gradient_penalty
from genkit.train.loop import Loop, StepContext
from tokenizers_img.model import LOSSES, QUANTIZERS, Tokenizer
from tokenizers_img.precision import at_least_float32


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


# The reconstruction grid logged at each evaluation: rows of originals and reconstructions, this many a row.
GRID_ROWS, GRID_WIDTH = 4, 8


@dataclass
class PerceptualConfig:
    """weight x the perceptual distance of reconstruction and image; weight 0 leaves it out.

    network: lpips (backbone vgg or alex, torchvision's weights from its cache or weights_path) or a genkit feature
    extractor (digits, inception, torchscript with weights_path the TorchScript file).
    """

    weight: float = ranged(0.0, minimum=0)
    network: str = "lpips"
    backbone: str = "vgg"
    weights_path: str | None = None

    def __post_init__(self):
        check_choice("perceptual.network", self.network, NETWORKS)
        check_choice("perceptual.backbone", self.backbone, LPIPS_BACKBONES)
        if self.weight > 0 and self.network == "torchscript" and not self.weights_path:
            raise GenkitError("perceptual.network=torchscript needs perceptual.weights_path, the TorchScript file")


@dataclass
class AdversarialConfig:
    """weight x lambda x the generator loss of a patch discriminator, from loop step start_step on; weight 0: none.

    lambda is VQGAN's adaptive weight (at most max_adaptive_weight), or 1 with adaptive=false. The discriminator
    (layers, width) trains on the same steps with its own optimizer; penalty_weight x E ||grad_x D(x)||^2 on real
    images is the R1 penalty (penalty_weight = gamma / 2).
    """

    weight: float = ranged(0.0, minimum=0)
    loss: str = "hinge"
    start_step: int = ranged(0, minimum=0)
    adaptive: bool = True
    max_adaptive_weight: float = ranged(1e4, above=0)
    penalty_weight: float = ranged(0.0, minimum=0)
    layers: int = ranged(3, minimum=1)
    width: int = ranged(64, minimum=1)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-4, betas=[0.5, 0.9]))

    def __post_init__(self):
        check_choice("adversarial.loss", self.loss, ADVERSARIAL_LOSSES)


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
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        image_channels(self.data)  # a tokenizer needs images, not points
        layers = self.adversarial.layers
        if self.adversarial.weight > 0 and patch_grid_side(self.data.image_size, layers) < 1:
            raise GenkitError(
                f"config key adversarial.layers={layers} leaves no patch of a {self.data.image_size}px image "
                f"(the discriminator halves it {layers} times, then loses 2 pixels); lower adversarial.layers"
            )
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


class TokenizerTrainer:
    """The tokenizer (and the discriminator when adversarial.weight > 0), each with its optimizer."""

    ema_model = "tokenizer"

    def __init__(self, config: TokenizerRunConfig, in_channels: int, val_images: Tensor):
        tokenizer = build_tokenizer(config.model, in_channels)
        self.models = {"tokenizer": tokenizer}
        self.optimizers = {"tokenizer": config.optimizer.build(tokenizer.parameters())}
        self.perceptual, self.adversarial = config.perceptual, config.adversarial
        self.grad_accum_steps = config.train.grad_accum_steps
        self.perceptual_distance = None
        if self.perceptual.weight > 0:
            self.perceptual_distance = load_perceptual(
                self.perceptual.network, self.perceptual.backbone, self.perceptual.weights_path
            )
        if self.adversarial.weight > 0:
            discriminator = PatchDiscriminator(in_channels, self.adversarial.width, self.adversarial.layers)
            self.models["discriminator"] = discriminator
            self.optimizers["discriminator"] = self.adversarial.optimizer.build(discriminator.parameters())
        self.val_images = val_images

    def optimizer_steps(self, steps: int) -> dict[str, int]:
        """The tokenizer steps every loop step; the discriminator from start_step on."""
        return {"tokenizer": steps, "discriminator": max(steps - self.adversarial.start_step, 0)}

    def train_step(self, batch: Tensor, context: StepContext) -> dict[str, Tensor]:
        reconstruction, losses = self.models["tokenizer"](batch)
        fitted = losses["reconstruction"]  # what the adaptive weight balances the adversarial term against
        if self.perceptual_distance is not None:
            with context.autocast():
                distance = self.perceptual_distance.to(context.device)(reconstruction, batch)
            losses["perceptual"] = at_least_float32(distance).mean()
            fitted = fitted + self.perceptual.weight * losses["perceptual"]
        total = fitted + losses["quantizer"]
        adversarial = "discriminator" in self.models
        adversarial = adversarial and context.position // self.grad_accum_steps >= self.adversarial.start_step
        if adversarial:
            discriminator = context.unwrap("discriminator")
            discriminator.requires_grad_(False)  # the generator loss must not leave gradients on the discriminator
            with context.autocast():
                losses["generator"] = generator_loss(
                    at_least_float32(discriminator(reconstruction)), self.adversarial.loss
                )
            discriminator.requires_grad_(True)
            weight = torch.ones((), device=context.device)
            if self.adversarial.adaptive:
                last_layer = context.unwrap("tokenizer").decoder.conv_out.weight
                weight = adaptive_weight(fitted, losses["generator"], last_layer, self.adversarial.max_adaptive_weight)
            losses["adaptive_weight"] = weight
            total = total + self.adversarial.weight * weight * losses["generator"]
        losses["total"] = total
        context.update("tokenizer", total)
        if adversarial:
            losses |= self.discriminator_step(batch, reconstruction.detach(), context)
        return losses

    def discriminator_step(self, real: Tensor, fake: Tensor, context: StepContext) -> dict[str, Tensor]:
        """One discriminator update on real images and detached reconstructions; its loss terms."""
        with context.autocast():
            # One forward for both halves: GroupNorm is per image, so this equals two separate calls.
            logits = at_least_float32(self.models["discriminator"](torch.cat([real, fake])))
        logits_real, logits_fake = logits.chunk(2)
        losses = {"discriminator": discriminator_loss(logits_real, logits_fake, self.adversarial.loss)}
        losses |= {"logits_real": logits_real.detach().mean(), "logits_fake": logits_fake.detach().mean()}
        loss = losses["discriminator"]
        if self.adversarial.penalty_weight > 0:
            losses["penalty"] = gradient_penalty(context.unwrap("discriminator"), real, centre=0.0)
            loss = loss + self.adversarial.penalty_weight * losses["penalty"]
        context.update("discriminator", loss)
        return losses

    def evaluate(self, context: StepContext, step: int) -> dict[str, float]:
        """PSNR, SSIM, LPIPS (when it is the perceptual loss), usage and perplexity on the val images, split over the
        processes; a grid of originals and reconstructions."""
        tokenizer = context.unwrap("tokenizer").eval()
        lpips = self.perceptual_distance if self.perceptual.network == "lpips" else None
        shown = GRID_ROWS * GRID_WIDTH
        metrics, _, reconstruction = evaluate_tokenizer(
            tokenizer, self.val_images, None, lpips and lpips.to(context.device), BATCH_SIZE, PartialState(), shown
        )
        tokenizer.train()
        del metrics["images_per_second"]  # the loop logs training throughput under this name
        # Originals and reconstructions in alternating rows of up to eight.
        images = self.val_images[: len(reconstruction)].to(reconstruction.device, reconstruction.dtype)
        width = min(GRID_WIDTH, len(images))
        rows = min(GRID_ROWS, len(images) // width)
        pairs = torch.stack([images[: rows * width], reconstruction[: rows * width]])
        context.log_images(
            "reconstruction", pairs.unflatten(1, (rows, width)).transpose(0, 1).flatten(0, 2), step, width
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
