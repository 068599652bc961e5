"""Distilling an AMED predictor (AMED-Solver or AMED-Plugin) from a teacher on the nested schedule (ALGORITHMS 1.7).

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

from genkit.checkpoint import load_weights, save_weights
from genkit.config import check_choice, config_dict, ranged, register_task
from genkit.errors import GenkitError
from genkit.fields import FieldConfig, LoadedField
from genkit.train.loop import Loop, OptimizerConfig, TrainConfig
from samplers import SCHEDULES, SOLVERS, AMEDPredictor, amed, dpm_solver_2, solver_nfe
from samplers.amed import FEATURES, PLUGIN_BASES, amed_plugin_step

SCHEDULE_CHOICES = ("time_uniform", "karras", "logsnr")
STUDENTS = ("amed", "amed_plugin")
TEACHERS = ("heun", "ipndm", "dpmpp_2m", "dpm_solver_2")
MULTISTEP_BASES = ("ipndm", "dpmpp_2m")
VALIDATION_SAMPLES = 64


@dataclass
class AmedSettings:
    """What a predictor is tied to (ALGORITHMS 1.10): student solver (and plugin base), N, schedule, AFS, features.

    The teacher solver and its refinement M (extra points per student interval) only shape the distillation.
    """

    solver: str = "amed"
    base: str = "ipndm"
    max_order: int = ranged(4, minimum=1, maximum=4)
    num_steps: int = ranged(4, minimum=2)
    schedule: str = "time_uniform"
    afs: bool = True
    features: str = "slope"
    scale_dir: float = ranged(0.01, minimum=0, below=1)
    scale_time: float = ranged(0.0, minimum=0, below=1)
    teacher: str = "heun"
    teacher_steps: int = ranged(1, minimum=0)

    def __post_init__(self):
        check_choice("amed.solver", self.solver, STUDENTS)
        check_choice("amed.base", self.base, PLUGIN_BASES)
        check_choice("amed.schedule", self.schedule, SCHEDULE_CHOICES)
        check_choice("amed.features", self.features, FEATURES)
        check_choice("amed.teacher", self.teacher, TEACHERS)

    def timesteps(self, refinement: int = 0) -> Tensor:
        """The student schedule, or with `refinement` extra points inside every interval (same closed form)."""
        return SCHEDULES[self.schedule]((refinement + 1) * (self.num_steps - 1) + 1)

    @property
    def nfe(self) -> int:
        """Field evaluations of one sample: 2(N - 1) - [AFS]."""
        return solver_nfe(self.solver, self.timesteps(), afs=self.afs)

    @property
    def multistep(self) -> bool:
        return self.solver == "amed_plugin" and self.base in MULTISTEP_BASES

    def solver_options(self, predictor: AMEDPredictor) -> dict:
        """Keyword arguments of samplers.amed / amed_plugin for this predictor."""
        options = {"predictor": predictor, "afs": self.afs}
        if self.solver == "amed_plugin":
            options |= {"base": self.base, "max_order": self.max_order}
        return options

    def sample(self, velocity, noise: Tensor, predictor: AMEDPredictor) -> Tensor:
        """The student's full solve from noise at sigma_max on its own schedule."""
        return SOLVERS[self.solver](velocity, noise, self.timesteps(), **self.solver_options(predictor))

    def build_predictor(self) -> AMEDPredictor:
        return AMEDPredictor(features=self.features, scale_dir=self.scale_dir, scale_time=self.scale_time)

    def tied(self) -> dict:
        """The settings a saved predictor must match to be used."""
        return {key: value for key, value in config_dict(self).items() if key not in ("teacher", "teacher_steps")}


@register_task("amed")
@dataclass
class AmedRunConfig:
    """Distil an AMED predictor for `field` on `num_samples` noise draws."""

    task: str = "amed"
    name: str = "amed"
    output_dir: str = "runs"
    num_samples: int = ranged(10_000, minimum=1)
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    amed: AmedSettings = dataclasses.field(default_factory=AmedSettings)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=lambda: OptimizerConfig(lr=5e-3, betas=[0.9, 0.999]))
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(steps=80, batch_size=128, ema_decay=0.0, max_grad_norm=0.0)
    )


def teacher_states(velocity, x: Tensor, settings: AmedSettings) -> list[Tensor]:
    """The teacher's state at every student time: one solve on the nested schedule, without AFS or predictor."""
    stride = settings.teacher_steps + 1
    states = []

    def keep(info: dict) -> None:
        if info["i"] % stride == 0:
            states.append(info["x"])

    final = SOLVERS[settings.teacher](velocity, x, settings.timesteps(settings.teacher_steps), callback=keep)
    return [*states, final]


