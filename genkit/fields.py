"""A velocity model loaded with its time conventions: the one place that turns noise into data samples.

A `Field` holds the velocity in each form it can be solved in, each with its path (genkit.paths): where a solve
starts from standard normal noise, which schedules span its time, and how the final state maps to data. A flow run
is solved in rectified time on `uniform` and in EDM form (through RectifiedAsEDM) on the sigma schedules; an
analytic mixture in either; a diffusers model in EDM form only. `genkit sample`, `genkit compare` and AMED
distillation all solve through `Field.solve`, and a schedule or solver that does not fit the field is one error.

`FieldConfig` names a field in a config: `mixture` (an analytic GaussianMixture, float64), `flow_run` (the
model of a genkit flow or ReFlow run) or `diffusers` (a folder or Hub id with `unet/` and `scheduler/`, as
DDPMPipeline.save_pretrained writes it). Each field has an id that names the exact weights, so that what was
distilled for one model is refused for another.

A conditional field (a class-conditional flow run, a conditional diffusers U-Net, a mixture conditioned on its
component) has a `conditioning` and no forms of its own: `field.bind(condition, guidance)` is the plain field of
its model at one condition a sample, guided (genkit.guidance), which every solver, AMED and schedule search runs on
unchanged. `field.draw_conditions(indices, seed)` draws sample i's class as in the training data.

A latent flow (a flow trained on a tokenizer's latents, genkit.latents) is solved in latent space; its `decode` maps
the final state to images through the tokenizer's decoder (optionally snapped to the nearest code first), so what
`solve` returns, and what sampling and comparisons score, are images.
"""

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

import samplers
from genkit.config import check_choice, ranged
from genkit.data import data_shape
from genkit.errors import GenkitError
from genkit.files import weights_digest
from genkit.gaussian_mixture import GaussianMixture
from genkit.guidance import ConditionalVelocity, Guidance, Guided
from genkit.latents import LatentCodec
from genkit.models import load_velocity_model
from genkit.noise import initial_conditions
from genkit.paths import EDMPath, ProbabilityPath, RectifiedPath
from genkit.runs import Run
from genkit.schedules.file import SavedSchedule, time_of
from genkit.velocity import RectifiedAsEDM, Velocity

FIELD_KINDS = ("mixture", "flow_run", "diffusers")
SCHEDULER_FILE = "scheduler_config.json"
Form = tuple[Velocity, ProbabilityPath]
DRAWN_AS_IN_DATA = "classes drawn as in the training data"  # Field.conditions of draws from draw_conditions


@dataclass
class Conditioning:
    """What a conditional model takes: `model(x, t, c)` in its native time (`sigma(t)` maps that time to sigma), the
    `null` condition of one sample, `forms` of a bound velocity, and its K classes: their share of the training data
    (`frequencies` [K]) and, for embedding models, the embedding each class index names (`table` [K, *null.shape])."""

    model: ConditionalVelocity
    null: Tensor
    forms: Callable[[Velocity], list[Form]]
    sigma: Callable[[Tensor], Tensor]
    frequencies: Tensor
    table: Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.frequencies)


