"""Latents as a data source, and a latent flow's map back to images (docs/latents.md).

A flow with `flow.tokenizer` (a finished tokenizer run) trains on that tokenizer's latents of its data instead of the
images. The latent of an image is its decoder input z_q = quantizer(encoder(x)), [C, h, w]: the quantized codes, not
the encoder's output. The decoder was trained on exactly these values, so a generated latent near them decodes as a
reconstruction does; they are bounded (FSQ's grid in [-1, 1], a VQ codebook); and snapping a generated latent to the
nearest code (`snap`) is then a well-defined last step. The flow sees them normalised as latent diffusion does, by
one shift and scale over every value of the train latents, recorded with the flow: x = (z_q - mean) / std.

The latents of a (tokenizer weights, data config, split) are encoded once and cached under $GENKIT_CACHE/latents/<key>/
as safetensors shards of SHARD_SIZE items ("z" float32 [n, C, h, w], and "c" int64 [n] when the data has labels) and
a manifest; every run and every process reads them from there. Process r of P encodes the missing shards k with
k % P == r, in the same batches for any P, so the cache does not depend on how many processes wrote it. A shard that
does not read back whole is encoded again, with a warning.
"""

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import Dataset

from genkit.data import DataConfig, build_dataset, num_classes
from genkit.data.datasets import Labelled, Points
from genkit.errors import GenkitError
from genkit.files import atomic, cache_dir, weights_digest, write_json
from genkit.models import load_tokenizer
from genkit.processes import process_state
from genkit.progress import progress
from genkit.runs import Run
from tokenizers_img.model import Tokenizer

FORMAT_VERSION = 1
SHARD_SIZE = 1024
BATCH_SIZE = 64  # images encoded at a time
MANIFEST = "latents.json"


def tokenizer_run(path: str | Path) -> Run:
    """The finished tokenizer run at `path`, or one clear error."""
    run = Run(path)
    if not run.config_file.is_file() or run.kind != "tokenizer":
        raise GenkitError(
            f"flow.tokenizer={path} is not a tokenizer run folder; train one (genkit train tokenizer/fsq) and give its "
            "folder"
        )
    if not run.finished:
        raise GenkitError(f"the tokenizer run {path} has not finished (no model/ yet); let it finish first")
    return run


def tokenizer_id(run: Run) -> str:
    """The id of a tokenizer run's weights."""
    return f"tokenizer(sha256={weights_digest(*sorted(run.model.glob('*.safetensors')))})"


def latent_shape(tokenizer: Tokenizer, data: DataConfig) -> tuple[int, int, int]:
    """(C, h, w) of the latent of one image of `data`: latent_dim channels at 1 / downsampling of its size."""
    factor = tokenizer.downsampling
    if data.image_size % factor:
        raise GenkitError(
            f"data.image_size={data.image_size} is not divisible by the tokenizer's downsampling {factor}; use a size "
            "it divides"
        )
    size = data.image_size // factor
    return (tokenizer.config.latent_dim, size, size)


@torch.no_grad()
def decoder_input(tokenizer: Tokenizer, images: Tensor) -> Tensor:
    """z_q = quantizer(encoder(images)), [B, C, h, w]: what the decoder reads."""
    quantized, _, _ = tokenizer.quantizer(tokenizer.encoder(images))
    return quantized


def _labelled(data: DataConfig) -> bool:
    """Whether the data has class labels (which the cache then keeps beside the latents)."""
    try:
        num_classes(data)
    except GenkitError:
        return False
    return True


def _readable(path: Path, count: int, shape: tuple[int, ...], labelled: bool) -> bool:
    """Whether `path` opens as a complete shard of `count` latents of `shape` (and their labels)."""
    expected = {"z": ("F32", [count, *shape])} | ({"c": ("I64", [count])} if labelled else {})
    try:
        with safe_open(path, "pt") as handle:
            names = handle.keys()  # a safe_open handle is not iterable
            found = {name: (handle.get_slice(name).get_dtype(), handle.get_slice(name).get_shape()) for name in names}
    except (SafetensorError, OSError):
        return False
    return found == expected


@dataclass
class Encoded:
    """Every item of a split: its latent [N, C, h, w] (float32, not normalised), and its label if the data has them."""

    latents: Tensor
    labels: Tensor | None


