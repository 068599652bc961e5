"""Rectified-flow training: regress v(x_t, t) on x1 - x0 along x_t = t x1 + (1 - t) x0, through the shared loop.

The coupling (x0, x1) is independent noise and data for a 1-rectified flow, or the (z, Z1(z)) pairs of a
previous flow for ReFlow; `time_sampling=zero` trains only at t = 0, the one-step distillation.

With `flow.conditional` the U-Net also reads each image's class (its data's labels, genkit.data) and, with
`flow.label_dropout` p > 0, the null class in place of it with probability p, which trains the unconditional branch
classifier-free guidance needs (Ho & Salimans 2022). The class shares of the training data go with the model
(`Run.classes`), so its samples draw classes as the data does.

With `flow.tokenizer` (a finished tokenizer run) the flow trains on that tokenizer's normalised latents of the data
(genkit.latents), encoded once and cached; the model keeps the record of its tokenizer (`Run.latents`), through which
its samples are decoded to images. Its evaluation is in latent space; the images it logs are decoded.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from genkit.config import RunConfig, check_choice, config_dict, ranged, register_task
from genkit.data import (
    DataConfig,
    build_dataset,
    data_shape,
    image_channels,
    label_frequencies,
    num_classes,
    validation_samples,
)
from genkit.errors import GenkitError
from genkit.files import save_pretrained, write_json
from genkit.latents import LatentCodec, encoded, latent_dataset, tokenizer_run
from genkit.metrics import sliced_wasserstein, straightness
from genkit.models import load_velocity_model
from genkit.nets import VELOCITY_NETS, build_velocity_net
from genkit.noise import generator as seeded
from genkit.paths import RectifiedPath
from genkit.runs import Run
from genkit.train.config import OptimizerConfig, TrainConfig
from genkit.train.loop import Loop, StepContext
from genkit.train.pairs import PairDataset
from samplers import euler, uniform
from samplers.velocity import Velocity
from tokenizers_img.precision import at_least_float32

TIME_SAMPLING = ("uniform", "logit_normal", "zero")
# The RectifiedFlow reference draws t from U[eps, 1]: the velocity at exactly t = 0 is learned by distillation.
T_EPS = 1e-3


@dataclass
class VelocityNetConfig:
    """`mlp` (hidden, depth) for low-dimensional data, `unet` (block_channels, ...) for images."""

    kind: str = "mlp"
    hidden: int = ranged(256, minimum=1)
    depth: int = ranged(3, minimum=1)
    block_channels: list[int] = ranged(lambda: [32, 64], minimum=1)
    layers_per_block: int = ranged(1, minimum=1)
    norm_groups: int = ranged(8, minimum=1)
    attention: bool = False

    def __post_init__(self):
        check_choice("model.kind", self.kind, tuple(VELOCITY_NETS))

    def check_data(self, data: DataConfig) -> None:
        """A U-Net needs images whose size its downsampling divides, and widths its norm groups divide."""
        if self.kind == "unet":
            image_channels(data)
            self.check_size(data.image_size, "config key data.image_size")

    def check_size(self, size: int, what: str) -> None:
        """`what`, the side of the U-Net's input, must be divisible by its downsampling; widths by its norm groups."""
        downsampling = 2 ** (len(self.block_channels) - 1)
        if not self.block_channels or size % downsampling:
            raise GenkitError(
                f"{what}={size} must be divisible by {downsampling}, the U-Net's downsampling with "
                f"model.block_channels={self.block_channels}; change either"
            )
        if any(width % self.norm_groups for width in self.block_channels):
            raise GenkitError(
                f"config key model.block_channels={self.block_channels} must all be multiples of model.norm_groups"
            )

    def build(self, shape: tuple[int, ...], classes: int = 0) -> nn.Module:
        """The untrained network for data of `shape` (and `classes` > 0 classes with a null one)."""
        if classes and self.kind != "unet":
            raise GenkitError("flow.conditional needs model.kind=unet, whose class embedding reads the labels")
        if self.kind == "mlp":
            return build_velocity_net("mlp", dim=math.prod(shape), hidden=self.hidden, depth=self.depth)
        if len(shape) != 3:
            raise GenkitError(f"model.kind=unet needs image data, got samples of shape {shape}; use model.kind=mlp")
        return build_velocity_net(
            "unet",
            channels=shape[0],
            image_size=shape[-1],
            block_channels=list(self.block_channels),
            layers_per_block=self.layers_per_block,
            norm_groups=self.norm_groups,
            attention=self.attention,
            num_classes=classes,
        )


