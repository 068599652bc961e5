"""GANs as particle ODEs (docs/gans_as_odes.md): MonoFlow and WGAN-GP (original or ReFlow-derived) through the loop.

The critic defines a field on sample space: grad_x h(d(x)) for MonoFlow's logistic discriminator (d estimates
log p/q) and grad_x D(x) for a Wasserstein critic. A generator update is one small Euler step of its samples along
that field, refitted: the loss -E h(d(G(z))) (or -E D(G(z))), or in the equivalent "particle" form the regression
E ||G(z) - sg[G(z) + eta grad h(d(G(z)))]||^2, whose gradient is 2 eta times the loss's.

Schedule: a loop step is one critic update on its batch; every n_critic-th step (from step n_critic on) first
takes one generator update against the critic of the previous steps. `train.steps` counts critic updates. The
latent noise and penalty points of a micro-batch are drawn for the global batch from (seed, position) and sliced
per process, so any process count trains the same models.
"""

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genkit.config import RunConfig, check_choice, config_dict, ranged, register_task
from genkit.data import DataConfig, build_dataset, data_shape, image_channels, validation_samples
from genkit.errors import GenkitError
from genkit.metrics import energy_distance, sliced_wasserstein
from genkit.models import save_gan
from genkit.nets.gan import CRITICS, GENERATORS, MONOTONE, CriticPotential
from genkit.noise import generator as seeded
from genkit.paths import broadcast_time
from genkit.train.config import OptimizerConfig, TrainConfig
from genkit.train.loop import Loop, StepContext
from tokenizers_img.precision import at_least_float32

METHODS = ("monoflow", "wgan_gp", "wgan_reflow")
FORMS = ("loss", "particle")
NET_KINDS = ("mlp", "dcgan")
# Per method: critic updates per generator update, penalty weight, and the reference optimisers (critic, generator).
DEFAULTS = {
    "monoflow": (1, 0.0, OptimizerConfig(lr=2e-4, betas=[0.5, 0.999]), OptimizerConfig(lr=1e-4, betas=[0.5, 0.999])),
    "wgan_gp": (5, 10.0, OptimizerConfig(lr=1e-4, betas=[0.0, 0.9]), OptimizerConfig(lr=1e-4, betas=[0.0, 0.9])),
    "wgan_reflow": (5, 0.5, OptimizerConfig(lr=1e-4, betas=[0.0, 0.9]), OptimizerConfig(lr=1e-4, betas=[0.0, 0.9])),
}


