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
"""

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError
from torch import Tensor, nn

import samplers
from genkit.config import check_choice, ranged
from genkit.data import data_shape
from genkit.errors import GenkitError
from genkit.gaussian_mixture import GaussianMixture
from genkit.models import load_velocity_model
from genkit.paths import EDMPath, ProbabilityPath, RectifiedPath
from genkit.runs import Run
from genkit.schedules.file import SavedSchedule, time_of
from genkit.velocity import DiffusersVelocity, RectifiedAsEDM, Velocity

FIELD_KINDS = ("mixture", "flow_run", "diffusers")
SCHEDULER_FILE = "scheduler_config.json"


@dataclass
class Field:
    """A velocity model in each form it can be solved in (native first), the shape and dtype of its samples, its id."""

    field_id: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    forms: list[tuple[Velocity, ProbabilityPath]]

    @property
    def schedules(self) -> tuple[str, ...]:
        return tuple(schedule for _, path in self.forms for schedule in path.schedules)

    def form(self, schedule: "str | SavedSchedule", solver: str = "euler") -> tuple[Velocity, ProbabilityPath]:
        """The velocity and path a schedule's name spans, or whose start and end a saved schedule's timesteps are;
        one clear error when the field or the solver cannot use it."""
        if isinstance(schedule, SavedSchedule):
            ends = schedule.timesteps[0].item(), schedule.timesteps[-1].item()
            for _, path in self.forms:
                spans = zip(ends, (path.t_start, path.t_end), strict=True)
                if all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in spans):
                    return self.form(path.schedules[0], solver)
            spans = ", ".join(f"{time_of(path)} time from {path.t_start:g} to {path.t_end:g}" for _, path in self.forms)
            raise GenkitError(f"timesteps from {ends[0]:g} to {ends[1]:g} fit no form of this field ({spans})")
        for velocity, path in self.forms:
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
        spec, native = samplers.solver_spec(solver), self.forms[0][1]
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
        when given, must be what it spends on them).
        """
        velocity, path = self.form(schedule, solver)
        times = schedule.timesteps if isinstance(schedule, SavedSchedule) else schedule
        x = path.start(z.to(self.dtype))
        x = samplers.solve(velocity, x, solver, nfe, times, path.schedule_options(), solver_opts, callback)
        return path.to_data(x)

    def reference(self, z: Tensor, schedule: str, tolerance: float, method: str = "DOP853") -> tuple[Tensor, int]:
        """Data from noise z by scipy's `method` at rtol = atol = tolerance in the time `schedule` spans, and the
        evaluations it spent."""
        velocity, path = self.form(schedule)
        counting = samplers.CountingVelocity(velocity)
        x = samplers.reference(
            counting, path.start(z.to(self.dtype)), path.t_start, path.t_end, tolerance, tolerance, method
        )
        return path.to_data(x), counting.nfe