@dataclass
class Field:
    """A velocity model in each form it can be solved in (native first), the shape and dtype of its states, its id;
    a conditional model's `conditioning` (then `forms` is empty until bound), a bound one's `guidance` and how its
    `conditions` were chosen (what a schedule or predictor made on it records); a latent flow's `decode` to images."""

    field_id: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    forms: list[Form]
    conditioning: Conditioning | None = None
    guidance: Guidance | None = None
    conditions: str = ""
    decode: Callable[[Tensor], Tensor] | None = None
    guided: Guided | None = None  # a bound field's guided velocity, which counts its network evaluations

    @property
    def schedules(self) -> tuple[str, ...]:
        return tuple(schedule for _, path in self.forms for schedule in path.schedules)

    def bind(self, condition: Tensor, guidance: Guidance | None = None, conditions: str = "given") -> "Field":
        """The plain field of this conditional model at one condition a sample, guided by `guidance` (default w = 1).

        `condition` is class indices [B] (long, 0..K-1) or, for an embedding model, embeddings [B, *null.shape];
        `conditions` says how they were chosen.
        """
        conditioning, guidance = self.conditioning, guidance or Guidance()
        if conditioning is None:
            raise GenkitError(
                f"this model ({self.field_id}) is unconditional: it takes no class or guidance; drop them"
            )
        if not condition.is_floating_point():
            condition = condition.long()
            outside = condition[(condition < 0) | (condition >= conditioning.num_classes)]
            if len(outside):
                raise GenkitError(
                    f"class {outside[0].item()} is out of range: the model has classes "
                    f"0..{conditioning.num_classes - 1}"
                )
            if conditioning.table is not None:
                condition = conditioning.table[condition.cpu()]
        if tuple(condition.shape[1:]) != tuple(conditioning.null.shape):
            kind = "embeddings" if conditioning.null.shape else "class indices"
            raise GenkitError(
                f"a condition of shape {list(condition.shape)} does not fit this model, which takes "
                f"[batch, {', '.join(map(str, conditioning.null.shape))}] ({kind})"
            )
        guided = Guided(conditioning.model, condition, conditioning.null, guidance, conditioning.sigma)
        field_id = f"{self.field_id} {guidance.label}"
        forms = conditioning.forms(guided)
        return Field(field_id, self.shape, self.dtype, forms, None, guidance, conditions, self.decode, guided)

    def for_draws(self, count: int, seed: int, guidance: Guidance | None = None) -> "Field":
        """The field a batch of draws 0..count-1 is solved on: a conditional one bound to their classes (drawn as in
        data from `seed`) with `guidance`, an unconditional one itself (a guidance is refused)."""
        if self.conditioning is None:
            if guidance is not None:
                raise GenkitError(f"this model ({self.field_id}) is unconditional: it takes no guidance; drop it")
            return self
        return self.bind(self.draw_conditions(list(range(count)), seed), guidance, DRAWN_AS_IN_DATA)

    def made_for(self) -> dict:
        """What a schedule or predictor made on this field records of its conditions: the guidance and how the
        conditions were chosen (nothing for an unconditional field)."""
        return {} if self.guidance is None else {"guidance": self.guidance.label, "conditions": self.conditions}

    def draw_conditions(self, indices: list[int], seed: int) -> Tensor:
        """Sample i's class index, drawn as in the training data from the generator of (seed, i) (genkit.noise)."""
        if self.conditioning is None:
            raise GenkitError(f"this model ({self.field_id}) is unconditional: it has no classes to draw")
        return initial_conditions(indices, self.conditioning.frequencies, seed)

    def _forms(self) -> list[Form]:
        if self.conditioning is not None:
            raise GenkitError(
                f"this model is class-conditional ({self.conditioning.num_classes} classes): give it a class "
                "(genkit sample --class K or --classes all; Field.bind in code) and, if you like, a guidance weight"
            )
        return self.forms

    def form(self, schedule: "str | SavedSchedule", solver: str = "euler") -> tuple[Velocity, ProbabilityPath]:
        """The velocity and path a schedule's name spans, or whose start and end a saved schedule's timesteps are;
        one clear error when the field or the solver cannot use it."""
        if isinstance(schedule, SavedSchedule):
            ends = schedule.timesteps[0].item(), schedule.timesteps[-1].item()
            for _, path in self._forms():
                spans = zip(ends, (path.t_start, path.t_end), strict=True)
                if all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in spans):
                    return self.form(path.schedules[0], solver)
            spans = ", ".join(f"{time_of(path)} time from {path.t_start:g} to {path.t_end:g}" for _, path in self.forms)
            raise GenkitError(f"timesteps from {ends[0]:g} to {ends[1]:g} fit no form of this field ({spans})")
        for velocity, path in self._forms():
            if schedule in path.schedules:
                if samplers.solver_spec(solver).sigma_space and not isinstance(path, EDMPath):
                    sigma = ", ".join(s for s in self.schedules if s not in path.schedules)
                    raise GenkitError(f"{solver} works in sigma space; pick a sigma schedule ({sigma}), not {schedule}")
                return velocity, path
        raise GenkitError(f"schedule {schedule} does not fit this field ({self.field_id}); it takes {self.schedules}")

    @property
    def edm(self) -> Velocity:
        """The velocity in EDM form (time is sigma), which AMED and the sigma-space solvers need."""
        return self.form(EDMPath.schedules[0])[0]

    @property
    def edm_path(self) -> EDMPath:
        """The sigma range and data map of the EDM form."""
        return self.form(EDMPath.schedules[0])[1]

    def default_schedule(self, solver: str) -> str:
        """The native time's schedule for a solver that can use it, else the solver's usual sigma schedule."""
        spec = samplers.solver_spec(solver)
        native = self.conditioning.forms(None)[0][1] if self.conditioning else self.forms[0][1]
        return (
            native.schedules[0] if isinstance(native, RectifiedPath) and not spec.sigma_space else spec.default_schedule
        )

    def steps(self, solver: str, nfe: int, schedule: str) -> int:
        """How many steps of `schedule` make `solver` spend exactly `nfe` evaluations on this field."""
        path = self.form(schedule, solver)[1]
        return samplers.schedule_length(solver, nfe, schedule, path.schedule_options()) - 1

    def solve(
        self,
        z: Tensor,
        solver: str,
        nfe: int | None,
        schedule: "str | SavedSchedule",
        solver_opts: dict | None = None,
        callback=None,
    ) -> Tensor:
        """Data samples from noise z: `solver` at exactly `nfe` evaluations, mapped to data.

        `schedule` is a schedule's name, or a saved schedule whose timesteps the solver runs on exactly (then `nfe`,
        when given, must be what it spends on them); a learned solver's (a saved schedule with corrections) runs its
        own base solver with its correction table.
        """
        velocity, path = self.form(schedule, solver)
        times = schedule.timesteps if isinstance(schedule, SavedSchedule) else schedule
        if isinstance(schedule, SavedSchedule) and schedule.corrections is not None:
            if solver != schedule.solver:
                raise GenkitError(
                    f"{schedule.name} is a learned solver for {schedule.solver}: solve it with {schedule.solver}, "
                    f"not {solver}"
                )
            solver_opts = (solver_opts or {}) | {"corrections": schedule.corrections}
        x = path.start(z.to(self.dtype))
        x = samplers.solve(velocity, x, solver, nfe, times, path.schedule_options(), solver_opts, callback)
        return self.decoded(path.to_data(x))

    def decoded(self, x: Tensor) -> Tensor:
        """A final state in data space as a sample: decoded to images for a latent flow, as it is otherwise."""
        return x if self.decode is None else self.decode(x)

    def reference(self, z: Tensor, schedule: str, tolerance: float, method: str = "DOP853") -> tuple[Tensor, int]:
        """Data from noise z by scipy's `method` at rtol = atol = tolerance in the time `schedule` spans, and the
        evaluations it spent."""
        velocity, path = self.form(schedule)
        counting = samplers.CountingVelocity(velocity)
        x = samplers.reference(
            counting, path.start(z.to(self.dtype)), path.t_start, path.t_end, tolerance, tolerance, method
        )
        return self.decoded(path.to_data(x)), counting.nfe