def float32_output(critic: nn.Module, x: Tensor) -> Tensor:
    """critic(x) in float32 with autocast off, whatever wraps it.

    Accelerate's mixed precision replaces the module's `forward` with an autocast one (kept by unwrap_model);
    the class's own forward is the network without it.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        return type(critic).forward(critic, at_least_float32(x))


def gradient_penalty(critic: nn.Module, points: Tensor, centre: float) -> Tensor:
    """E (||grad_x D(x)|| - centre)^2 at `points`, in float32 and from the raw critic (no loss scaling inside)."""
    points = at_least_float32(points.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(float32_output(critic, points).sum(), points, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - centre).pow(2).mean()


def logistic_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """E softplus(-d(real)) + E softplus(d(fake)): binary cross-entropy with real as 1; optimum d = log p/q."""
    return (F.softplus(-d_real) + F.softplus(d_fake)).mean()


@dataclass
class GanNetConfig:
    """`mlp` (hidden, depth) for low-dimensional data, `dcgan` (width) for power-of-two square images."""

    kind: str = "mlp"
    latent_dim: int = ranged(16, minimum=1)
    hidden: int = ranged(256, minimum=1)
    depth: int = ranged(3, minimum=1)
    width: int = ranged(64, minimum=1)

    def __post_init__(self):
        check_choice("model.kind", self.kind, NET_KINDS)

    def build(self, shape: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
        """(generator, critic) for samples of `shape`."""
        if self.kind == "mlp":
            dim = math.prod(shape)
            generator = GENERATORS["mlp"](self.latent_dim, list(shape), self.hidden, self.depth)
            return generator, CRITICS["mlp"](dim, self.hidden, self.depth)
        if len(shape) != 3:
            raise GenkitError(f"model.kind=dcgan needs image data, got samples of shape {shape}; use model.kind=mlp")
        generator = GENERATORS["dcgan"](self.latent_dim, shape[0], shape[-1], self.width)
        return generator, CRITICS["dcgan"](shape[0], shape[-1], self.width)


@dataclass
class GanConfig:
    """The method; MonoFlow's h (and minimax logit shift); the generator form; n_critic and the penalty weight.

    Unset (None), n_critic, penalty_weight and the two optimisers take the method's reference values (DEFAULTS)
    when the run starts (`resolved`).
    """

    method: str = "monoflow"
    h: str = "non_saturating"
    logit_shift: float = ranged(0.0)
    generator_form: str = "loss"
    eta: float = ranged(0.5, above=0)
    n_critic: int | None = ranged(None, minimum=1)
    penalty_weight: float | None = ranged(None, minimum=0)

    def __post_init__(self):
        check_choice("gan.method", self.method, METHODS)
        check_choice("gan.h", self.h, MONOTONE)
        check_choice("gan.generator_form", self.generator_form, FORMS)

    def resolved(self) -> "GanConfig":
        """These settings with n_critic and penalty_weight filled in from the method's defaults where unset."""
        n_critic, weight, _, _ = DEFAULTS[self.method]
        return dataclasses.replace(
            self,
            n_critic=n_critic if self.n_critic is None else self.n_critic,
            penalty_weight=weight if self.penalty_weight is None else self.penalty_weight,
        )

    @property
    def potential(self) -> CriticPotential:
        """What the generator climbs: h(d) for MonoFlow, D itself for a Wasserstein critic."""
        return CriticPotential(self.method, self.h, self.logit_shift)


@register_task("gan")
@dataclass
class GanRunConfig(RunConfig):
    """A GAN training run in runs/<name>/; its model/ folder holds generator/, critic/ and gan.json."""

    task: str = "gan"
    name: str = "gan"
    eval_samples: int = ranged(2000, minimum=1)
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(source="8gaussians"))
    model: GanNetConfig = dataclasses.field(default_factory=GanNetConfig)
    gan: GanConfig = dataclasses.field(default_factory=GanConfig)
    critic_optimizer: OptimizerConfig | None = None
    generator_optimizer: OptimizerConfig | None = None
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(steps=2000, batch_size=256, ema_decay=0.999, max_grad_norm=0.0)
    )

    def resolved(self) -> "GanRunConfig":
        """The config with every method default filled in (what a run records and trains with)."""
        _, _, critic, generator = DEFAULTS[self.gan.method]
        return dataclasses.replace(
            self,
            gan=self.gan.resolved(),
            critic_optimizer=self.critic_optimizer or dataclasses.replace(critic),
            generator_optimizer=self.generator_optimizer or dataclasses.replace(generator),
        )

    def __post_init__(self):
        size = self.data.image_size
        if self.model.kind == "dcgan" and (image_channels(self.data) and (size < 8 or size & (size - 1))):
            raise GenkitError(f"config key data.image_size={size} must be a power of two of at least 8 for DCGAN nets")


def generator_loss(fake: Tensor, critic: nn.Module, gan: GanConfig) -> Tensor:
    """-E h(d(G(z))), or the particle regression E ||G(z) - sg[G(z) + eta grad_x h(d(x))|_{x = G(z)}]||^2."""
    if gan.generator_form == "loss":
        return -gan.potential(at_least_float32(critic(fake))).mean()
    with torch.enable_grad():
        x = at_least_float32(fake.detach()).requires_grad_(True)
        (push,) = torch.autograd.grad(gan.potential(float32_output(critic, x)).sum(), x)
    return (at_least_float32(fake) - (x + gan.eta * push).detach()).pow(2).flatten(1).sum(1).mean()


