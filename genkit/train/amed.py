"""Distilling an AMED predictor (AMED-Solver or AMED-Plugin) from a teacher on the nested schedule (docs/amed.md §4).

The teacher solves on the schedule with (M + 1)(N - 1) + 1 points, which contains the student's N points, from
the same noise and without AFS; its states at the student's times are the targets. For each student interval
the student takes one step and the loss is ||x_student - x_teacher||^2 at t_{n+1}, summed over dimensions and
averaged over the batch; every interval is its own optimizer step. Single-step students (AMED-Solver, the Euler
and DPM-Solver-2 plugins) start each interval from the teacher's state (teacher forcing); multistep students
(the iPNDM and DPM-Solver++ plugins) continue from their own state and history, detached between intervals.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from genkit.checkpoint import save_pretrained
from genkit.config import RunConfig, check_choice, config_dict, ranged, register_task
from genkit.fields import Field, FieldConfig
from genkit.predictors import PredictorModel, PredictorSettings
from genkit.train.config import OptimizerConfig, TrainConfig
from genkit.train.loop import Loop, StepContext
from samplers import BASELINES, SOLVERS, amed, dpm_solver_2
from samplers.amed import amed_plugin_step

VALIDATION_SAMPLES = 64


@dataclass
class AmedSettings(PredictorSettings):
    """A predictor's settings, and how it is distilled: the teacher solver and its refinement M (teacher_steps)."""

    teacher: str = "heun"
    teacher_steps: int = ranged(1, minimum=0)

    def __post_init__(self):
        super().__post_init__()
        check_choice("amed.teacher", self.teacher, BASELINES)


@register_task("amed")
@dataclass
class AmedRunConfig(RunConfig):
    """Distil an AMED predictor for `field` on `num_samples` noise draws."""

    task: str = "amed"
    name: str = "amed"
    num_samples: int = ranged(10_000, minimum=1)
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    amed: AmedSettings = dataclasses.field(default_factory=AmedSettings)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=lambda: OptimizerConfig(lr=5e-3, betas=[0.9, 0.999]))
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(steps=80, batch_size=128, ema_decay=0.0, max_grad_norm=0.0)
    )


def start_states(field: Field, count: int, seed: int) -> Tensor:
    """`count` EDM start states sigma_max z of the field, z ~ N(0, I) drawn in float64 from one seeded generator."""
    z = torch.randn((count, *field.shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return field.edm_path.start(z).to(field.dtype)


def teacher_states(field: Field, x: Tensor, settings: AmedSettings) -> list[Tensor]:
    """The teacher's state at every student time: one solve on the nested schedule, without AFS or predictor."""
    stride = settings.teacher_steps + 1
    states = []

    def keep(info: dict) -> None:
        if info["i"] % stride == 0:
            states.append(info["x"])

    timesteps = settings.timesteps(field.edm_path, settings.teacher_steps)
    final = SOLVERS[settings.teacher].function(field.edm, x, timesteps, callback=keep)
    return [*states, final]


class AmedTrainer:
    """One predictor, one Adam; a loop step distils every interval once on a batch of noise."""

    ema_model = None

    def __init__(self, config: AmedRunConfig, field: Field, device: torch.device):
        self.config, self.settings, self.field = config, config.amed, field
        predictor = PredictorModel(field.field_id, self.settings.tied())
        self.models = {"predictor": predictor}
        self.optimizers = {"predictor": config.optimizer.build(predictor.parameters())}
        self.timesteps = self.settings.timesteps(field.edm_path)
        # Noise no training batch draws: the seed is past the training stream's.
        self.validation_noise = start_states(field, VALIDATION_SAMPLES, config.train.seed + 1).to(device)
        self.validation_target, self.midpoint_rmse = None, None

    def optimizer_steps(self, steps: int) -> dict[str, int]:
        """One predictor update per student interval, N - 1 a loop step."""
        return {"predictor": steps * (self.settings.num_steps - 1)}

    def train_step(self, batch: list[Tensor], context: StepContext) -> dict[str, Tensor]:
        (noise,) = batch
        with torch.no_grad():
            states = teacher_states(self.field, noise, self.settings)
        predictor, velocity = self.models["predictor"], self.field.edm
        x, history, losses = states[0], [], []
        for n in range(self.settings.num_steps - 1):
            t, t_next = self.timesteps[n].to(noise), self.timesteps[n + 1].to(noise)
            afs = self.settings.afs and n == 0
            if self.settings.solver == "amed":
                student = amed(velocity, states[n], torch.stack([t, t_next]), predictor, afs=afs)
            else:
                start = x if self.settings.multistep else states[n]
                student, history = amed_plugin_step(
                    velocity, start, t, t_next, predictor, history, self.settings.base, afs, self.settings.max_order, n
                )
            loss = (student - states[n + 1]).pow(2).flatten(1).sum(1).mean()
            context.update("predictor", loss)
            losses.append(loss.detach())
            x, history = student.detach(), [h.detach() for h in history]
        return {"loss": torch.stack(losses).mean()}

    @torch.no_grad()
    def evaluate(self, context: StepContext, step: int) -> dict[str, float]:
        """RMSE to the teacher's final state on fixed noise, of the student and of DPM-Solver-2 on its timesteps."""
        rmse = lambda y: (y - self.validation_target).pow(2).mean().sqrt().item()  # noqa: E731
        velocity, noise = self.field.edm, self.validation_noise
        if self.validation_target is None:
            self.validation_target = teacher_states(self.field, noise, self.settings)[-1]
            self.midpoint_rmse = rmse(dpm_solver_2(velocity, noise, self.timesteps))
        predictor = context.unwrap("predictor")
        rs = []
        options = self.settings.solver_options(predictor)
        callback = lambda info: rs.append(info["r"].mean().item())  # noqa: E731
        student = SOLVERS[self.settings.solver].function(velocity, noise, self.timesteps, callback=callback, **options)
        metrics = {"rmse_to_teacher": rmse(student), "rmse_midpoint_to_teacher": self.midpoint_rmse}
        return metrics | {f"r_{n}": r for n, r in enumerate(rs)}

    def export(self, context: StepContext, folder: Path) -> None:
        save_pretrained(context.unwrap("predictor"), folder)


def train(config: AmedRunConfig) -> dict[str, float]:
    """Distil a predictor as `config` says; it ends, with its field id and settings, in runs/<name>/model."""
    loop = Loop(config.train, config.run_dir, config_dict(config))
    field = config.field.load(loop.device, loop.dtype)
    noise = start_states(field, config.num_samples, config.train.seed)
    return loop.run(AmedTrainer(config, field, loop.device), TensorDataset(noise))