@dataclass
class FlowConfig:
    """What the flow regresses on: the coupling (fresh noise, or `pairs`), time sampling, initial weights, and
    whether it is class-conditional (with what share of labels dropped to the null class)."""

    time_sampling: str = "uniform"
    pairs: str | None = None
    init_from: str | None = None
    conditional: bool = False
    label_dropout: float = ranged(0.0, minimum=0, maximum=1)
    tokenizer: str | None = None  # a finished tokenizer run: train on its latents of the data

    def __post_init__(self):
        check_choice("flow.time_sampling", self.time_sampling, TIME_SAMPLING)
        if self.label_dropout and not self.conditional:
            raise GenkitError("flow.label_dropout drops class labels; it needs flow.conditional=true")
        if self.tokenizer and self.pairs:
            raise GenkitError("flow.pairs are couplings of images; a flow on a tokenizer's latents trains on data")


@register_task("flow")
@dataclass
class FlowRunConfig(RunConfig):
    """A rectified-flow training run in `runs/<name>/`; its `model/` folder is a velocity model for `genkit sample`."""

    task: str = "flow"
    name: str = "flow"
    eval_samples: int = ranged(512, minimum=1)
    data: DataConfig = field(default_factory=lambda: DataConfig(source="gmm"))
    model: VelocityNetConfig = field(default_factory=VelocityNetConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.flow.tokenizer and self.model.kind != "unet":
            raise GenkitError("flow.tokenizer trains on latents [C, h, w]: it needs model.kind=unet")
        if not self.flow.tokenizer:  # a latent flow's input size is known once its tokenizer is loaded (flow_data)
            self.model.check_data(self.data)


@dataclass
class FlowData:
    """What a flow trains and is evaluated on: the dataset, the shape of an item, the reference samples (with their
    classes, for a conditional flow) and, for a latent flow, the codec that maps its samples to images."""

    dataset: Dataset
    shape: tuple[int, ...]
    reference: Tensor
    labels: Tensor | None
    codec: LatentCodec | None = None


def flow_data(config: FlowRunConfig) -> FlowData:
    """The data of `config`: images (or ReFlow pairs), or a tokenizer's normalised latents of the images."""
    conditional, count = config.flow.conditional, config.eval_samples
    if config.flow.tokenizer:
        run = tokenizer_run(config.flow.tokenizer)
        train, val = encoded(run, config.data, "train"), encoded(run, config.data, "val")
        if conditional and train.labels is None:
            num_classes(config.data)  # the one error that says which sources have labels
        codec = LatentCodec.fitted(run, train)
        shape = tuple(train.latents.shape[1:])
        config.model.check_size(shape[-1], "the latent size (data.image_size / the tokenizer's downsampling)")
        labels = val.labels[:count] if conditional else None
        return FlowData(
            latent_dataset(train, codec, conditional), shape, codec.normalise(val.latents[:count]), labels, codec
        )
    if config.flow.pairs:
        dataset = PairDataset(Path(config.flow.pairs))
        classes = num_classes(config.data) if conditional else 0
        if dataset.num_classes != classes:
            raise GenkitError(
                f"the pairs in {config.flow.pairs} carry {dataset.num_classes or 'no'} classes, but this flow "
                f"{'has ' + str(classes) if classes else 'is unconditional'}: generate them with the flow's own model"
            )
    else:
        dataset = build_dataset(config.data, "train", labels=conditional)
    if conditional:
        reference, labels = validation_samples(config.data, count, labels=True)
        return FlowData(dataset, data_shape(config.data), reference, labels)
    return FlowData(dataset, data_shape(config.data), validation_samples(config.data, count), None)


def drop_labels(labels: Tensor, probability: float, null: int, uniforms: Tensor) -> Tensor:
    """`labels` with label i replaced by the null class `null` where uniforms[i] ~ U[0, 1) < `probability`."""
    return torch.where(uniforms < probability, torch.full_like(labels, null), labels)


def sample_time(batch: int, how: str, generator: torch.Generator) -> Tensor:
    """t for each sample, from `generator`: U[eps, 1], sigmoid(N(0, 1)), or 0 (one-step distillation)."""
    if how == "uniform":
        return T_EPS + (1 - T_EPS) * torch.rand(batch, generator=generator)
    if how == "logit_normal":
        return torch.sigmoid(torch.randn(batch, generator=generator))
    return torch.zeros(batch)


@torch.no_grad()
def evaluate_flow(model: Velocity, noise: Tensor, reference_data: Tensor) -> dict[str, float]:
    """Straightness, and the sliced Wasserstein distance to held-out data after 1, 4 and 32 Euler steps."""
    metrics = {"straightness": straightness(model, noise, nfe=32)}
    for nfe in (1, 4, 32):
        samples = euler(model, noise, uniform(nfe + 1))
        metrics[f"sliced_wasserstein_{nfe}step"] = sliced_wasserstein(samples, reference_data)
    return metrics


class FlowTrainer:
    """One velocity network, loss E||v(x_t, t) - (x1 - x0)||^2 (mean over dimensions and batch)."""

    ema_model = "velocity"

    def __init__(self, config: FlowRunConfig, data: FlowData):
        """A conditional flow's evaluation solves at the classes of the reference samples (`data.labels`)."""
        self.classes = num_classes(config.data) if config.flow.conditional else 0
        shape, self.codec = data.shape, data.codec
        velocity = config.model.build(shape, self.classes)
        if config.flow.init_from:
            velocity.load_state_dict(load_velocity_model(Path(config.flow.init_from)).state_dict())
        self.flow, self.path = config.flow, RectifiedPath()
        self.models = {"velocity": velocity}
        self.optimizers = {"velocity": config.optimizer.build(velocity.parameters())}
        self.reference_data, self.labels = data.reference, data.labels
        self.frequencies = label_frequencies(config.data).tolist() if self.classes else None
        generator = torch.Generator().manual_seed(config.train.seed)
        self.noise = torch.randn((len(data.reference), *shape), generator=generator)
        self.seed = config.train.seed

    def optimizer_steps(self, steps: int) -> dict[str, int]:
        return {"velocity": steps}

    def draws(self, context: StepContext, x1: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        """This process's slice of the global micro-batch's (x0 ~ N(0, I) unless the coupling brings it, t, U[0, 1)
        for label dropout), from the generator of (train.seed, stream position): the same for any process count."""
        local, rank = len(x1), context.process_index
        generator, total = seeded(self.seed, context.position), local * context.num_processes
        x0 = None if self.flow.pairs else torch.randn((total, *x1.shape[1:]), generator=generator)
        t, uniforms = sample_time(total, self.flow.time_sampling, generator), torch.rand(total, generator=generator)
        part = slice(rank * local, (rank + 1) * local)
        x0 = None if x0 is None else context.to_device(x0[part]).to(x1.dtype)
        return x0, context.to_device(t[part]).to(x1.dtype), context.to_device(uniforms[part])

    def train_step(self, batch: Tensor | list[Tensor], context: StepContext) -> dict[str, Tensor]:
        labels = None
        if self.classes:  # (images, labels), or ReFlow's (z, x, c)
            *batch, labels = batch
            batch = batch if self.flow.pairs else batch[0]
        x1 = batch[1] if self.flow.pairs else batch
        x0, t, uniforms = self.draws(context, x1)
        x0 = batch[0] if self.flow.pairs else x0
        if labels is not None:
            labels = drop_labels(labels, self.flow.label_dropout, self.classes, uniforms)
        conditions = () if labels is None else (labels,)
        prediction = self.models["velocity"](self.path.interpolate(x0, x1, t), t, *conditions)
        loss = F.mse_loss(at_least_float32(prediction), at_least_float32(self.path.target(x0, x1, t)))
        context.update("velocity", loss)
        return {"loss": loss}

    def evaluate(self, context: StepContext, step: int) -> dict[str, float]:
        network = context.unwrap("velocity").eval()
        noise = context.to_device(self.noise)
        if self.classes:  # solved at the reference images' own classes
            labels = context.to_device(self.labels)
            model = lambda x, t: network(x, t, labels[: len(x)])  # noqa: E731
        else:
            model = network
        metrics = evaluate_flow(model, noise, context.to_device(self.reference_data))
        if noise.ndim == 4:
            shown = noise[:32]
            images = (lambda x: x) if self.codec is None else self.codec.to(noise.device).decode  # noqa: E731
            context.log_images("samples_1step", images(euler(model, shown, uniform(2))), step)
            context.log_images("samples_32step", images(euler(model, shown, uniform(33))), step)
        network.train()
        return metrics

    def export(self, context: StepContext, folder: Path) -> None:
        save_pretrained(context.unwrap("velocity"), folder)
        if self.classes:
            write_json(folder / Run.CLASSES, {"frequencies": self.frequencies})
        if self.codec is not None:
            write_json(folder / Run.LATENTS, self.codec.record(tuple(self.noise.shape[1:])))


def train(config: FlowRunConfig) -> dict[str, float]:
    """Train a rectified flow as `config` says; returns the last evaluation's metrics."""
    loop = Loop(config.train, config.run_dir, config_dict(config))
    data = flow_data(config)
    return loop.run(FlowTrainer(config, data), data.dataset)
