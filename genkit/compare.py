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
from genkit.config import check_choice, config_dict, flat_config, load_config, ranged, register_task
from genkit.data import DataConfig, build_dataset, validation_samples
from genkit.errors import GenkitError
from genkit.features import EXTRACTORS, Extractor, load_extractor
from genkit.fields import FieldConfig, LoadedField, model_folder
from genkit.generate import initial_noise, save_picture
from genkit.metrics import (
    FeatureStatistics,
    energy_distance,
    frechet_from_statistics,
    sliced_wasserstein,
    ssim,
)
from genkit.toys import TOYS
from genkit.tracking import TRACKERS, RunLog
from genkit.train.amed import load_predictor
from genkit.train.gan import load_gan
from genkit.train.tokenizer import evaluate_tokenizer, load_tokenizer
from samplers.schedules import SIGMA_MAX, SIGMA_MIN

SUBJECTS = ("samplers", "tokenizers", "gans")
METRICS = ("rmse", "fd")
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
    nfe: list[int] = ranged(lambda: [4, 8], minimum=1)
    schedules: list[str] = dataclasses.field(default_factory=lambda: ["karras"])
    predictors: list[str] = dataclasses.field(default_factory=list)
    runs: list[str] = dataclasses.field(default_factory=list)
    num_samples: int = ranged(256, minimum=2)
    seed: int = ranged(0, minimum=0)
    metrics: list[str] = dataclasses.field(default_factory=lambda: ["rmse"])
    reference_tolerance: float = ranged(1e-7, above=0)
    extractor: str = "digits"
    extractor_path: str | None = None
    reference_data: DataConfig | None = None
    grid_samples: int = ranged(16, minimum=1)
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
        if self.subject != "samplers" and not self.runs:
            raise GenkitError(f"subject {self.subject} compares runs: list their folders under runs: [...]")


@dataclass
class Cell:
    """One setting of the grid: a solver at an NFE on a schedule (with its options)."""

    method: str
    solver: str
    nfe: int
    schedule: str
    options: dict


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


def reference_data(config: CompareConfig) -> DataConfig:
    """The data set samples are compared with: reference_data, else a flow run's own data config."""
    if config.reference_data is not None:
        return config.reference_data
    if config.field.kind != "flow_run":
        raise GenkitError("metric fd on this field needs reference_data, the data set to compare samples with")
    return load_config(model_folder(Path(config.field.path)) / "config.yaml").data


def reference_features(data: DataConfig, extractor: Extractor, accelerator: Accelerator) -> FeatureStatistics:
    """Feature statistics of the val split of `data`, each process featurising its share."""
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
    subject = {"samplers": SamplerComparison, "tokenizers": TokenizerComparison, "gans": GanComparison}[config.subject]
    comparison = subject(config, accelerator)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    log = RunLog(accelerator, run_dir, config.tracker, flat_config(config_dict(config)))
    columns, rows = comparison.table(log, run_dir)
    log.log_table("comparison", columns, rows)
    for metric in comparison.plotted:
        plot = plot_metric(run_dir, metric, columns, rows, comparison.x_axis, comparison.line_keys)
        if plot is not None:
            log.log_picture(f"{metric}_vs_{comparison.x_axis}", plot)
    log.finish()
    if accelerator.is_main_process:
        print(format_table(comparison.shown, [[row[columns.index(c)] for c in comparison.shown] for row in rows]))
    return {"columns": columns, "rows": rows}


class SamplerComparison:
    """Solvers x NFE x schedules (+ AMED predictors) on one field, from the same noise."""

    x_axis, line_keys = "nfe", ("method", "schedule")

    def __init__(self, config: CompareConfig, accelerator: Accelerator):
        self.config, self.accelerator = config, accelerator
        self.loaded = config.field.load(accelerator.device)
        self.extractor = load_extractor(config.extractor, config.extractor_path) if "fd" in config.metrics else None
        if self.extractor is not None and len(self.loaded.shape) != 3:
            raise GenkitError(f"metric fd needs image samples; this field's samples have shape {self.loaded.shape}")
        self.data = reference_data(config) if self.extractor is not None else None
        self.cells = grid_cells(config, self.loaded, accelerator.device)
        self.plotted = list(config.metrics)
        self.shown = ["method", "schedule", "nfe", *config.metrics, "nfe_counted", "seconds"]

    def table(self, log: RunLog, run_dir: Path) -> tuple[list[str], list[list]]:
        config, accelerator, loaded, extractor = self.config, self.accelerator, self.loaded, self.extractor
        reference_stats = reference_features(self.data, extractor, accelerator) if extractor else None
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
        for cell in self.cells:
            out, evaluations, seconds = solve_cell(loaded, noise, cell) if len(noise) else (noise, cell.nfe, 0.0)
            reachable = bool(accelerator.gather(torch.tensor([out is not None], device=accelerator.device)).all())
            values = {}
            if reachable and target is not None:
                sums = torch.tensor([(out - target).double().pow(2).sum().item(), out.numel()], dtype=torch.float64)
                sums = reduce(sums.to(accelerator.device), "sum").cpu()
                values["rmse"] = (sums[0] / sums[1]).sqrt().item()
            if reachable and extractor is not None:
                local = FeatureStatistics.of(extractor.features(data_space(out, config.field))) if len(out) else None
                values["fd"] = frechet_from_statistics(
                    gather_statistics(local, extractor, accelerator), reference_stats
                )
            metrics = [values.get(metric) for metric in config.metrics]
            rows.append(
                [cell.method, cell.solver, cell.schedule, cell.nfe, *metrics, evaluations, seconds, *protocol.values()]
            )
            if reachable and len(out):
                samples = data_space(out[: config.grid_samples], config.field) if len(loaded.shape) == 3 else out
                log_grid(log, run_dir, f"{cell.method}_{cell.schedule}_nfe{cell.nfe}", samples)
        return columns, rows


