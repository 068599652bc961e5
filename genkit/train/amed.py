"""Distilling the AMED-Solver predictor from a Heun teacher on the nested schedule, through the shared loop.

For each student interval [t_n, t_{n+1}] the teacher takes M + 1 Heun steps on the schedule with
(M + 1)(N - 1) + 1 points, which contains the student's N points. The student takes one AMED step from
the teacher's state at t_n (teacher forcing) and the loss is ||x_student - x_teacher||^2 at t_{n+1},
summed over dimensions and averaged over the batch; every interval is its own optimizer step.
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from genkit.checkpoint import load_weights, save_weights
from genkit.config import check_choice, config_dict, register_task
from genkit.errors import GenkitError
from genkit.gaussian_mixture import GaussianMixtureField
from genkit.train.loop import Loop, OptimizerConfig, TrainConfig
from samplers import SCHEDULES, AMEDPredictor, amed, heun

SCHEDULE_CHOICES = ("time_uniform", "karras", "logsnr")


@dataclass
class MixtureFieldConfig:
    """The analytic field to distil on: GaussianMixtureField.random(components, shape, seed)."""

    components: int = 8
    shape: list[int] = field(default_factory=lambda: [64])
    seed: int = 0
    diagonal: bool = True


@dataclass
class AmedSettings:
    """What a predictor is tied to (ALGORITHMS 1.10): steps N, schedule, AFS, teacher refinement M."""

    num_steps: int = 4
    schedule: str = "time_uniform"
    afs: bool = True
    teacher_steps: int = 1
    scale_dir: float = 0.01
    scale_time: float = 0.0

    def __post_init__(self):
        check_choice("amed.schedule", self.schedule, SCHEDULE_CHOICES)
        if self.num_steps < 2 or self.teacher_steps < 0:
            raise GenkitError("amed.num_steps must be at least 2 and amed.teacher_steps at least 0")

    def timesteps(self, refinement: int = 0) -> Tensor:
        """The student schedule, or with `refinement` extra points inside every interval (same closed form)."""
        return SCHEDULES[self.schedule]((refinement + 1) * (self.num_steps - 1) + 1)


@register_task("amed")
@dataclass
class AmedRunConfig:
    """Distil an AMED-Solver predictor for the `mixture` field on `num_samples` noise draws."""

    task: str = "amed"
    name: str = "amed"
    output_dir: str = "runs"
    num_samples: int = 10_000
    mixture: MixtureFieldConfig = field(default_factory=MixtureFieldConfig)
    amed: AmedSettings = field(default_factory=AmedSettings)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=5e-3, betas=[0.9, 0.999]))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=80, batch_size=128, ema_decay=0.0))

    def field_id(self) -> str:
        """Names the field a predictor was distilled on."""
        f = self.mixture
        return f"gmm(components={f.components}, shape={list(f.shape)}, seed={f.seed}, diagonal={f.diagonal})"

    def build_field(self) -> GaussianMixtureField:
        f = self.mixture
        return GaussianMixtureField.random(f.components, tuple(f.shape), seed=f.seed, diagonal=f.diagonal)


def teacher_states(velocity, x: Tensor, settings: AmedSettings) -> list[Tensor]:
    """The teacher's state at every student time: Heun on the nested schedule, from the same noise, without AFS."""
    fine = settings.timesteps(settings.teacher_steps)
    stride = settings.teacher_steps + 1
    states = [x]
    for n in range(settings.num_steps - 1):
        states.append(heun(velocity, states[-1], fine[n * stride : (n + 1) * stride + 1]))
    return states


class AmedTrainer:
    """One predictor, one Adam; a loop step distils every interval once on a batch of noise."""

    ema_model = None

    def __init__(self, config: AmedRunConfig):
        self.config, self.settings = config, config.amed
        self.velocity = config.build_field().edm
        predictor = AMEDPredictor(scale_dir=self.settings.scale_dir, scale_time=self.settings.scale_time)
        self.models = {"predictor": predictor}
        self.optimizers = {"predictor": config.optimizer.build(predictor.parameters())}
        self.timesteps = self.settings.timesteps()

    def train_step(self, batch: list[Tensor], loop: Loop) -> dict[str, Tensor]:
        (noise,) = batch
        with torch.no_grad():
            states = teacher_states(self.velocity, noise, self.settings)
        losses = []
        for n in range(self.settings.num_steps - 1):
            student = amed(
                self.velocity,
                states[n],
                self.timesteps[n : n + 2],
                self.models["predictor"],
                afs=self.settings.afs and n == 0,
            )
            loss = (student - states[n + 1]).pow(2).flatten(1).sum(1).mean()
            loop.update("predictor", loss)
            losses.append(loss.detach())
        return {"loss": torch.stack(losses).mean()}

    def evaluate(self, loop: Loop, step: int) -> dict[str, float]:
        return {}

    def export(self, loop: Loop, folder: Path) -> None:
        save_predictor(loop.unwrap("predictor"), folder, self.config)


def save_predictor(predictor: AMEDPredictor, folder: Path, config: AmedRunConfig) -> None:
    """safetensors weights + the settings the predictor is only valid for."""
    settings = {"field": config.field_id(), **config_dict(config.amed)}
    save_weights(folder, predictor.state_dict(), {"kind": "amed_predictor", **settings})


def load_predictor(folder: Path, field_id: str, settings: AmedSettings) -> AMEDPredictor:
    """The predictor in `folder`, refused (one clear error) unless it was distilled for this field and settings."""
    state, saved = load_weights(folder)
    if saved.pop("kind", None) != "amed_predictor":
        raise GenkitError(f"{folder} does not hold an AMED predictor")
    wanted = {"field": field_id, **config_dict(settings)}
    changed = [
        f"{key}: trained for {saved.get(key)!r}, asked for {value!r}"
        for key, value in wanted.items()
        if saved.get(key) != value
    ]
    if changed:
        raise GenkitError(
            f"the AMED predictor in {folder} does not fit this use ({'; '.join(changed)}); distil one for it"
        )
    predictor = AMEDPredictor(scale_dir=settings.scale_dir, scale_time=settings.scale_time)
    predictor.load_state_dict(state)
    return predictor.eval()


def train(config: AmedRunConfig) -> dict[str, float]:
    """Distil a predictor as `config` says; its weights and settings end in runs/<name>/model."""
    loop = Loop(config.train, Path(config.output_dir) / config.name, config_dict(config))
    sigma_max = float(config.amed.timesteps()[0])
    generator = torch.Generator().manual_seed(config.train.seed)
    shape = (config.num_samples, *config.mixture.shape)
    noise = TensorDataset(sigma_max * torch.randn(shape, generator=generator, dtype=torch.float64))
    return loop.run(AmedTrainer(config), noise)