@dataclass
class FieldConfig:
    """`kind` mixture (components, shape, seed, diagonal, conditional), flow_run (path: a run; snap: a latent flow's
    latents snapped to the nearest code before decoding), diffusers (path: folder, Hub id; embeddings: a tensor
    file). A conditional model is solved at classes drawn as in its data and guided with `guidance` (weight;
    `guidance_interval`: [lo, hi] sigmas where it applies)."""

    kind: str = "mixture"
    components: int = ranged(8, minimum=1)
    shape: list[int] = ranged(lambda: [64], minimum=1)
    seed: int = ranged(0, minimum=0)
    diagonal: bool = True
    conditional: bool = False  # mixture: conditioned on its component (K + 1 classes with the null one)
    path: str = ""
    embeddings: str = ""  # diffusers UNet2DConditionModel: safetensors file of `embeddings` [K, L, D] and `null` [L, D]
    guidance: float = ranged(1.0, minimum=0)
    guidance_interval: list[float] | None = ranged(None, minimum=0)
    snap: bool = False

    def __post_init__(self):
        check_choice("field.kind", self.kind, FIELD_KINDS)
        if self.kind != "mixture" and not self.path:
            raise GenkitError(f"field.kind={self.kind} needs field.path, the folder (or Hub id) of the model")
        if self.conditional and self.kind != "mixture":
            raise GenkitError(
                "field.conditional is for kind=mixture; a run or a U-Net is conditional as it was trained"
            )
        if self.guidance_interval is not None and len(self.guidance_interval) != 2:
            raise GenkitError(f"field.guidance_interval must be [lo, hi] sigmas, got {self.guidance_interval}")
        self.guidance_setting()

    def guidance_setting(self) -> Guidance:
        """The guidance a conditional field of this config is solved with."""
        interval = None if self.guidance_interval is None else tuple(self.guidance_interval)
        return Guidance(self.guidance, interval)

    def load(self, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Field:
        """The field on `device`, its networks frozen in eval mode (and cast to `dtype` when given); a guidance other
        than the default for an unconditional model is refused."""
        field = self._load(device, dtype)
        if field.conditioning is None and (self.guidance != 1 or self.guidance_interval is not None):
            raise GenkitError(
                f"field.guidance and field.guidance_interval apply to conditional models; this one ({field.field_id}) "
                "is unconditional: drop them"
            )
        return field

    def _load(self, device: torch.device | str, dtype: torch.dtype | None) -> Field:
        if self.kind == "mixture":
            mixture = GaussianMixture.random(self.components, tuple(self.shape), self.seed, self.diagonal)
            field_id = (
                f"gmm(components={self.components}, shape={list(self.shape)}, seed={self.seed}, "
                f"diagonal={self.diagonal})"
            )
            if self.conditional:
                return conditional_mixture(mixture, field_id + " conditional")
            forms = [(mixture.edm, EDMPath()), (mixture.rectified, RectifiedPath())]
            return Field(field_id, tuple(self.shape), torch.float64, forms)
        if self.kind == "flow_run":
            return load_flow_run(Path(self.path), device, dtype, self.snap)
        from genkit.diffusers_field import load_diffusers  # it builds on this module's Field

        return load_diffusers(self.path, self.embeddings, device, dtype)


def conditional_mixture(mixture: GaussianMixture, field_id: str) -> Field:
    """A mixture conditioned on its component, in EDM form: class k is component k, the null class K the mixture."""
    conditioning = Conditioning(
        model=mixture.conditional_edm,
        null=torch.tensor(mixture.num_components),
        forms=lambda velocity: [(velocity, EDMPath())],
        sigma=lambda sigma: sigma,
        frequencies=mixture.log_weights.exp(),
    )
    return Field(field_id, mixture.shape, torch.float64, [], conditioning)


def frozen(network: nn.Module, device: torch.device | str, dtype: torch.dtype | None = None) -> nn.Module:
    """The network on `device` (in `dtype`) in eval mode with gradients off for its parameters, not its inputs."""
    # A dtype only when given: diffusers warns about a cast whenever `to` is passed one, None included.
    network = network.to(device) if dtype is None else network.to(device, dtype)
    return network.eval().requires_grad_(False)


def load_flow_run(
    run: Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None, snap: bool = False
) -> Field:
    """A genkit flow (or last ReFlow stage) model: rectified time natively, EDM form through RectifiedAsEDM; a latent
    flow's samples decoded by its tokenizer (`snap`: each latent snapped to the nearest code first)."""
    run = Run(run).last_stage
    model = frozen(load_velocity_model(run.model), device, dtype)
    # The state at sigma_min is x~ = x_t / t with t = 1 / (1 + sigma_min): data is x~ / (1 + sigma_min).
    edm = EDMPath(data_scale=1 / (1 + EDMPath().sigma_min))
    forms = lambda velocity: [(velocity, RectifiedPath()), (RectifiedAsEDM(velocity), edm)]  # noqa: E731
    field_id, shape, state_dtype, decode = flow_run_id(run.folder), data_shape(run.data), dtype or torch.float32, None
    if run.latents.is_file():
        codec, shape = LatentCodec.recorded(run.latents)
        frozen(codec.tokenizer, device, dtype)
        decode = lambda x: codec.decode(x, snap)  # noqa: E731
    elif snap:
        raise GenkitError(
            f"{run.folder} holds a flow on images, not on a tokenizer's latents: there is no code to snap to"
        )
    classes = getattr(model, "num_classes", 0)
    if not classes:
        return Field(field_id, shape, state_dtype, forms(model), decode=decode)
    frequencies = torch.full((classes,), 1 / classes, dtype=torch.float64)
    if run.classes.is_file():
        frequencies = torch.tensor(json.loads(run.classes.read_text())["frequencies"], dtype=torch.float64)
    conditioning = Conditioning(
        model=model,
        null=torch.tensor(classes),
        forms=forms,
        sigma=lambda t: (1 - t) / t,  # t = 1 / (1 + sigma) (RectifiedAsEDM)
        frequencies=frequencies,
    )
    return Field(field_id, shape, state_dtype, [], conditioning, decode=decode)


def flow_run_id(run: Path) -> str:
    """The id of the model of a flow run (its last stage for a ReFlow run): the digest of its weights."""
    return f"flow_run(sha256={weights_digest(*sorted(Run(run).last_stage.model.glob('*.safetensors')))})"


def load_folder(folder: Path, device: torch.device | str = "cpu") -> Field:
    """The field of a flow or ReFlow run folder, or of a diffusers model folder (unet/, scheduler/)."""
    kind = "diffusers" if Run(folder).is_diffusers else "flow_run"
    return FieldConfig(kind=kind, path=str(folder)).load(device)
