"""Perceptual distances between images in [-1, 1], as losses and metrics: LPIPS or a genkit feature extractor.

`lpips`: Zhang et al. (2018)'s LPIPS through the `lpips` package, whose linear heads ship inside it; the VGG16 or
AlexNet backbone is torchvision's ImageNet weights, read from torchvision's cache or a file the user names, never
downloaded. Any other name is a genkit feature extractor (genkit.features: `digits`, `inception`, `torchscript`),
whose distance is the mean squared difference of the two images' features: a perceptual loss that runs offline.
"""

import pickle
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from genkit.errors import GenkitError
from genkit.features import EXTRACTORS, Extractor, load_extractor

NETWORKS = ("lpips", *EXTRACTORS)
LPIPS_BACKBONES = ("vgg", "alex")


def backbone_weights(backbone: str) -> tuple[str, str]:
    """(file name, download URL) of torchvision's ImageNet weights for an LPIPS backbone."""
    from torchvision.models import AlexNet_Weights, VGG16_Weights  # noqa: PLC0415 (torchvision's model zoo is big)

    url = (VGG16_Weights if backbone == "vgg" else AlexNet_Weights).IMAGENET1K_V1.url
    return url.rsplit("/", 1)[-1], url


class LPIPS(nn.Module):
    """LPIPS distance [N] of image pairs in [-1, 1] with the package's v0.1 linear heads, frozen."""

    def __init__(self, backbone: str = "vgg", weights_path: str | Path | None = None):
        super().__init__()
        import lpips  # noqa: PLC0415 (it imports torchvision's model zoo: only where LPIPS is asked for)

        name, url = backbone_weights(backbone)
        path = Path(weights_path) if weights_path else Path(torch.hub.get_dir()) / "checkpoints" / name
        if not path.is_file():
            raise GenkitError(
                f"LPIPS-{backbone} needs torchvision's ImageNet weights {name}, not found at {path}; genkit downloads "
                f"nothing: fetch {url} where there is a network and put it in {path.parent}/ (torchvision's cache), "
                "or name the file with perceptual.weights_path"
            )
        # pnet_rand: build the backbone without weights (no download), then load them from the file.
        with warnings.catch_warnings():  # the package asks torchvision in its pre-0.13 way
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            self.net = lpips.LPIPS(net=backbone, pnet_rand=True, verbose=False)
        try:
            features = {
                key.removeprefix("features."): value
                for key, value in torch.load(path, map_location="cpu", weights_only=True).items()
                if key.startswith("features.")
            }
            backbone_state = {  # the package splits torchvision's `features` into slices that keep the layer numbers
                f"{slice_name}.{key}": features[key]
                for slice_name, block in self.net.net.named_children()
                for key in block.state_dict()
            }
            self.net.net.load_state_dict(backbone_state)
        except (OSError, RuntimeError, KeyError, AttributeError, pickle.UnpicklingError) as error:
            reason = " ".join(str(error).split())[:200]  # torch's messages run over several lines
            raise GenkitError(
                f"{path} does not hold torchvision's {backbone} ImageNet weights ({type(error).__name__}: {reason}); "
                f"fetch {url} again"
            ) from None
        self.net.eval().requires_grad_(False)

    def forward(self, images: Tensor, reference: Tensor) -> Tensor:
        if images.shape[1] == 1:  # grayscale as RGB, as the ImageNet backbone expects
            images, reference = images.expand(-1, 3, -1, -1), reference.expand(-1, 3, -1, -1)
        return self.net(images, reference).flatten()


class FeatureDistance(nn.Module):
    """mean_d (f_d(x) - f_d(y))^2 [N] on a genkit feature extractor f, differentiable in both images."""

    def __init__(self, extractor: Extractor):
        super().__init__()
        self.extractor = extractor
        self.network = extractor.network  # registered, so that .to(device) moves it

    def forward(self, images: Tensor, reference: Tensor) -> Tensor:
        return (self.extractor.embed(images) - self.extractor.embed(reference)).pow(2).mean(1)


def load_perceptual(network: str, backbone: str = "vgg", weights_path: str | None = None) -> nn.Module:
    """The perceptual distance a config names: lpips with its backbone, or a genkit extractor's feature distance."""
    if network == "lpips":
        return LPIPS(backbone, weights_path)
    return FeatureDistance(load_extractor(network, weights_path)).eval()
