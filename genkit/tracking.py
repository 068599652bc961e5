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

from genkit.files import write_json, write_text
from genkit.metrics import as_uint8

TRACKERS = ("wandb", "tensorboard", "none")
PROJECT = "genkit"


def image_grid(images: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """Images in [-1, 1] (N, C, H, W) as one uint8 grid (3, H', W')."""
    return as_uint8(make_grid(images.detach().float().cpu().clamp(-1, 1), nrow=nrow, pad_value=-1))


class RunLog:
    """Metrics and images of one run, to accelerate's trackers and to the run folder (main process only on disk).

    Each step is logged once. W&B keeps only increasing steps, so a resumed run, which replays the steps between
    its checkpoint and the last one logged, logs none of them again: W&B and metrics.jsonl keep the values first
    logged (the same values when training is deterministic) and both continue after them. A fresh run in the folder
    starts a new W&B run and a new metrics.jsonl.
    """

    def __init__(self, accelerator: Accelerator, run_dir: Path, tracker: str, config: dict, resumed: bool = False):
        self.accelerator, self.run_dir, self.tracker = accelerator, run_dir, tracker
        self.metrics_path = run_dir / "metrics.jsonl"
        self.logged_through = -1  # nothing yet: a comparison logs its one record at step 0
        if not accelerator.is_main_process:
            return
        id_path = run_dir / "wandb_id.txt"
        if resumed:
            self.logged_through = self._complete_records()
        else:
            self.metrics_path.unlink(missing_ok=True)
            id_path.unlink(missing_ok=True)
        if tracker == "none":
            return
        # One W&B run per run folder: a resumed training run appends to the run it started.
        if not id_path.exists():
            write_text(id_path, uuid.uuid4().hex[:12])
        init_kwargs = {
            "wandb": {"name": run_dir.name, "dir": str(run_dir), "id": id_path.read_text(), "resume": "allow"}
        }
        accelerator.init_trackers(PROJECT, config=config, init_kwargs=init_kwargs)

    def _complete_records(self) -> int:
        """The last step metrics.jsonl holds, after dropping a line a killed write left incomplete."""
        if not self.metrics_path.exists():
            return -1
        records = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
        write_text(self.metrics_path, "".join(json.dumps(record) + "\n" for record in records))
        return max((record["step"] for record in records), default=-1)

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Numbers at a step, to every tracker and to metrics.jsonl (not again for a step already logged)."""
        if step <= self.logged_through:
            return
        self.accelerator.log(metrics, step=step)
        if self.accelerator.is_main_process:
            with self.metrics_path.open("a") as handle:
                handle.write(json.dumps({"step": step, **metrics}) + "\n")

    def log_images(self, name: str, images: torch.Tensor, step: int, nrow: int = 8) -> Path | None:
        """A grid of images in [-1, 1], `nrow` a row, to the trackers and to grids/<name>_<step>.png; the PNG path."""
        if not self.accelerator.is_main_process or step <= self.logged_through:
            return None
        grid = image_grid(images, nrow)
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
