"""What a comparison writes besides its table: a grid of samples a cell, metric plots, the table as text."""

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
from torch import Tensor

from genkit.sampling import save_picture
from genkit.tracking import RunLog


@dataclass(frozen=True)
class Shared:
    """What every subject shares: samples (or images) a cell sees, their seed, how many a grid shows, and the
    overrides every run it trains gets."""

    num_samples: int
    seed: int
    grid_samples: int
    run_overrides: tuple[str, ...] = ()


def log_grid(log: RunLog, run_dir: Path, name: str, samples: Tensor) -> None:
    """Images as a grid, other samples as a scatter of their first two coordinates, to grids/ and the tracker."""
    name = name.replace("(", "_").replace(")", "")
    if samples.ndim == 4:
        log.log_images(f"grid/{name}", samples, 0)
        return
    if log.accelerator.is_main_process:
        path = run_dir / "grids" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_picture(samples.flatten(1)[:, :2].cpu(), path)
        log.log_picture(f"grid/{name}", path)


def plot_metric(
    run_dir: Path, metric: str, columns: list[str], rows: list[list], x_axis: str, line_keys: tuple[str, ...]
) -> Path | None:
    """metric vs x_axis, one line a value of line_keys, to plots/<metric>_vs_<x_axis>.png."""
    index, x_index = columns.index(metric), columns.index(x_axis)
    keys = [columns.index(key) for key in line_keys]
    lines: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        if row[index] is not None:
            label = " ".join(str(row[k]) for k in keys)
            lines.setdefault(label, []).append((row[x_index], row[index]))
    if not lines:
        return None
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, points in lines.items():
        nfes, values = zip(*sorted(points), strict=True)
        axes.plot(nfes, values, marker="o", label=label)
    axes.set_xlabel(x_axis)
    axes.set_ylabel(metric)
    axes.set_xscale("log" if x_axis == "codebook_size" else "linear")
    axes.set_yscale("log" if x_axis == "nfe" else "linear")
    axes.legend(fontsize=7)
    path = run_dir / "plots" / f"{metric}_vs_{x_axis}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def format_table(columns: list[str], rows: list[list]) -> str:
    """The leading columns of the table as aligned text."""
    widths = [max([len(c)] + [len(cell_text(r[i])) for r in rows]) for i, c in enumerate(columns)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(columns, widths, strict=True))]
    for row in rows:
        lines.append("  ".join(cell_text(row[i]).ljust(w) for i, w in enumerate(widths)))
    return "\n".join(lines)


def cell_text(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
