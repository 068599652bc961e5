"""`genkit compare CONFIG`: every cell of a comparison on the same inputs and budget, one table, plots and grids.

Subject `samplers`: one velocity field (FieldConfig) x baseline solvers x NFE x schedules, plus one cell per AMED
predictor (at the NFE and schedule it was distilled for). Every cell starts from the same noise (sample i from
generator seed (seed, i), as `genkit sample`), in EDM form from sigma_max = 80 to sigma_min = 0.002. Metrics:
`rmse`, the terminal RMSE against scipy's DOP853 from the same noise; `fd`, the Frechet distance of the samples'
features to the reference set's (image fields); NFE (counted) and wall time always. The table, its protocol
columns and the plots (metric vs NFE, a line a solver and schedule) go to W&B (offline by default) and to
runs/<name>/ as CSV, JSON and PNG; grids/ holds each cell's first samples from the same seeds.

Under `accelerate launch` the samples are split over processes; squared errors and feature statistics are
summed exactly across them.
"""

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from accelerate import Accelerator
from accelerate.utils import reduce
from torch import Tensor

import samplers
from genkit.config import check_choice, config_dict, flat_config, load_config, register_task
from genkit.data import DataConfig, build_dataset
from genkit.errors import GenkitError
from genkit.features import EXTRACTORS, Extractor, load_extractor
from genkit.fields import FieldConfig, LoadedField
from genkit.generate import initial_noise, save_picture
from genkit.metrics import FeatureStatistics, frechet_from_statistics
from genkit.tracking import TRACKERS, RunLog
from genkit.train.amed import load_predictor

SUBJECTS = ("samplers",)
METRICS = ("rmse", "fd")
SIGMA_MAX, SIGMA_MIN = 80.0, 0.002
FEATURE_BATCH = 256


@register_task("compare")
@dataclass
class CompareConfig:
    """A comparison: its subject's grid, the metrics, the sample count and seed, the tracker."""

    task: str = "compare"
    name: str = "compare"
    output_dir: str = "runs"
    subject: str = "samplers"
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    solvers: list[str] = dataclasses.field(default_factory=lambda: ["euler", "heun", "dpmpp_2m"])
    nfe: list[int] = dataclasses.field(default_factory=lambda: [4, 8])
    schedules: list[str] = dataclasses.field(default_factory=lambda: ["karras"])
    predictors: list[str] = dataclasses.field(default_factory=list)
    num_samples: int = 256
    seed: int = 0
    metrics: list[str] = dataclasses.field(default_factory=lambda: ["rmse"])
    reference_tolerance: float = 1e-7
    extractor: str = "digits"
    extractor_path: str | None = None
    reference_data: DataConfig | None = None
    grid_samples: int = 16
    tracker: str = "wandb"

    def __post_init__(self):
        check_choice("subject", self.subject, SUBJECTS)
        check_choice("tracker", self.tracker, TRACKERS)
        check_choice("extractor", self.extractor, EXTRACTORS)
        for solver in self.solvers:
            check_choice("solvers", solver, samplers.BASELINES)
        for schedule in self.schedules:
            check_choice("schedules", schedule, tuple(samplers.SCHEDULES))
        for metric in self.metrics:
            check_choice("metrics", metric, METRICS)
        if self.num_samples < 2 or any(n < 1 for n in self.nfe):
            raise GenkitError("num_samples must be at least 2 and every nfe at least 1")


@dataclass
class Cell:
    """One setting of the grid: a solver at an NFE on a schedule (with its options)."""

    method: str
    solver: str
    nfe: int
    schedule: str
    options: dict

    def label(self) -> str:
        return f"{self.method} nfe={self.nfe} {self.schedule}"


def grid_cells(config: CompareConfig, loaded: LoadedField, device: torch.device) -> list[Cell]:
    """Baselines x NFE x schedules, then one cell per predictor (refused unless distilled for this field)."""
    cells = [
        Cell(solver, solver, nfe, schedule, {})
        for solver in config.solvers
        for schedule in config.schedules
        for nfe in config.nfe
    ]
    for path in config.predictors:
        predictor, settings = load_predictor(Path(path), loaded.field_id)
        predictor.to(device)
        method = settings.solver if settings.solver == "amed" else f"amed_plugin({settings.base})"
        cells.append(Cell(method, settings.solver, settings.nfe, settings.schedule, settings.solver_options(predictor)))
    return cells


def reference_features(config: CompareConfig, extractor: Extractor, accelerator: Accelerator) -> FeatureStatistics:
    """Feature statistics of the reference set (the field's data val split unless reference_data names one)."""
    data = config.reference_data
    if data is None:
        if config.field.kind != "flow_run":
            raise GenkitError("metric fd on this field needs reference_data, the data set to compare samples with")
        data = load_config(Path(config.field.path) / "config.yaml").data
    dataset = build_dataset(data, "val")
    with accelerator.split_between_processes(list(range(len(dataset)))) as indices:
        images = torch.stack([dataset[i] for i in indices]) if indices else None
    local = FeatureStatistics.of(extractor.features(images)) if images is not None else None
    return gather_statistics(local, extractor, accelerator)


def gather_statistics(local: FeatureStatistics | None, extractor: Extractor, accelerator) -> FeatureStatistics:
    """Sum per-process statistics (an empty shard contributes zeros)."""
    if local is None:
        dim = extractor.features(torch.zeros(2, extractor.channels, extractor.image_size, extractor.image_size)).shape[
            1
        ]
        local = FeatureStatistics(0, torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64))
    return local.gathered(accelerator.state)


