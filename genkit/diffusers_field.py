"""A diffusers model folder (`unet/`, `scheduler/`, as DDPMPipeline.save_pretrained writes it) as a Field.

The U-Net is solved in EDM form through DiffusersVelocity (genkit/velocity.py) over its own scheduler's sigma range,
sigma_min..sigma_max of the table (about 0.0100..157.4 for the standard 1000-step linear betas): below sigma_min the
network would only be queried at its timestep 0 again, above sigma_max at its last one.

Three kinds of U-Net load:

- an unconditional `UNet2DModel`: a plain field;
- a class-conditional `UNet2DModel` (config `num_class_embeds` = K + 1): a conditional field of classes 0..K-1,
  drawn uniformly; by convention the LAST class embedding (index K) is the null class, the unconditional branch of
  classifier-free guidance (as the model was trained with labels dropped to K);
- a `UNet2DConditionModel` (cross-attention): a conditional field whose K "classes" are rows of an embeddings file,
  a safetensors file with `embeddings` [K, L, D] (e.g. K prompts' text-encoder outputs) and `null` [L, D] (e.g. the
  empty prompt's), D the U-Net's cross_attention_dim; classes drawn uniformly.

The field id is the digest of the U-Net's weights, the scheduler's config and the embeddings file, so that what was
made for other weights or other prompts is refused.
"""

import json
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from genkit.errors import GenkitError
from genkit.fields import SCHEDULER_FILE, Conditioning, Field, frozen
from genkit.files import weights_digest
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


def load_embeddings(path: str, width: int) -> tuple[Tensor, Tensor]:
    """`embeddings` [K, L, D] and `null` [L, D] from a safetensors file, D = `width`; one error for each way not."""
    if not Path(path).is_file():
        raise GenkitError(
            f"field.embeddings={path} is not a file; save `embeddings` [K, L, D] and `null` [L, D] there with "
            "safetensors.torch.save_file"
        )
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise GenkitError(
            f"field.embeddings={path} is not a readable safetensors file ({error}); write it again with "
            "safetensors.torch.save_file"
        ) from None
    missing = [key for key in ("embeddings", "null") if key not in tensors]
    if missing:
        raise GenkitError(
            f"field.embeddings={path} has no {' or '.join(missing)} (it has {sorted(tensors)}); save `embeddings` "
            "[K, L, D] and `null` [L, D]"
        )
    embeddings, null = tensors["embeddings"], tensors["null"]
    if embeddings.dim() != 3 or len(embeddings) == 0 or tuple(null.shape) != tuple(embeddings.shape[1:]):
        raise GenkitError(
            f"field.embeddings={path} holds embeddings {list(embeddings.shape)} and null {list(null.shape)}; "
            "they must be [K, L, D] (K >= 1) and [L, D]"
        )
    if embeddings.shape[-1] != width:
        raise GenkitError(
            f"field.embeddings={path} has width D={embeddings.shape[-1]} but this U-Net takes D={width}; "
            "encode the prompts with the text encoder the U-Net was trained with"
        )
    return embeddings, null


def load_diffusers(
    source: str, embeddings: str = "", device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> Field:
    """A diffusers U-Net and its scheduler's noise table (a local folder or Hub id with unet/, scheduler/) as a
    field in EDM form on the table's own sigma range, conditional when the U-Net is (see the module docstring);
    `embeddings` is the safetensors file a UNet2DConditionModel needs and no other U-Net takes."""
    folder = Run(local_diffusers_folder(source))
    unet_dir, scheduler_dir = folder.unet, folder.scheduler
    if not (unet_dir / "config.json").is_file() or not scheduler_dir.is_dir():
        raise GenkitError(
            f"{source} is not a diffusers model folder with unet/ and scheduler/ (as DDPMPipeline.save_pretrained "
            "writes it); save or download one there first"
        )
    cross_attention = json.loads((unet_dir / "config.json").read_text()).get("_class_name") == "UNet2DConditionModel"
    unet_class = UNet2DConditionModel if cross_attention else UNet2DModel
    unet = frozen(unet_class.from_pretrained(unet_dir), device, dtype)
    velocity = DiffusersVelocity(unet, DDPMScheduler.from_pretrained(scheduler_dir))
    size = unet.config.sample_size
    shape = (unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
    files = sorted(unet_dir.glob("*.safetensors")) + sorted(unet_dir.glob("*.bin")) + [scheduler_dir / SCHEDULER_FILE]
    path = EDMPath(sigma_min=velocity.sigma_min, sigma_max=velocity.sigma_max)
    dtype = dtype or torch.float32
    if velocity.condition_argument is None:
        if embeddings:
            raise GenkitError(
                f"{source} is an unconditional U-Net: it takes no field.embeddings ({embeddings}); drop them"
            )
        return Field(f"diffusers(sha256={weights_digest(*files)})", shape, dtype, [(velocity, path)])
    if velocity.condition_argument == "class_labels":
        if embeddings:
            raise GenkitError(
                f"{source} is a class-conditional U-Net: it takes class labels, not field.embeddings ({embeddings}); "
                "drop them"
            )
        classes = unet.config.num_class_embeds - 1  # the last class embedding is the null class
        if classes < 1:
            raise GenkitError(
                f"{source} has num_class_embeds={classes + 1}: a class-conditional U-Net needs K + 1 >= 2 class "
                "embeddings, classes 0..K-1 and the null class K"
            )
        null, table = torch.tensor(classes), None
    else:
        if not embeddings:
            raise GenkitError(
                f"{source} is a UNet2DConditionModel: it needs field.embeddings, a safetensors file of `embeddings` "
                "[K, L, D] (e.g. K prompts' text-encoder outputs) and `null` [L, D] (the empty prompt's)"
            )
        # A U-Net with encoder_hid_dim projects its input from that width to cross_attention_dim first.
        width = unet.config.encoder_hid_dim or unet.config.cross_attention_dim
        table, null = load_embeddings(embeddings, width)
        classes = len(table)
        files.append(Path(embeddings))
    conditioning = Conditioning(
        model=velocity,  # velocity(x, sigma, condition): EDM time is sigma, the identity below
        null=null,
        forms=lambda guided: [(guided, path)],
        sigma=lambda sigma: sigma,
        frequencies=torch.full((classes,), 1 / classes, dtype=torch.float64),
        table=table,
    )
    return Field(f"diffusers(sha256={weights_digest(*files)})", shape, dtype, [], conditioning)