def sigma_max_noise(count: int, shape: tuple[int, ...], sigma_max: float, seed: int, dtype: torch.dtype) -> Tensor:
    """x_0 = sigma_max z for `count` draws of z ~ N(0, I) from one seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    return sigma_max * torch.randn((count, *shape), generator=generator, dtype=torch.float64).to(dtype)


class AmedTrainer:
    """One predictor, one Adam; a loop step distils every interval once on a batch of noise."""

    ema_model = None

    def __init__(self, config: AmedRunConfig, loaded: LoadedField, device: torch.device):
        self.config, self.settings, self.loaded = config, config.amed, loaded
        self.velocity = loaded.edm
        predictor = self.settings.build_predictor()
        self.models = {"predictor": predictor}
        self.optimizers = {"predictor": config.optimizer.build(predictor.parameters())}
        self.timesteps = self.settings.timesteps()
        sigma_max = float(self.timesteps[0])
        # Noise no training batch draws: the seed is past the training stream's.
        noise = sigma_max_noise(VALIDATION_SAMPLES, loaded.shape, sigma_max, config.train.seed + 1, loaded.dtype)
        self.validation_noise = noise.to(device)
        self.validation_target, self.midpoint_rmse = None, None

    def optimizer_steps(self, steps: int) -> dict[str, int]:
        """One predictor update per student interval, N - 1 a loop step."""
        return {"predictor": steps * (self.settings.num_steps - 1)}

    def train_step(self, batch: list[Tensor], loop: Loop) -> dict[str, Tensor]:
        (noise,) = batch
        with torch.no_grad():
            states = teacher_states(self.velocity, noise, self.settings)
        predictor = self.models["predictor"]
        x, history, losses = states[0], [], []
        for n in range(self.settings.num_steps - 1):
            t, t_next = self.timesteps[n].to(noise), self.timesteps[n + 1].to(noise)
            afs = self.settings.afs and n == 0
            if self.settings.solver == "amed":
                student = amed(self.velocity, states[n], torch.stack([t, t_next]), predictor, afs=afs)
            else:
                start = x if self.settings.multistep else states[n]
                student, history = amed_plugin_step(
                    self.velocity,
                    start,
                    t,
                    t_next,
                    predictor,
                    history,
                    self.settings.base,
                    afs,
                    self.settings.max_order,
                    n,
                )
            loss = (student - states[n + 1]).pow(2).flatten(1).sum(1).mean()
            loop.update("predictor", loss)
            losses.append(loss.detach())
            x, history = student.detach(), [h.detach() for h in history]
        return {"loss": torch.stack(losses).mean()}

    @torch.no_grad()
    def evaluate(self, loop: Loop, step: int) -> dict[str, float]:
        """RMSE to the teacher's final state on fixed noise, of the student and of DPM-Solver-2 on its timesteps."""
        rmse = lambda y: (y - self.validation_target).pow(2).mean().sqrt().item()  # noqa: E731
        if self.validation_target is None:
            self.validation_target = teacher_states(self.velocity, self.validation_noise, self.settings)[-1]
            self.midpoint_rmse = rmse(dpm_solver_2(self.velocity, self.validation_noise, self.timesteps))
        predictor = loop.unwrap("predictor")
        rs = []
        options = self.settings.solver_options(predictor)
        callback = lambda info: rs.append(info["r"].mean().item())  # noqa: E731
        student = SOLVERS[self.settings.solver](
            self.velocity, self.validation_noise, self.timesteps, callback=callback, **options
        )
        metrics = {"rmse_to_teacher": rmse(student), "rmse_midpoint_to_teacher": self.midpoint_rmse}
        return metrics | {f"r_{n}": r for n, r in enumerate(rs)}

    def export(self, loop: Loop, folder: Path) -> None:
        save_predictor(loop.unwrap("predictor"), folder, self.loaded.field_id, self.settings)


def save_predictor(predictor: AMEDPredictor, folder: Path, field_id: str, settings: AmedSettings) -> None:
    """safetensors weights + the field and settings the predictor is only valid for."""
    save_weights(folder, predictor.state_dict(), {"kind": "amed_predictor", "field": field_id, **config_dict(settings)})


def load_predictor(
    folder: Path, field_id: str, settings: AmedSettings | None = None
) -> tuple[AMEDPredictor, AmedSettings]:
    """The predictor in `folder` and its settings, refused (one clear error) unless distilled for this field

    (and, when given, these settings, teacher aside).
    """
    state, saved = load_weights(folder)
    if saved.pop("kind", None) != "amed_predictor":
        raise GenkitError(f"{folder} does not hold an AMED predictor")
    saved_field = saved.pop("field")
    saved_settings = AmedSettings(**saved)
    wanted = {"field": field_id} | ({} if settings is None else settings.tied())
    have = {"field": saved_field} | saved_settings.tied()
    changed = [
        f"{key}: trained for {have[key]!r}, asked for {value!r}" for key, value in wanted.items() if have[key] != value
    ]
    if changed:
        raise GenkitError(
            f"the AMED predictor in {folder} does not fit this use ({'; '.join(changed)}); distil one for it"
        )
    predictor = saved_settings.build_predictor()
    predictor.load_state_dict(state)
    return predictor.eval(), saved_settings


def train(config: AmedRunConfig) -> dict[str, float]:
    """Distil a predictor as `config` says; its weights and settings end in runs/<name>/model."""
    loop = Loop(config.train, Path(config.output_dir) / config.name, config_dict(config))
    loaded = config.field.load(loop.device, loop.dtype)
    sigma_max = float(config.amed.timesteps()[0])
    noise = sigma_max_noise(config.num_samples, loaded.shape, sigma_max, config.train.seed, loaded.dtype)
    return loop.run(AmedTrainer(config, loaded, loop.device), TensorDataset(noise))