def solve_cell(loaded: LoadedField, noise: Tensor, cell: Cell) -> tuple[Tensor | None, int, float]:
    """(terminal samples or None when the solver cannot spend exactly cell.nfe, evaluations, seconds)."""
    counting = samplers.CountingField(loaded.edm)
    start = time.perf_counter()
    try:
        with torch.no_grad():
            out = samplers.sample(counting, noise, cell.solver, cell.nfe, cell.schedule, solver_opts=cell.options)
    except samplers.SamplerError:
        return None, 0, 0.0
    return out, counting.nfe, time.perf_counter() - start


def run(config: CompareConfig) -> dict:
    """Compute every cell, log the table, plots and grids; returns {"columns", "rows"}."""
    run_dir = Path(config.output_dir) / config.name
    accelerator = Accelerator(log_with=None if config.tracker == "none" else config.tracker, project_dir=str(run_dir))
    loaded = config.field.load(accelerator.device)
    extractor = load_extractor(config.extractor, config.extractor_path) if "fd" in config.metrics else None
    if extractor is not None and len(loaded.shape) != 3:
        raise GenkitError(f"metric fd needs image samples; this field's samples have shape {loaded.shape}")
    cells = grid_cells(config, loaded, accelerator.device)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    log = RunLog(accelerator, run_dir, config.tracker, flat_config(config_dict(config)))
    reference_stats = reference_features(config, extractor, accelerator) if extractor else None
    with accelerator.split_between_processes(list(range(config.num_samples))) as indices:
        noise = SIGMA_MAX * initial_noise(indices, loaded.shape, config.seed).to(accelerator.device, loaded.dtype)
    target = None
    if "rmse" in config.metrics and len(noise):
        tolerance = config.reference_tolerance
        target = samplers.reference(loaded.edm, noise, SIGMA_MAX, SIGMA_MIN, rtol=tolerance, atol=tolerance)
    protocol = {
        "field": loaded.field_id,
        "num_samples": config.num_samples,
        "seed": config.seed,
        "reference": f"DOP853 rtol=atol={config.reference_tolerance:g}" if "rmse" in config.metrics else "",
    }
    if extractor is not None:
        protocol |= extractor.protocol() | {"reference_set": "val split", "fd_samples": config.num_samples}
    columns = ["method", "solver", "schedule", "nfe", *config.metrics, "nfe_counted", "seconds", *protocol]
    rows = []
    for cell in cells:
        out, evaluations, seconds = solve_cell(loaded, noise, cell) if len(noise) else (noise, cell.nfe, 0.0)
        reachable = bool(accelerator.gather(torch.tensor([out is not None], device=accelerator.device)).all())
        values = {}
        if reachable and target is not None:
            sums = torch.tensor([(out - target).double().pow(2).sum().item(), out.numel()], dtype=torch.float64)
            sums = reduce(sums.to(accelerator.device), "sum").cpu()
            values["rmse"] = (sums[0] / sums[1]).sqrt().item()
        if reachable and extractor is not None:
            local = FeatureStatistics.of(extractor.features(images_of(out))) if len(out) else None
            values["fd"] = frechet_from_statistics(gather_statistics(local, extractor, accelerator), reference_stats)
        metrics = [values.get(metric) for metric in config.metrics]
        rows.append(
            [cell.method, cell.solver, cell.schedule, cell.nfe, *metrics, evaluations, seconds, *protocol.values()]
        )
        if reachable and len(out):
            log_grid(log, run_dir, cell, images_of(out[: config.grid_samples]) if len(loaded.shape) == 3 else out)
    log.log_table("comparison", columns, rows)
    for metric in config.metrics:
        plot = plot_metric(run_dir, metric, columns, rows)
        if plot is not None:
            log.log_picture(f"{metric}_vs_nfe", plot)
    log.finish()
    if accelerator.is_main_process:
        shown = ["method", "schedule", "nfe", *config.metrics, "nfe_counted", "seconds"]
        print(format_table(shown, [[row[columns.index(c)] for c in shown] for row in rows]))
    return {"columns": columns, "rows": rows}


def images_of(edm_samples: Tensor) -> Tensor:
    """x~ at sigma_min back to data space: for a rectified flow x_1 = x~ / (1 + sigma_min); the same scale else."""
    return edm_samples / (1 + SIGMA_MIN)


def log_grid(log: RunLog, run_dir: Path, cell: Cell, samples: Tensor) -> None:
    name = f"{cell.method}_{cell.schedule}_nfe{cell.nfe}".replace("(", "_").replace(")", "")
    if samples.ndim == 4:
        log.log_images(f"grid/{name}", samples, 0)
        return
    if log.accelerator.is_main_process:
        path = run_dir / "grids" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_picture(samples[:, :2].cpu(), path)
        log.log_picture(f"grid/{name}", path)


def plot_metric(run_dir: Path, metric: str, columns: list[str], rows: list[list]) -> Path | None:
    """metric vs NFE, one line a (method, schedule), to plots/<metric>_vs_nfe.png."""
    index = columns.index(metric)
    lines: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        if row[index] is not None:
            lines.setdefault(f"{row[0]} ({row[2]})", []).append((row[3], row[index]))
    if not lines:
        return None
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, points in lines.items():
        nfes, values = zip(*sorted(points), strict=True)
        axes.plot(nfes, values, marker="o", label=label)
    axes.set_xlabel("NFE")
    axes.set_ylabel(metric)
    axes.set_yscale("log")
    axes.legend(fontsize=7)
    path = run_dir / "plots" / f"{metric}_vs_nfe.png"
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
