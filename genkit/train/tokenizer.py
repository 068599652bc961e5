"""Training and evaluating image tokenizers (FSQ or VQ inside a diffusers autoencoder) through the shared loop."""

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torchvision.utils import save_image

from genkit.checkpoint import load_weights, save_weights, write_json
from genkit.config import check_choice, config_dict, load_config, ranged, register_task
from genkit.data import DataConfig, build_dataset, image_channels, validation_samples
from genkit.errors import GenkitError
from genkit.metrics import psnr
from genkit.tracking import image_grid
from genkit.train.loop import Loop, OptimizerConfig, TrainConfig
from tokenizers_img import codebook_usage
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
class TokenizerRunConfig:
    """A tokenizer training run: `runs/<name>/` holds its config, checkpoints, metrics, grids and model."""

    task: str = "tokenizer"
    name: str = "tokenizer"
    output_dir: str = "runs"
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
            quantizer=config.quantizer.options(),
            loss=config.loss,
        )
    except ValueError as error:
        raise GenkitError(f"bad model config: {error}") from None


def save_tokenizer(tokenizer: Tokenizer, folder: Path) -> None:
    """safetensors weights + config.json: a folder another user can load with `load_tokenizer`."""
    save_weights(folder, tokenizer.state_dict(), {"kind": "tokenizer", **tokenizer.config})


def load_tokenizer(folder: Path) -> Tokenizer:
    """The tokenizer saved in `folder` (a run's `model/` folder), in eval mode."""
    state, config = load_weights(folder)
    if config.pop("kind", None) != "tokenizer":
        raise GenkitError(f"{folder} does not hold a tokenizer")
    tokenizer = Tokenizer(**config)
    tokenizer.load_state_dict(state)
    return tokenizer.eval()


@torch.no_grad()
def evaluate_tokenizer(tokenizer: Tokenizer, images: Tensor) -> tuple[dict[str, float], Tensor]:
    """PSNR of decode(encode(x)), codebook usage and perplexity, images/s; and the reconstructions."""
    start = time.perf_counter()
    indices = tokenizer.encode(images)
    reconstruction = tokenizer.decode(indices).clamp(-1, 1)
    seconds = time.perf_counter() - start
    usage = codebook_usage(indices, tokenizer.codebook_size)
    metrics = {
        "psnr": psnr(reconstruction, images),
        "codebook_usage": usage.fraction_used,
        "perplexity": usage.perplexity,
        "images_per_second_eval": len(images) / seconds,
    }
    return metrics, reconstruction


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

    def train_step(self, batch: Tensor, loop: Loop) -> dict[str, Tensor]:
        _, losses = self.models["tokenizer"](batch)
        loop.update("tokenizer", losses["total"])
        return losses

    def evaluate(self, loop: Loop, step: int) -> dict[str, float]:
        tokenizer = loop.unwrap("tokenizer")
        tokenizer.eval()
        images = loop.to_device(self.val_images)
        metrics, reconstruction = evaluate_tokenizer(tokenizer, images)
        tokenizer.train()
        # Originals and reconstructions in alternating rows of up to eight.
        width = min(8, len(images))
        rows = min(4, len(images) // width)
        shown = torch.stack([images[: rows * width], reconstruction[: rows * width]])
        loop.log.log_images(
            "reconstruction", shown.unflatten(1, (rows, width)).transpose(0, 1).flatten(0, 2), step, width
        )
        return metrics

    def export(self, loop: Loop, folder: Path) -> None:
        save_tokenizer(loop.unwrap("tokenizer"), folder)


def run_dir(config: TokenizerRunConfig) -> Path:
    return Path(config.output_dir) / config.name


def train(config: TokenizerRunConfig) -> dict[str, float]:
    """Train a tokenizer as `config` says; returns the last evaluation's metrics."""
    loop = Loop(config.train, run_dir(config), config_dict(config))
    dataset = build_dataset(config.data, "train")
    trainer = TokenizerTrainer(config, image_channels(config.data), validation_samples(config.data, config.eval_images))
    return loop.run(trainer, dataset)


def evaluate_run(folder: Path, count: int | None = None) -> str:
    """Trained vs untrained tokenizer of a run on its validation images, as a printed table; also eval.json."""
    config = load_config(folder / "config.yaml")
    if not isinstance(config, TokenizerRunConfig):
        raise GenkitError(f"{folder} is not a tokenizer run")
    images = validation_samples(config.data, config.eval_images if count is None else count)
    torch.manual_seed(config.train.seed)
    untrained = build_tokenizer(config.model, image_channels(config.data)).eval()
    rows = {"untrained": evaluate_tokenizer(untrained, images)[0], "trained": None}
    trained = load_tokenizer(folder / "model")
    rows["trained"], reconstruction = evaluate_tokenizer(trained, images)
    grid = folder / "grids" / "eval_reconstruction.png"
    grid.parent.mkdir(parents=True, exist_ok=True)
    save_image(image_grid(torch.cat([images[:16], reconstruction[:16]])).float() / 255, grid)
    write_json(folder / "eval.json", {"images": len(images), "codebook_size": trained.codebook_size, **rows})
    lines = [f"{'model':<10}{'PSNR dB':>9}{'usage':>8}{'perplexity':>12}{'images/s':>10}"]
    for name, m in rows.items():
        lines.append(
            f"{name:<10}{m['psnr']:>9.2f}{m['codebook_usage']:>8.1%}{m['perplexity']:>12.1f}"
            f"{m['images_per_second_eval']:>10.0f}"
        )
    wandb_runs = sorted((folder / "wandb").glob("offline-run-*")) if (folder / "wandb").is_dir() else []
    lines += [
        f"{len(images)} validation images of {config.data.source}, codebook size {trained.codebook_size}",
        f"reconstructions: {grid}",
        f"W&B offline run: {wandb_runs[-1] if wandb_runs else 'none (train.tracker was not wandb)'}",
    ]
    return "\n".join(lines)