class TokenizerComparison:
    """Tokenizer runs on the same validation images: PSNR, codebook usage and perplexity against codebook size."""

    x_axis, line_keys = "codebook_size", ("method",)
    plotted = ("psnr", "ssim", "codebook_usage")
    shown = ["method", "run", "codebook_size", "psnr", "ssim", "codebook_usage", "perplexity"]

    def __init__(self, config: CompareConfig, accelerator: Accelerator):
        self.config = config
        self.runs = [Path(run) for run in config.runs]
        for run in self.runs:
            if not (run / "model").is_dir() or not (run / "config.yaml").is_file():
                raise GenkitError(f"{run} is not a finished tokenizer run (no model/ or config.yaml); train it first")
        data = config.reference_data or load_config(self.runs[0] / "config.yaml").data
        self.images = validation_samples(data, config.num_samples)
        self.data = data

    def table(self, log: RunLog, run_dir: Path) -> tuple[list[str], list[list]]:
        protocol = {"images": f"{len(self.images)} val images of {self.data.source} at {self.data.image_size}px"}
        columns = [*self.shown, "images_per_second", *protocol]
        rows = []
        for run in self.runs:
            run_config = load_config(run / "config.yaml")
            tokenizer = load_tokenizer(run / "model")
            if tokenizer.config["in_channels"] != self.images.shape[1]:
                raise GenkitError(f"{run} encodes {tokenizer.config['in_channels']}-channel images, not these images")
            metrics, reconstruction = evaluate_tokenizer(tokenizer, self.images)
            method = run_config.model.quantizer.kind
            rows.append(
                [method, run.name, tokenizer.codebook_size, metrics["psnr"], ssim(reconstruction, self.images)]
                + [metrics["codebook_usage"]]
                + [metrics["perplexity"], metrics["images_per_second_eval"], *protocol.values()]
            )
            shown = torch.cat([self.images[: self.config.grid_samples], reconstruction[: self.config.grid_samples]])
            log_grid(log, run_dir, f"{run.name}_reconstruction", shown)
        return columns, rows


class GanComparison:
    """GAN runs from the same latent seeds: SW and ED to the val points (toys) or FD (images)."""

    x_axis, line_keys, plotted = "run", ("method",), ()

    def __init__(self, config: CompareConfig, accelerator: Accelerator):
        self.config, self.accelerator = config, accelerator
        self.runs = [Path(run) for run in config.runs]
        for run in self.runs:
            if not (run / "model" / "generator").is_dir():
                raise GenkitError(f"{run} is not a finished GAN run (no model/generator); train it first")
        self.data = config.reference_data or load_config(self.runs[0] / "config.yaml").data
        self.images = self.data.source not in TOYS
        self.extractor = load_extractor(config.extractor, config.extractor_path) if self.images else None
        metrics = ["fd"] if self.images else ["sliced_wasserstein", "energy_distance"]
        self.metrics, self.shown = metrics, ["method", "run", *metrics]

    def table(self, log: RunLog, run_dir: Path) -> tuple[list[str], list[list]]:
        config = self.config
        reference = validation_samples(self.data, config.num_samples)
        protocol = {"num_samples": len(reference), "seed": config.seed, "reference_set": f"{self.data.source} val"}
        if self.extractor is not None:
            reference_stats = FeatureStatistics.of(self.extractor.features(reference))
            protocol |= self.extractor.protocol()
        columns = [*self.shown, *protocol]
        rows = []
        for run in self.runs:
            generator, _, settings = load_gan(run / "model")
            latent = (generator.config["latent_dim"],)
            with torch.no_grad():
                samples = generator(initial_noise(list(range(len(reference))), latent, config.seed))
            if self.extractor is not None:
                values = [
                    frechet_from_statistics(FeatureStatistics.of(self.extractor.features(samples)), reference_stats)
                ]
            else:
                values = [sliced_wasserstein(samples, reference), energy_distance(samples, reference)]
            method = settings.method + (f"({settings.h})" if settings.method == "monoflow" else "")
            rows.append([method, run.name, *values, *protocol.values()])
            log_grid(log, run_dir, run.name, samples[: config.grid_samples] if self.images else samples)
        return columns, rows


def data_space(edm_samples: Tensor, field: FieldConfig) -> Tensor:
    """The EDM state at sigma_min as data: x_1 = x~ / (1 + sigma_min) for a rectified flow, x~ itself otherwise."""
    return edm_samples / (1 + SIGMA_MIN) if field.kind == "flow_run" else edm_samples


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
