"""Distilling an AMED predictor (AMED-Solver or AMED-Plugin) from a teacher on the nested schedule (docs/amed.md §4).

The teacher solves on the schedule with (M + 1)(N - 1) + 1 points, which contains the student's N points, from
the same noise and without AFS; its states at the student's times are the targets. With `amed.loss: greedy` (the
paper's) for each student interval the student takes one step and the loss is ||x_student - x_teacher||^2 at
t_{n+1}, summed over dimensions and averaged over the batch; every interval is its own optimizer step. Single-step
students (AMED-Solver, the Euler and DPM-Solver-2 plugins) start each interval from the teacher's state (teacher
forcing); multistep students (the iPNDM and DPM-Solver++ plugins) continue from their own state and history, detached
between intervals.

With `amed.loss: end_to_end` the student solves all N - 1 intervals on its own state and the loss is the same squared
error at the last time only, backpropagated through the whole trajectory: one optimizer step a batch, and a predictor
that may trade one interval's error for the next one's (docs/amed.md §6.5). With one interval the two losses are the
same. `amed.learn_timesteps` learns the student's N timesteps with it, in LD3's monotone parameterisation
(samplers/ld3.py) on their own Adam at `amed.timestep_lr`; they are saved with the predictor as its schedule
(schedule.json).

With `amed.schedule_file` (a saved sigma schedule for this field, e.g. from `genkit schedule search`) the student's
times are the saved timesteps instead of the named schedule, `num_steps` follows from their count, and the teacher
refines each interval by `teacher_steps` times geometric in sigma; the model folder keeps a copy of the schedule
(schedule.json), which `genkit compare` solves the predictor's cell on.

With `amed.afs_from: data` the analytical first step is the exact slope of the Gaussian with the data's per-dimension
mean and variance (docs/amed.md §3.4) instead of the zero-mean one; the statistics come from the field's training data
(a flow run's train split, a mixture's closed form) and are saved with the predictor, so sampling uses them too.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from genkit.config import RunConfig, check_choice, config_dict, ranged, register_task
from genkit.data import build_dataset
from genkit.errors import GenkitError
from genkit.fields import DRAWN_AS_IN_DATA, Field, FieldConfig
from genkit.files import atomic
from genkit.gaussian_mixture import GaussianMixture
from genkit.latents import LatentCodec, encoded
from genkit.paths import nested_timesteps
from genkit.predictors import PREDICTOR_SCHEDULE, LearnedTimesteps, PredictorModel, PredictorSettings
from genkit.runs import Run
from genkit.schedules.file import SavedSchedule, load_schedule, read_schedule, save_schedule
from genkit.train.config import OptimizerConfig, TrainConfig
from genkit.train.loop import Loop, StepContext
from samplers import BASELINES, SOLVERS, amed, dpm_solver_2
from samplers.amed import amed_plugin_step
from samplers.teacher import TEACHER, teacher_trajectory

VALIDATION_SAMPLES = 64
AFS_FROM = ("zero_mean", "data")
LOSSES = ("greedy", "end_to_end")
# Training items the data-aware first step's mean and variance are estimated from.
STATISTICS_SAMPLES = 10_000


@dataclass
class AmedSettings(PredictorSettings):
    """A predictor's settings, and how it is distilled: the teacher solver and its refinement M (teacher_steps), the
    saved schedule the student runs on instead of `schedule` when `schedule_file` names one, what the first step
    assumes of the data (`afs_from`: zero_mean, or data for the Gaussian with the training data's statistics), the
    loss (greedy per interval, or end_to_end at the last time), and whether the timesteps are learned with it."""

    teacher: str = TEACHER
    teacher_steps: int = ranged(1, minimum=0)
    schedule_file: str = ""
    afs_from: str = "zero_mean"
    loss: str = "greedy"
    learn_timesteps: bool = False
    timestep_lr: float = ranged(0.05, above=0)

    def __post_init__(self):
        super().__post_init__()
        check_choice("amed.teacher", self.teacher, BASELINES)
        check_choice("amed.afs_from", self.afs_from, AFS_FROM)
        check_choice("amed.loss", self.loss, LOSSES)
        if self.afs_from == "data" and not self.afs:
            raise GenkitError("amed.afs_from=data sets how the analytical first step is taken; set amed.afs=true")
        if self.learn_timesteps and self.loss != "end_to_end":
            raise GenkitError(
                "amed.learn_timesteps fits the timesteps to the terminal error of the whole solve; set "
                "amed.loss=end_to_end"
            )


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

    def resolved(self) -> "AmedRunConfig":
        """The config with num_steps set to the saved schedule's count of timesteps when amed.schedule_file is set."""
        if not self.amed.schedule_file:
            return self
        steps = len(read_schedule(Path(self.amed.schedule_file)).timesteps)
        return dataclasses.replace(self, amed=dataclasses.replace(self.amed, num_steps=steps))


def saved_student_schedule(settings: AmedSettings, field: Field) -> SavedSchedule | None:
    """The saved schedule of amed.schedule_file, checked to be this field's, in sigma and of num_steps times."""
    if not settings.schedule_file:
        return None
    saved = load_schedule(Path(settings.schedule_file), field)
    if saved.time != "sigma":
        raise GenkitError(
            f"amed.schedule_file={settings.schedule_file} holds {saved.time} times, but AMED works in sigma; "
            "search the schedule on a sigma schedule (genkit schedule search --schedule karras)"
        )
    if len(saved.timesteps) != settings.num_steps:
        raise GenkitError(
            f"amed.num_steps={settings.num_steps}, but amed.schedule_file={settings.schedule_file} holds "
            f"{len(saved.timesteps)} timesteps; set amed.num_steps={len(saved.timesteps)}"
        )
    return saved


def data_statistics(config: FieldConfig) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and variance (float64, one sample's shape) of the data the field was trained on.

    EDM-form data y (x = y + sigma n) is a flow's x1 (RectifiedAsEDM), so a flow run's train split (its first
    STATISTICS_SAMPLES items; a latent flow's normalised latents of them) gives them; a mixture gives them in closed
    form.
    """
    if config.kind == "mixture":
        mixture = GaussianMixture.random(config.components, tuple(config.shape), config.seed, config.diagonal)
        weights = mixture.log_weights.exp()[:, None]
        mean = (weights * mixture.means).sum(0)
        variance = (weights * (mixture.variances + mixture.means**2)).sum(0) - mean**2
        return mean.reshape(mixture.shape), variance.reshape(mixture.shape)
    if config.kind == "flow_run":
        run = Run(config.path).last_stage
        if run.latents.is_file():
            codec, _ = LatentCodec.recorded(run.latents)
            train = encoded(Run(codec.tokenizer_run), run.data, "train")
            data = codec.normalise(train.latents[:STATISTICS_SAMPLES]).to(torch.float64)
        else:
            dataset = build_dataset(run.data, "train")
            data = torch.stack([dataset[i] for i in range(min(len(dataset), STATISTICS_SAMPLES))]).to(torch.float64)
        return data.mean(0), data.var(0, correction=0)
    raise GenkitError(
        f"amed.afs_from=data needs the field's training data, which field.kind={config.kind} does not name; "
        "use amed.afs_from=zero_mean"
    )


def start_states(field: Field, count: int, seed: int) -> Tensor:
    """`count` EDM start states sigma_max z of the field, z ~ N(0, I) drawn in float64 from one seeded generator."""
    z = torch.randn((count, *field.shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return field.edm_path.start(z).to(field.dtype)


def start_conditions(field: Field | None, count: int, seed: int) -> Tensor | None:
    """The classes of start_states' draws for a conditional field (drawn as in data, genkit.noise); None without."""
    return None if field is None else field.draw_conditions(list(range(count)), seed)


def teacher_states(field: Field, x: Tensor, settings: AmedSettings, timesteps: Tensor) -> Tensor:
    """The teacher's state at every student time: one solve on the nested `timesteps`, without AFS or predictor."""
    return teacher_trajectory(field.edm, x, timesteps, settings.teacher_steps + 1, settings.teacher)[0]


@dataclass
class PreparedPredictor:
    """A prepared predictor with the `features` the solvers read: a DDP wrapper hides the module's attributes, and
    a bottleneck predictor would be fed slope features under two processes without it."""

    module: nn.Module
    features: str

    def __call__(self, features: Tensor, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.module(features, t, t_next)


class AmedTrainer:
    """One predictor, one Adam; a loop step distils every interval once on a batch of noise."""

    ema_model = None

    def __init__(
        self,
        config: AmedRunConfig,
        field: Field,
        device: torch.device,
        afs_statistics: tuple[Tensor, Tensor] | None = None,
    ):
        """`afs_statistics`: the data's (mean, variance) for amed.afs_from=data, else data_statistics(config.field).

        A conditional `field` is distilled at each noise draw's class (drawn as in data) with config.field's guidance.
        """
        self.config, self.settings = config, config.amed
        self.conditional = field if field.conditioning else None
        self.guidance = config.field.guidance_setting()
        # The field's id and paths, whatever the classes: a conditional one bound to a placeholder class.
        self.field = field
        if self.conditional:
            self.field = field.bind(field.draw_conditions([0], 0), self.guidance, DRAWN_AS_IN_DATA)
        field = self.field
        if self.settings.afs_from == "data":
            predictor = PredictorModel(field.field_id, self.settings.tied(), list(field.shape), field.made_for())
            predictor.set_afs_statistics(*(afs_statistics or data_statistics(config.field)))
        else:
            predictor = PredictorModel(field.field_id, self.settings.tied(), made_for=field.made_for())
        self.models = {"predictor": predictor}
        self.optimizers = {"predictor": config.optimizer.build(predictor.parameters())}
        self.saved_schedule = saved_student_schedule(self.settings, field)
        if self.saved_schedule is None:
            self.timesteps = self.settings.timesteps(field.edm_path)
            self.teacher_timesteps = nested_timesteps(
                field.edm_path, self.settings.schedule, self.settings.teacher_steps, self.settings.num_steps
            )
        else:
            self.timesteps = self.saved_schedule.timesteps
            self.teacher_timesteps = nested_timesteps(field.edm_path, self.timesteps, self.settings.teacher_steps)
        if self.settings.learn_timesteps:
            learned = LearnedTimesteps(self.timesteps.tolist())
            self.models["timesteps"] = learned
            # LD3's optimizer for the logits (samplers/ld3.py): Adam without weight decay at its own step size.
            self.optimizers["timesteps"] = torch.optim.Adam(learned.parameters(), lr=self.settings.timestep_lr)
        # Noise no training batch draws: the seed is past the training stream's.
        self.validation_noise = start_states(field, VALIDATION_SAMPLES, config.train.seed + 1).to(device)
        labels = start_conditions(self.conditional, VALIDATION_SAMPLES, config.train.seed + 1)
        self.validation_field = self.bound(labels)
        self.validation_target, self.midpoint_rmse = None, None

    def bound(self, labels: Tensor | None) -> Field:
        """The field to distil on for a batch: the conditional one at the batch's classes, else the field."""
        return self.field if labels is None else self.conditional.bind(labels, self.guidance)

    def optimizer_steps(self, steps: int) -> dict[str, int]:
        """Greedy: one predictor update per student interval, N - 1 a loop step; end to end: one a loop step."""
        if self.settings.loss == "end_to_end":
            return {name: steps for name in self.models}
        return {"predictor": steps * (self.settings.num_steps - 1)}

    def student_timesteps(self, context: StepContext) -> Tensor:
        """The student's N sigmas: the learned ones now with amed.learn_timesteps, else the fixed ones."""
        return context.unwrap("timesteps")().detach() if self.settings.learn_timesteps else self.timesteps

    def trained_predictor(self, context: StepContext) -> "PreparedPredictor":
        """The predictor as the loop prepared it (DDP-wrapped under several processes), for the solvers to call."""
        return PreparedPredictor(self.models["predictor"], context.unwrap("predictor").features)

    def train_step(self, batch: list[Tensor], context: StepContext) -> dict[str, Tensor]:
        noise, labels = batch if len(batch) == 2 else (batch[0], None)
        field = self.bound(labels)
        with torch.no_grad():
            states = teacher_states(field, noise, self.settings, self.teacher_timesteps)
        if self.settings.loss == "end_to_end":
            # The wrapped models run the solve, so that two processes average their gradients.
            options = self.settings.solver_options(context.unwrap("predictor"))
            options["predictor"] = self.trained_predictor(context)
            timesteps = self.models["timesteps"]() if self.settings.learn_timesteps else self.timesteps
            student = SOLVERS[self.settings.solver].function(field.edm, states[0], timesteps.to(noise), **options)
            loss = (student - states[-1]).pow(2).flatten(1).sum(1).mean()
            context.update(tuple(self.models), loss)
            return {"loss": loss.detach()}
        predictor, velocity = self.trained_predictor(context), field.edm
        afs_options = context.unwrap("predictor").afs_options()
        x, history, losses = states[0], [], []
        for n in range(self.settings.num_steps - 1):
            t, t_next = self.timesteps[n].to(noise), self.timesteps[n + 1].to(noise)
            afs = self.settings.afs and n == 0
            if self.settings.solver == "amed":
                student = amed(velocity, states[n], torch.stack([t, t_next]), predictor, afs=afs, **afs_options)
            else:
                start = x if self.settings.multistep else states[n]
                student, history = amed_plugin_step(
                    velocity,
                    start,
                    t,
                    t_next,
                    predictor,
                    history,
                    self.settings.base,
                    afs,
                    self.settings.max_order,
                    n,
                    **afs_options,
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
        velocity, noise = self.validation_field.edm, self.validation_noise
        if self.validation_target is None:
            self.validation_target = teacher_states(
                self.validation_field, noise, self.settings, self.teacher_timesteps
            )[-1]
            self.midpoint_rmse = rmse(dpm_solver_2(velocity, noise, self.timesteps))
        predictor = context.unwrap("predictor")
        rs = []
        options = self.settings.solver_options(predictor)
        callback = lambda info: rs.append(info["r"].mean().item())  # noqa: E731
        timesteps = self.student_timesteps(context).to(noise)
        student = SOLVERS[self.settings.solver].function(velocity, noise, timesteps, callback=callback, **options)
        metrics = {"rmse_to_teacher": rmse(student), "rmse_midpoint_to_teacher": self.midpoint_rmse}
        metrics |= {f"t_{n}": t for n, t in enumerate(timesteps.tolist())} if self.settings.learn_timesteps else {}
        return metrics | {f"r_{n}": r for n, r in enumerate(rs)}

    def student_schedule(self, context: StepContext) -> SavedSchedule | None:
        """The schedule the predictor runs on when it is not the named one: learned with it, or amed.schedule_file."""
        if not self.settings.learn_timesteps:
            return self.saved_schedule
        init = self.saved_schedule.name if self.saved_schedule else self.settings.schedule
        settings = {"method": "amed_end_to_end", "init": init, "timestep_lr": self.settings.timestep_lr}
        settings |= {"steps": self.config.train.steps}
        name = f"learned_{self.settings.solver}_nfe{self.settings.nfe}_{init}"
        timesteps = self.student_timesteps(context).double().cpu()
        return SavedSchedule(self.field.field_id, "sigma", timesteps, self.settings.solver, name, settings)

    def export(self, context: StepContext, folder: Path) -> None:
        """The predictor's folder (and the schedule it runs on, if not the named one), written completely or not at
        all."""
        with atomic(folder) as temporary:
            context.unwrap("predictor").save_pretrained(temporary)
            schedule = self.student_schedule(context)
            if schedule is not None:
                save_schedule(schedule, temporary / PREDICTOR_SCHEDULE)


def train(config: AmedRunConfig) -> dict[str, float]:
    """Distil a predictor as `config` says; it ends, with its field id and settings, in runs/<name>/model."""
    config = config.resolved()
    loop = Loop(config.train, config.run_dir, config_dict(config))
    field = config.field.load(loop.device, loop.dtype)
    paths = field.for_draws(1, 0, config.field.guidance_setting()) if field.conditioning else field
    noise = start_states(paths, config.num_samples, config.train.seed)
    labels = start_conditions(field if field.conditioning else None, config.num_samples, config.train.seed)
    dataset = TensorDataset(noise) if labels is None else TensorDataset(noise, labels)
    return loop.run(AmedTrainer(config, field, loop.device), dataset)
