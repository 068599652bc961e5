"""The velocity models a sampler or a distillation can be pointed at by config, each loaded in EDM form.

`mixture`: an analytic GaussianMixtureField (float64); `flow_run`: the model of a genkit flow or ReFlow run,
converted with RectifiedAsEDM; `diffusers`: a local folder with `unet/` (UNet2DModel) and `scheduler/`
(a DDPM-family scheduler config), through DiffusersField. Each comes with an id that names the exact weights,
so that what was distilled for one model is refused for another.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn

from genkit.config import check_choice, load_config, ranged
from genkit.data import data_shape
from genkit.errors import GenkitError
from genkit.gaussian_mixture import GaussianMixtureField
from genkit.train.flow import load_velocity_model
from genkit.velocity import DiffusersField, RectifiedAsEDM, VelocityModel

FIELD_KINDS = ("mixture", "flow_run", "diffusers")
SCHEDULER_FILE = "scheduler_config.json"


@dataclass
class LoadedField:
    """An EDM-form field with the shape and dtype of its samples and the id of the model behind it."""

    edm: VelocityModel
    shape: tuple[int, ...]
    dtype: torch.dtype
    field_id: str


@dataclass
class FieldConfig:
    """`kind` mixture (components, shape, seed, diagonal), flow_run (path: a run folder) or diffusers (path)."""

    kind: str = "mixture"
    components: int = ranged(8, minimum=1)
    shape: list[int] = ranged(lambda: [64], minimum=1)
    seed: int = ranged(0, minimum=0)
    diagonal: bool = True
    path: str = ""

    def __post_init__(self):
        check_choice("field.kind", self.kind, FIELD_KINDS)
        if self.kind != "mixture" and not self.path:
            raise GenkitError(f"field.kind={self.kind} needs field.path, the folder of the model")

    def load(self, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> LoadedField:
        """The field on `device`, its networks frozen in eval mode (and cast to `dtype` when given)."""
        if self.kind == "mixture":
            mixture = GaussianMixtureField.random(self.components, tuple(self.shape), self.seed, self.diagonal)
            field_id = (
                f"gmm(components={self.components}, shape={list(self.shape)}, seed={self.seed}, "
                f"diagonal={self.diagonal})"
            )
            return LoadedField(mixture.edm, tuple(self.shape), torch.float64, field_id)
        if self.kind == "flow_run":
            return load_flow_run(Path(self.path), device, dtype)
        return load_diffusers(Path(self.path), device, dtype)


def weights_digest(*paths: Path) -> str:
    """The first 16 hex digits of the SHA-256 of these files' bytes, in order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def model_folder(run: Path) -> Path:
    """The folder holding the model of a flow run, or of the last trained stage of a ReFlow run."""
    if (run / "model").is_dir():
        return run
    stages = sorted((p.parent for p in run.glob("*/model")), key=lambda p: p.stat().st_mtime)
    if not stages:
        raise GenkitError(f"{run} holds no trained velocity model (no model/ folder); train it first")
    return stages[-1]


def frozen(network: nn.Module, device: torch.device | str, dtype: torch.dtype | None = None) -> nn.Module:
    """The network on `device` (in `dtype`) in eval mode with gradients off for its parameters, not its inputs."""
    return network.to(device, dtype).eval().requires_grad_(False)


def load_flow_run(run: Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> LoadedField:
    """A genkit flow (or last ReFlow stage) model in EDM form: sigma = (1 - t) / t, x~ = x_t / t."""
    folder = model_folder(run)
    model = frozen(load_velocity_model(folder / "model"), device, dtype)
    shape = data_shape(load_config(folder / "config.yaml").data)
    return LoadedField(RectifiedAsEDM(model), shape, dtype or torch.float32, flow_run_id(folder))


def flow_run_id(folder: Path) -> str:
    """The id of the model in a flow run's `model_folder`: the digest of its weights."""
    return f"flow_run(sha256={weights_digest(*sorted((folder / 'model').glob('*.safetensors')))})"


def load_diffusers(folder: Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> LoadedField:
    """A diffusers UNet2DModel and its scheduler's noise table from a local folder (unet/, scheduler/)."""
    unet_dir, scheduler_dir = folder / "unet", folder / "scheduler"
    if not unet_dir.is_dir() or not scheduler_dir.is_dir():
        raise GenkitError(
            f"{folder} is not a local diffusers model folder with unet/ and scheduler/ (as DDPMPipeline."
            "save_pretrained writes); genkit does not download models, save or download one there first"
        )
    unet = frozen(UNet2DModel.from_pretrained(unet_dir), device, dtype)
    scheduler = DDPMScheduler.from_pretrained(scheduler_dir)
    size = unet.config.sample_size
    shape = (unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
    files = sorted(unet_dir.glob("*.safetensors")) + sorted(unet_dir.glob("*.bin")) + [scheduler_dir / SCHEDULER_FILE]
    field_id = f"diffusers(sha256={weights_digest(*files)})"
    return LoadedField(DiffusersField(unet, scheduler), shape, dtype or torch.float32, field_id)