@dataclass
class FieldConfig:
    """`kind` mixture (components, shape, seed, diagonal), flow_run (path: a run), diffusers (path: folder, Hub id)."""

    kind: str = "mixture"
    components: int = ranged(8, minimum=1)
    shape: list[int] = ranged(lambda: [64], minimum=1)
    seed: int = ranged(0, minimum=0)
    diagonal: bool = True
    path: str = ""

    def __post_init__(self):
        check_choice("field.kind", self.kind, FIELD_KINDS)
        if self.kind != "mixture" and not self.path:
            raise GenkitError(f"field.kind={self.kind} needs field.path, the folder (or Hub id) of the model")

    def load(self, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Field:
        """The field on `device`, its networks frozen in eval mode (and cast to `dtype` when given)."""
        if self.kind == "mixture":
            mixture = GaussianMixture.random(self.components, tuple(self.shape), self.seed, self.diagonal)
            field_id = (
                f"gmm(components={self.components}, shape={list(self.shape)}, seed={self.seed}, "
                f"diagonal={self.diagonal})"
            )
            forms = [(mixture.edm, EDMPath()), (mixture.rectified, RectifiedPath())]
            return Field(field_id, tuple(self.shape), torch.float64, forms)
        if self.kind == "flow_run":
            return load_flow_run(Path(self.path), device, dtype)
        return load_diffusers(self.path, device, dtype)


def weights_digest(*paths: Path) -> str:
    """The first 16 hex digits of the SHA-256 of these files' bytes, in order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def frozen(network: nn.Module, device: torch.device | str, dtype: torch.dtype | None = None) -> nn.Module:
    """The network on `device` (in `dtype`) in eval mode with gradients off for its parameters, not its inputs."""
    return network.to(device, dtype).eval().requires_grad_(False)


def load_flow_run(run: Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Field:
    """A genkit flow (or last ReFlow stage) model: rectified time natively, EDM form through RectifiedAsEDM."""
    run = Run(run).last_stage
    model = frozen(load_velocity_model(run.model), device, dtype)
    # The state at sigma_min is x~ = x_t / t with t = 1 / (1 + sigma_min): data is x~ / (1 + sigma_min).
    edm = EDMPath(data_scale=1 / (1 + EDMPath().sigma_min))
    forms = [(model, RectifiedPath()), (RectifiedAsEDM(model), edm)]
    return Field(flow_run_id(run.folder), data_shape(run.data), dtype or torch.float32, forms)


def flow_run_id(run: Path) -> str:
    """The id of the model of a flow run (its last stage for a ReFlow run): the digest of its weights."""
    return f"flow_run(sha256={weights_digest(*sorted(Run(run).last_stage.model.glob('*.safetensors')))})"


def local_diffusers_folder(source: str) -> Path:
    """A local folder with unet/ and scheduler/: `source` itself, or the Hub snapshot of a model id."""
    if Path(source).is_dir():
        return Path(source)
    try:
        return Path(snapshot_download(source, allow_patterns=["unet/*", "scheduler/*"]))
    except HFValidationError:
        raise GenkitError(f"field.path={source} is neither a local folder nor a Hugging Face Hub model id") from None
    except Exception as error:  # offline, unknown id, no access: the Hub client raises many types
        cause = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise GenkitError(
            f"field.path={source} is not a local folder and could not be fetched from the Hugging Face Hub ({cause}); "
            "on a machine with network access run `huggingface-cli download "
            f"{source}` (then it loads offline from the cache), or point field.path at a local folder"
        ) from None


def load_diffusers(source: str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Field:
    """A diffusers UNet2DModel and its scheduler's noise table (a local folder or Hub id with unet/, scheduler/)."""
    folder = Run(local_diffusers_folder(source))
    unet_dir, scheduler_dir = folder.unet, folder.scheduler
    if not unet_dir.is_dir() or not scheduler_dir.is_dir():
        raise GenkitError(
            f"{source} is not a diffusers model folder with unet/ and scheduler/ (as DDPMPipeline.save_pretrained "
            "writes it); save or download one there first"
        )
    unet = frozen(UNet2DModel.from_pretrained(unet_dir), device, dtype)
    scheduler = DDPMScheduler.from_pretrained(scheduler_dir)
    size = unet.config.sample_size
    shape = (unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
    files = sorted(unet_dir.glob("*.safetensors")) + sorted(unet_dir.glob("*.bin")) + [scheduler_dir / SCHEDULER_FILE]
    field_id = f"diffusers(sha256={weights_digest(*files)})"
    return Field(field_id, shape, dtype or torch.float32, [(DiffusersVelocity(unet, scheduler), EDMPath())])


def load_folder(folder: Path, device: torch.device | str = "cpu") -> Field:
    """The field of a flow or ReFlow run folder, or of a diffusers model folder (unet/, scheduler/)."""
    kind = "diffusers" if Run(folder).is_diffusers else "flow_run"
    return FieldConfig(kind=kind, path=str(folder)).load(device)
