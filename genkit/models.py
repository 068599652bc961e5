"""One model I/O layer: every model genkit trains is saved and loaded as a diffusers model folder.

The tokenizer, the MLP velocity, the GAN nets and the AMED predictor are diffusers `ModelMixin` + `ConfigMixin`
classes, and a flow's U-Net is a plain diffusers `UNet2DModel`: each has `save_pretrained`, `from_pretrained` and
`push_to_hub`, and a folder is `config.json` (naming the class) + safetensors weights. diffusers rather than
huggingface_hub's `PyTorchModelHubMixin`: genkit's networks are diffusers blocks already, a `UNet2DModel` folder is
what diffusion users hand on and load without genkit, and diffusers' trainers save checkpoints through the
accelerate save-state hooks genkit's loop uses. Training checkpoints hold such folders too (`genkit.train.state`).
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import UNet2DModel
from safetensors import SafetensorError
from torch import nn

from genkit.errors import GenkitError
from genkit.files import CONFIG_NAME, save_pretrained, saved_class, write_json
from genkit.nets import TimeMLP, UNetVelocity
from genkit.nets.discriminator import PatchDiscriminator
from genkit.nets.gan import CriticPotential, DCGANCritic, DCGANGenerator, MLPCritic, MLPGenerator
from genkit.predictors import LearnedTimesteps, PredictorModel
from genkit.velocity import GradientVelocity
from tokenizers_img.model import Tokenizer

MODEL_CLASSES = {
    cls.__name__: cls
    for cls in (
        *(Tokenizer, PatchDiscriminator, TimeMLP, UNetVelocity, PredictorModel, LearnedTimesteps),
        *(MLPGenerator, MLPCritic, DCGANGenerator, DCGANCritic),
    )
}
# A genkit velocity U-Net is saved as the plain diffusers model it wraps.
SAVED_AS = {UNet2DModel.__name__: UNetVelocity}
GAN_SETTINGS = "gan.json"


def load_model(folder: Path, expected: tuple[type, ...] = (), dtype: torch.dtype | None = None) -> nn.Module:
    """The model in `folder` (a genkit model, or one of `expected`), in eval mode and `dtype`; a clear error if none."""
    folder = Path(folder)
    name = saved_class(folder)
    cls = SAVED_AS.get(name) or MODEL_CLASSES.get(name)
    if cls is None or (expected and cls not in expected):
        wanted = " or ".join(c.__name__ for c in expected) or "a genkit model"
        raise GenkitError(
            f"{folder} does not hold {wanted}: it needs {CONFIG_NAME} naming the class and safetensors weights, as "
            f"save_pretrained writes them (found {name or 'no readable ' + CONFIG_NAME}); train or save it again"
        )
    try:
        return cls.from_pretrained(folder, torch_dtype=dtype).eval()
    except (OSError, SafetensorError, ValueError) as error:
        cause = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise GenkitError(f"{folder} is corrupt ({cause}); save it again or use another copy") from None


def load_velocity_model(folder: Path) -> nn.Module:
    """A velocity model saved by a flow run (its model/ folder, or a checkpoint's): TimeMLP or UNetVelocity."""
    return load_model(folder, (TimeMLP, UNetVelocity))


def load_tokenizer(folder: Path) -> Tokenizer:
    """The tokenizer saved in `folder` (a run's model/ folder, or a checkpoint's), in eval mode."""
    return load_model(folder, (Tokenizer,))


@dataclass
class GanModels:
    """A trained GAN: its generator, its critic and the potential the critic defines on sample space."""

    generator: nn.Module
    critic: nn.Module
    potential: CriticPotential

    def to(self, device: torch.device | str) -> "GanModels":
        """Both networks on `device`."""
        self.generator.to(device)
        self.critic.to(device)
        return self

    def critic_field(self) -> GradientVelocity:
        """The critic as a field: grad_x h(d(x)) (MonoFlow) or grad_x D(x) (a Wasserstein critic)."""
        return GradientVelocity(lambda x: self.potential(self.critic(x)))


def save_gan(generator: nn.Module, critic: nn.Module, potential: CriticPotential, folder: Path) -> None:
    """folder/generator and folder/critic as model folders, and the potential in folder/gan.json."""
    save_pretrained(generator, folder / "generator")
    save_pretrained(critic, folder / "critic")
    write_json(folder / GAN_SETTINGS, asdict(potential))


def load_gan(folder: Path) -> GanModels:
    """The generator, critic and potential of a GAN run's model/ folder, in eval mode."""
    folder = Path(folder)
    generators, critics = (MLPGenerator, DCGANGenerator), (MLPCritic, DCGANCritic)
    generator, critic = load_model(folder / "generator", generators), load_model(folder / "critic", critics)
    try:
        potential = CriticPotential(**json.loads((folder / GAN_SETTINGS).read_text()))
    except (OSError, ValueError, TypeError) as error:
        raise GenkitError(f"{folder / GAN_SETTINGS} is missing or unreadable ({error}); retrain the GAN") from None
    return GanModels(generator, critic, potential)