def encoded(run: Run, data: DataConfig, split: str) -> Encoded:
    """The latents of every item of `split` of `data` by the tokenizer of `run`: read from the cache, the missing or
    unreadable shards encoded first (module docstring). Call it on every process."""
    if data.flip or data.random_resized_crop:
        raise GenkitError(
            "data.flip and data.random_resized_crop change the images every epoch, but latents are encoded once: drop "
            "them when the flow trains on a tokenizer's latents"
        )
    state = process_state()
    tokenizer = load_tokenizer(run.model).to(state.device)
    shape, labelled = latent_shape(tokenizer, data), _labelled(data)
    dataset = build_dataset(data, split, labels=labelled)
    if len(dataset) == 0:
        raise GenkitError(f"the {split} split of the data is empty: there is nothing to encode")
    key = {"version": FORMAT_VERSION, "tokenizer": tokenizer_id(run), "data": asdict(data), "split": split}
    folder = cache_dir() / "latents" / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    sizes = [min(SHARD_SIZE, len(dataset) - start) for start in range(0, len(dataset), SHARD_SIZE)]
    names = [f"latents_{index:05d}.safetensors" for index in range(len(sizes))]
    present = [index for index, name in enumerate(names) if (folder / name).exists()]
    done = {index for index in present if _readable(folder / names[index], sizes[index], shape, labelled)}
    if state.is_main_process and len(done) < len(present):
        broken = ", ".join(names[index] for index in present if index not in done)
        warnings.warn(f"latent shards {broken} in {folder} do not read back whole: encoding them again", stacklevel=2)
    state.wait_for_everyone()  # every process has checked the shards before any is rewritten
    mine = [index for index in range(state.process_index, len(names), state.num_processes) if index not in done]
    quiet = not (mine and state.is_main_process)
    for index in progress(mine, desc=f"encoding {split} latents", unit="shard", disable=quiet):
        items = [dataset[i] for i in range(index * SHARD_SIZE, index * SHARD_SIZE + sizes[index])]
        images = torch.stack([item[0] if labelled else item for item in items])
        batches = [decoder_input(tokenizer, batch.to(state.device)).float().cpu() for batch in images.split(BATCH_SIZE)]
        tensors = {"z": torch.cat(batches).contiguous()}
        tensors |= {"c": torch.tensor([item[1] for item in items])} if labelled else {}
        with atomic(folder / names[index]) as temporary:
            save_file(tensors, temporary)
    state.wait_for_everyone()
    if state.is_main_process:
        write_json(folder / MANIFEST, key | {"count": len(dataset), "shape": list(shape), "shards": names})
    shards = [load_file(folder / name) for name in names]
    labels = torch.cat([shard["c"] for shard in shards]) if labelled else None
    return Encoded(torch.cat([shard["z"] for shard in shards]), labels)


@dataclass
class LatentCodec:
    """A tokenizer and the shift and scale of its latents: x = (z_q - mean) / std, and back through the decoder."""

    tokenizer: Tokenizer
    tokenizer_run: Path
    mean: float
    std: float

    @classmethod
    def fitted(cls, run: Run, train: Encoded) -> "LatentCodec":
        """The codec whose mean and std are those of every value of the train latents."""
        values = train.latents.double()
        return cls(load_tokenizer(run.model), run.folder, values.mean().item(), values.std().item())

    def to(self, device: torch.device | str) -> "LatentCodec":
        """This codec with its tokenizer on `device`."""
        self.tokenizer.to(device)
        return self

    def normalise(self, latents: Tensor) -> Tensor:
        return (latents - self.mean) / self.std

    def decode(self, x: Tensor, snap: bool = False) -> Tensor:
        """Images of normalised latents x [B, C, h, w]; `snap`: each latent vector moved to its nearest code first."""
        latents = x.to(next(self.tokenizer.parameters()).dtype) * self.std + self.mean
        if snap:
            latents = self.tokenizer.quantizer.snap(latents.movedim(1, -1)).movedim(-1, 1)
        with torch.no_grad():
            return self.tokenizer.decoder(latents)

    def record(self, shape: tuple[int, ...]) -> dict:
        """What a latent flow keeps with its model (Run.latents): its tokenizer run and id, the shape, mean and std."""
        run = Run(self.tokenizer_run)
        record = {"tokenizer": str(run.folder.resolve()), "tokenizer_id": tokenizer_id(run), "shape": list(shape)}
        return record | {"mean": self.mean, "std": self.std}

    @classmethod
    def recorded(cls, path: Path) -> "tuple[LatentCodec, tuple[int, ...]]":
        """The codec and latent shape a latent flow recorded at `path`; one clear error if its tokenizer changed."""
        record = json.loads(Path(path).read_text())
        run = tokenizer_run(record["tokenizer"])
        if tokenizer_id(run) != record["tokenizer_id"]:
            raise GenkitError(
                f"the tokenizer at {run.folder} is no longer the one this latent flow was trained on "
                f"({record['tokenizer_id']}); restore it, or train the flow again"
            )
        codec = cls(load_tokenizer(run.model), run.folder, record["mean"], record["std"])
        return codec, tuple(record["shape"])


def latent_dataset(train: Encoded, codec: LatentCodec, labels: bool) -> Dataset:
    """The normalised train latents as a dataset: items x, or (x, label) with `labels`."""
    latents = Points(codec.normalise(train.latents))
    return Labelled(latents, train.labels) if labels else latents
