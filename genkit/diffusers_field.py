"""A diffusers model folder (`unet/`, `scheduler/`, as DDPMPipeline.save_pretrained writes it) as a Field.

The U-Net is solved in EDM form through DiffusersVelocity (genkit/velocity.py) over its own scheduler's sigma range.
"""

from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError

from genkit.errors import GenkitError
from genkit.fields import SCHEDULER_FILE, Field, frozen, weights_digest
from genkit.paths import EDMPath
from genkit.runs import Run
from genkit.velocity import DiffusersVelocity


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


def load_diffusers(
    source: str, embeddings: str = "", device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> Field:
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
