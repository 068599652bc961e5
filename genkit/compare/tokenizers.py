"""Comparing tokenizer runs on the same validation images, and `genkit eval-tokenizer` on one run.

Both report the same columns: PSNR, SSIM, codebook usage and perplexity of decode(encode(x)) on the images, the
codebook size, and encode+decode throughput; runs are given as folders (`runs`) or trained here (`train`).
"""

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import Tensor
from torchvision.utils import save_image

from genkit.checkpoint import write_json
from genkit.compare.output import Shared, format_table, log_grid
from genkit.compare.training import RunSpec, trained
from genkit.config import load_config
from genkit.data import DataConfig, image_channels, validation_samples
from genkit.errors import GenkitError
from genkit.metrics import ssim
from genkit.models import load_tokenizer
from genkit.runs import read_run_config, run_data, training_seconds
from genkit.tracking import RunLog, image_grid
from genkit.train.tokenizer import build_tokenizer, reconstruct
from tokenizers_img.model import Tokenizer

COLUMNS = ["method", "run", "codebook_size", "psnr", "ssim", "codebook_usage", "perplexity", "images_per_second"]


@dataclass
class TokenizerRuns:
    """Tokenizer runs to compare: finished run folders, and runs to train here (reused once finished)."""

    runs: list[str] = dataclasses.field(default_factory=list)
    train: list[RunSpec] = dataclasses.field(default_factory=list)
    reference_data: DataConfig | None = None  # default: the first run's data

    def __post_init__(self):
        if not self.runs and not self.train:
            raise GenkitError("tokenizers compares runs: list their folders under runs: or their configs under train:")


@torch.no_grad()
def evaluate(tokenizer: Tokenizer, images: Tensor) -> tuple[dict[str, float], Tensor]:
    """The table's numbers of one tokenizer on `images`, and its reconstructions."""
    start = time.perf_counter()
    metrics, reconstruction = reconstruct(tokenizer, images)
    seconds = time.perf_counter() - start
    metrics |= {"ssim": ssim(reconstruction, images), "images_per_second": len(images) / seconds}
    return metrics | {"codebook_size": tokenizer.codebook_size}, reconstruction


class TokenizerComparison:
    """Tokenizer runs on the same validation images: the numbers of `evaluate` against codebook size."""

    x_axis, line_keys = "codebook_size", ("method",)
    plotted = ("psnr", "ssim", "codebook_usage")
    columns, shown = [*COLUMNS, "train_seconds"], COLUMNS[:-1]

    def __init__(self, section: TokenizerRuns, shared: Shared, accelerator: Accelerator, run_dir: Path):
        self.shared = shared
        self.runs = [Path(run) for run in section.runs] + [
            trained(spec, shared.run_overrides) for spec in section.train
        ]
        for run in self.runs:
            if not (run / "model").is_dir():
                raise GenkitError(f"{run} is not a finished tokenizer run (no model/); train it first")
        self.data = section.reference_data or run_data(self.runs[0])
        self.images = validation_samples(self.data, shared.num_samples)

    def table(self, log: RunLog, run_dir: Path) -> tuple[list[dict], dict]:
        protocol = {"images": f"{len(self.images)} val images of {self.data.source} at {self.data.image_size}px"}
        rows = []
        for run in self.runs:
            tokenizer = load_tokenizer(run / "model")
            if tokenizer.config.in_channels != self.images.shape[1]:
                raise GenkitError(f"{run} encodes {tokenizer.config.in_channels}-channel images, not these images")
            metrics, reconstruction = evaluate(tokenizer, self.images)
            method = read_run_config(run)["model"]["quantizer"]["kind"]
            rows.append({"method": method, "run": run.name, "train_seconds": training_seconds(run)} | metrics)
            count = self.shared.grid_samples
            log_grid(
                log, run_dir, f"{run.name}_reconstruction", torch.cat([self.images[:count], reconstruction[:count]])
            )
        return rows, protocol


def evaluate_run(folder: Path, count: int | None = None) -> str:
    """Trained vs untrained tokenizer of a run on its validation images, as a printed table; also eval.json."""
    config = load_config(folder / "config.yaml")
    if config.task != "tokenizer":
        raise GenkitError(f"{folder} is not a tokenizer run")
    images = validation_samples(config.data, config.eval_images if count is None else count)
    torch.manual_seed(config.train.seed)
    untrained = build_tokenizer(config.model, image_channels(config.data)).eval()
    rows = {"untrained": evaluate(untrained, images)[0]}
    rows["trained"], reconstruction = evaluate(load_tokenizer(folder / "model"), images)
    grid_log = folder / "grids"
    grid_log.mkdir(parents=True, exist_ok=True)
    shown = torch.cat([images[:16], reconstruction[:16]])
    save_image(image_grid(shown).float() / 255, grid_log / "eval_reconstruction.png")
    write_json(folder / "eval.json", {"images": len(images), **rows})
    table = format_table(["model", *COLUMNS[2:]], [[name, *(m[c] for c in COLUMNS[2:])] for name, m in rows.items()])
    wandb_runs = sorted((folder / "wandb").glob("offline-run-*")) if (folder / "wandb").is_dir() else []
    return "\n".join(
        [
            table,
            f"{len(images)} validation images of {config.data.source}",
            f"reconstructions: {grid_log / 'eval_reconstruction.png'}",
            f"W&B offline run: {wandb_runs[-1] if wandb_runs else 'none (train.tracker was not wandb)'}",
        ]
    )
