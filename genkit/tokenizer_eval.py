"""A tokenizer on a whole image set, as papers report it: PSNR, SSIM, LPIPS, rFD, codebook usage, throughput.

Every image is encoded and decoded once, in batches of `batch_size` cut from the whole set; under accelerate each
process takes a contiguous share of those batches, so no image's reconstruction depends on the number of processes.
Per-image sums, feature statistics and token counts are then reduced across processes (docs/metrics.md §10).
"""

import time
from collections.abc import Callable

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import gather_object, reduce
from torch import Tensor
from torch.utils.data import Dataset

from genkit.errors import GenkitError
from genkit.features import Extractor
from genkit.metrics import FeatureStatistics, frechet_from_statistics, psnr_per_image, ssim_per_image, uint8_levels
from genkit.progress import progress
from tokenizers_img.model import Tokenizer
from tokenizers_img.usage import usage_of_counts

BATCH_SIZE = 64
GRID_IMAGES = 16


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read afterwards has timed it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate_tokenizer(
    tokenizer: Tokenizer,
    images: Tensor | Dataset,
    extractor: Extractor | None,
    perceptual: Callable[[Tensor, Tensor], Tensor] | None,
    batch_size: int,
    state: PartialState | Accelerator,
    keep: int = GRID_IMAGES,
) -> tuple[dict[str, float], dict, Tensor]:
    """(metrics, protocol, reconstructions of the first `keep` images) of y = clamp(decode(encode(x)), -1, 1).

    `images`: [N, C, H, W] in [-1, 1], or a dataset of such [C, H, W] images; the tokenizer sits on state.device in
    eval mode, and the extractor's network is moved there. Metrics: psnr and ssim (means over images), lpips (mean
    of perceptual(x, y) [N], when given), rfd (Frechet distance between the extractor's features of uint8_levels(x)
    and of uint8_levels(y), when given), codebook_usage and perplexity of all tokens, and images_per_second (encode +
    decode on one device). Every process gets the same.
    """
    count = len(images)
    if count < (1 if extractor is None else 2):
        raise GenkitError(
            f"a tokenizer evaluation needs {'an image' if extractor is None else '2 images for rfd'}, got {count}; "
            "evaluate more images (check the data's validation split)"
        )
    batches = [range(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]
    sums = torch.zeros(4, dtype=torch.float64)  # psnr, ssim, lpips, encode + decode seconds
    token_counts = torch.zeros(tokenizer.codebook_size, dtype=torch.long, device=state.device)
    originals, reconstructions, kept = None, None, []
    if extractor is not None:
        extractor.network.to(state.device)

    def load(batch: range) -> Tensor:
        return torch.stack([images[i] for i in batch]).to(state.device, tokenizer.dtype)

    with state.split_between_processes(batches) as local:
        if local:  # untimed: a first call's one-off costs (kernel selection, allocation) are not throughput
            tokenizer.decode(tokenizer.encode(load(local[0])))
        for batch in progress(local, desc="tokenizer evaluation", disable=not state.is_main_process):
            x = load(batch)
            start = time.perf_counter()
            indices = tokenizer.encode(x)
            y = tokenizer.decode(indices)
            synchronize(state.device)
            sums[3] += time.perf_counter() - start
            y = y.clamp(-1, 1)
            token_counts += torch.bincount(indices.flatten(), minlength=tokenizer.codebook_size)
            sums[0] += psnr_per_image(y, x).sum().cpu()
            sums[1] += ssim_per_image(y, x).sum()
            if perceptual is not None:
                sums[2] += perceptual(x, y).double().sum().cpu()
            if extractor is not None:
                pair = [FeatureStatistics.of(extractor.features(uint8_levels(z), batch_size)) for z in (x, y)]
                originals = pair[0] if originals is None else originals.merged(pair[0])
                reconstructions = pair[1] if reconstructions is None else reconstructions.merged(pair[1])
            kept.append(y[: max(0, keep - batch.start)].cpu())
    sums = reduce(sums.to(state.device), reduction="sum").cpu()
    usage = usage_of_counts(reduce(token_counts, reduction="sum").cpu())
    metrics = {"psnr": sums[0].item() / count, "ssim": sums[1].item() / count}
    if perceptual is not None:
        metrics["lpips"] = sums[2].item() / count
    protocol = {"num_images": count, "image_shape": "x".join(str(size) for size in images[0].shape)}
    if extractor is not None:
        if originals is None:  # this process had no batch; its share of the sums is zero
            probe = torch.zeros(1, extractor.channels, extractor.image_size, extractor.image_size, device=state.device)
            originals = reconstructions = FeatureStatistics.zeros(extractor.features(probe).shape[1])
        originals, reconstructions = originals.gathered(state), reconstructions.gathered(state)
        metrics["rfd"] = frechet_from_statistics(originals, reconstructions)
        protocol |= extractor.protocol() | {"quantisation": "uint8"}
    metrics |= {"codebook_usage": usage.fraction_used, "perplexity": usage.perplexity}
    metrics["images_per_second"] = count / sums[3].item()
    shown = [part for part in gather_object([torch.cat(kept) if kept else torch.empty(0)]) if len(part)]
    return metrics, protocol, torch.cat(shown)