class GanTrainer:
    """Generator and critic, each with its optimiser; the generator's EMA is what `model/` holds."""

    ema_model = "generator"

    def __init__(self, config: GanRunConfig, shape: tuple[int, ...], reference_data: Tensor):
        self.config, self.gan, self.shape = config, config.gan, shape
        generator, critic = config.model.build(shape)
        self.models = {"generator": generator, "critic": critic}
        self.optimizers = {
            "generator": config.generator_optimizer.build(generator.parameters()),
            "critic": config.critic_optimizer.build(critic.parameters()),
        }
        self.reference_data = reference_data
        torch_generator = torch.Generator().manual_seed(config.train.seed + 2)
        self.eval_noise = torch.randn(len(reference_data), config.model.latent_dim, generator=torch_generator)

    def draws(self, context: StepContext, local: int) -> tuple[Tensor, Tensor, Tensor]:
        """This process's slice of (critic z, penalty t, generator z) for the global micro-batch at the position."""
        world, rank = context.num_processes, context.process_index
        generator = seeded(self.config.train.seed, context.position)
        total, latent = local * world, self.config.model.latent_dim
        draws = (
            torch.randn(total, latent, generator=generator),
            torch.rand(total, generator=generator),
            torch.randn(total, latent, generator=generator),
        )
        return tuple(context.to_device(d[rank * local : (rank + 1) * local]) for d in draws)

    def critic_loss(self, context: StepContext, real: Tensor, fake: Tensor, t: Tensor) -> dict[str, Tensor]:
        """Logistic loss (MonoFlow) or E D(fake) - E D(real) + penalty at x_t = t real + (1 - t) fake (WGAN)."""
        critic = self.models["critic"]
        d_real, d_fake = at_least_float32(critic(real)), at_least_float32(critic(fake))
        if self.gan.method == "monoflow":
            return {"critic": logistic_loss(d_real, d_fake)}
        t_x = broadcast_time(t, real)
        centre = 1.0 if self.gan.method == "wgan_gp" else 0.0
        penalty = gradient_penalty(context.unwrap("critic"), t_x * real + (1 - t_x) * fake, centre)
        wasserstein = d_real.mean() - d_fake.mean()
        return {
            "critic": self.gan.penalty_weight * penalty - wasserstein,
            "wasserstein": wasserstein,
            "penalty": penalty,
        }

    def optimizer_steps(self, steps: int) -> dict[str, int]:
        """The critic steps every loop step, the generator at steps n_critic, 2 n_critic, ... below `steps`."""
        return {"critic": steps, "generator": (steps - 1) // self.gan.n_critic}

    def train_step(self, batch: Tensor, context: StepContext) -> dict[str, Tensor]:
        z_critic, t, z_generator = self.draws(context, len(batch))
        step = context.position // self.config.train.grad_accum_steps
        losses = {}
        if step >= self.gan.n_critic and step % self.gan.n_critic == 0:
            critic = context.unwrap("critic")
            # The generator's loss must not leave gradients on the critic.
            critic.requires_grad_(False)
            with context.autocast():
                losses["generator"] = generator_loss(self.models["generator"](z_generator), critic, self.gan)
            context.update("generator", losses["generator"])
            critic.requires_grad_(True)
        with torch.no_grad():
            fake = self.models["generator"](z_critic)
        losses |= self.critic_loss(context, batch, fake, t)
        context.update("critic", losses["critic"])
        return losses

    @torch.no_grad()
    def evaluate(self, context: StepContext, step: int) -> dict[str, float]:
        generator = context.unwrap("generator").eval()
        samples = generator(context.to_device(self.eval_noise)).float()
        generator.train()
        if samples.ndim == 4:
            context.log_images("samples", samples[:64], step)
            return {}
        reference = self.reference_data.to(context.device)
        return {
            "sliced_wasserstein": sliced_wasserstein(samples, reference),
            "energy_distance": energy_distance(samples, reference),
        }

    def export(self, context: StepContext, folder: Path) -> None:
        save_gan(context.unwrap("generator"), context.unwrap("critic"), self.gan.potential, folder)


def train(config: GanRunConfig) -> dict[str, float]:
    """Train a GAN as `config` says; returns the last evaluation's metrics."""
    config = config.resolved()
    loop = Loop(config.train, config.run_dir, config_dict(config))
    shape = data_shape(config.data)
    trainer = GanTrainer(config, shape, validation_samples(config.data, config.eval_samples))
    return loop.run(trainer, build_dataset(config.data, "train"))
