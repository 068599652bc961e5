"""Run tracking: accelerate's trackers (W&B offline by default, TensorBoard, or none) plus the same on disk.

On disk, `metrics.jsonl` holds one record a logging step and `grids/` the image grids as PNG, so a run
folder is complete without any tracker.
"""

import csv
import json
import uuid
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image
from torchvision.utils import make_grid, save_image

from genkit.checkpoint import write_json

TRACKERS = ("wandb", "tensorboard", "none")
PROJECT = "genkit"


def image_grid(images: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """Images in [-1, 1] (N, C, H, W) as one uint8 grid (3, H', W')."""
    grid = make_grid(images.detach().float().cpu().clamp(-1, 1), nrow=nrow, normalize=True, value_range=(-1, 1))
    return (grid * 255).round().to(torch.uint8)


class RunLog:
    """Metrics and images of one run, to accelerate's trackers and to the run folder (main process only on disk)."""

    def __init__(self, accelerator: Accelerator, run_dir: Path, tracker: str, config: dict, resume_step: int = 0):
        self.accelerator, self.run_dir, self.tracker = accelerator, run_dir, tracker
        self.metrics_path = run_dir / "metrics.jsonl"
        if not accelerator.is_main_process:
            return
        self._drop_records_after(resume_step)
        if tracker == "none":
            return
        # One W&B run per run folder: a resumed training run appends to the run it started.
        id_path = run_dir / "wandb_id.txt"
        if not id_path.exists():
            id_path.write_text(uuid.uuid4().hex[:12])
        init_kwargs = {
            "wandb": {"name": run_dir.name, "dir": str(run_dir), "id": id_path.read_text(), "resume": "allow"}
        }
        accelerator.init_trackers(PROJECT, config=config, init_kwargs=init_kwargs)

    def _drop_records_after(self, step: int) -> None:
        """A resumed run redoes the steps after its checkpoint: forget what the killed run logged for them."""
        if not self.metrics_path.exists():
            return
        lines = self.metrics_path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        self.metrics_path.write_text("".join(f"{line}\n" for line in kept))

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Numbers at a step, to every tracker and to metrics.jsonl."""
        self.accelerator.log(metrics, step=step)
        if self.accelerator.is_main_process:
            with self.metrics_path.open("a") as handle:
                handle.write(json.dumps({"step": step, **metrics}) + "\n")

    def log_images(self, name: str, images: torch.Tensor, step: int) -> Path | None:
        """A grid of images in [-1, 1] to the trackers and to grids/<name>_<step>.png; returns the PNG path."""
        if not self.accelerator.is_main_process:
            return None
        grid = image_grid(images)
        path = self.run_dir / "grids" / f"{name}_{step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid.float() / 255, path)
        if self.tracker == "wandb":
            self.accelerator.get_tracker("wandb").log_images({name: [grid.permute(1, 2, 0).numpy()]}, step=step)
        elif self.tracker == "tensorboard":
            self.accelerator.get_tracker("tensorboard").log_images({name: grid[None].numpy()}, step=step)
        return path

    def log_table(self, name: str, columns: list[str], rows: list[list], step: int = 0) -> None:
        """One table to W&B (a wandb.Table) and to <name>.csv and <name>.json in the run folder."""
        if not self.accelerator.is_main_process:
            return
        with (self.run_dir / f"{name}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            writer.writerows(rows)
        write_json(self.run_dir / f"{name}.json", {"columns": columns, "rows": rows})
        if self.tracker == "wandb":
            self.accelerator.get_tracker("wandb").log_table(name, columns=columns, data=rows, step=step)

    def log_picture(self, name: str, path: Path, step: int = 0) -> None:
        """A PNG already in the run folder (a plot, a scatter) to the trackers as an image."""
        if not self.accelerator.is_main_process or self.tracker == "none":
            return
        pixels = np.asarray(Image.open(path).convert("RGB"))
        if self.tracker == "wandb":
            self.accelerator.get_tracker("wandb").log_images({name: [pixels]}, step=step)
        else:
            self.accelerator.get_tracker("tensorboard").log_images({name: pixels[None]}, step=step, dataformats="NHWC")

    def finish(self) -> None:
        """Close the trackers; the process group stays up for a pipeline's next stage (the CLI ends it)."""
        for tracker in self.accelerator.trackers:
            tracker.finish()
