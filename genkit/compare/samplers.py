"""Comparing solvers on a velocity field: solvers x NFE x schedules, plus AMED predictors, from the same noise.

Every cell solves through the field (genkit.fields), so each starts from the same standard normal noise (sample i
from generator seed (seed, i), as `genkit sample`) and ends in data space. Metrics: `rmse`, the terminal RMSE
against scipy's accurate solve from the same noise in the same time convention; distances of the samples to the
val data (`fd` for images, `sw`, `ed`, `modes`, `near` for points: genkit.compare.scoring); the NFE (the sequential
model calls, counted), the network evaluations a sample (two for a guided call), the median wall time and the fitting
time of a fitted schedule or distilled predictor always. A solver entry is a baseline's name and any options
(`dpmpp_2m lower_order_final=true`). A schedule entry is a schedule's name, `default` (each solver's usual one), or
the path of a saved schedule (genkit.schedules.file, made for this field; a learned solver is one): the file defines
its cells, one for the solver it was made for (each listed solver when it names none) at the NFE its timesteps give,
whatever `nfe` lists; its name fills the schedule column. Predictors are given (`predictors`, distilled for this
field) or distilled here (`distill`: one per NFE, reused once finished). `reference_row` adds the accurate solve
itself as a row (with the evaluations it spent and, for a flow, the field's straightness), `floor` a row of train
data against the val data.
A ReFlow run is compared stage by stage (`stages`). Under `accelerate launch` the samples are split over processes;
squared errors and feature statistics are summed exactly across them.

A class-conditional field is compared at each weight of `guidance` (its config's guidance by default), one field
row group a weight, sample i at its class drawn as in the training data (genkit.noise); `agreement` is the share of
samples the digit classifier gives their requested class. NFE counts model calls: a guided call (w other than 0 and
1) runs both branches on twice the batch. Predictors distilled here get one run per NFE and weight.
"""

import dataclasses
import inspect
import json
import statistics
import time
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import reduce
from torch import Tensor

import samplers
from genkit.compare.output import Shared, log_grid
from genkit.compare.scoring import DISTANCES, SampleScorer
from genkit.compare.training import RunSpec, train_or_reuse
from genkit.config import check_choice, ranged
from genkit.data import DataConfig
from genkit.errors import GenkitError
from genkit.features import EXTRACTORS, digit_classes, load_extractor
from genkit.fields import Field, FieldConfig
from genkit.guidance import Guidance
from genkit.metrics import straightness
from genkit.noise import initial_noise
from genkit.paths import RectifiedPath
from genkit.predictors import load_distilled
from genkit.progress import progress
from genkit.runs import Run
from genkit.schedules.file import SavedSchedule, load_schedule, schedule_name
from genkit.schedules.grid import FITS, fitted_grid
from genkit.tracking import RunLog
from genkit.velocity import Velocity

METRICS = ("rmse", *DISTANCES, "agreement")
DEFAULT_SCHEDULE = "default"  # each solver's usual schedule on the field (Field.default_schedule)
REFERENCE_METHODS = ("DOP853", "RK45")
REFERENCE_BAR_DELAY = 2.0  # seconds: only a long reference solve shows its bar


@dataclass
class FitGrid:
    """Schedules fitted for the compared field (genkit.schedules.grid), one cell each: GITS (`gits`, genkit schedule
    search), LD3 (`ld3`, genkit schedule learn) or a learned solver (`learned`, genkit schedule learn --corrections)
    with `options`, for each solver at each NFE; saved with the model's schedules (a flow run's schedules/ folder,
    else the comparison's) and reused once there."""

    method: str = "gits"
    solvers: list[str] = dataclasses.field(default_factory=lambda: ["euler"])
    nfe: list[int] = ranged(lambda: [5], minimum=1)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        check_choice("samplers.fit.method", self.method, tuple(FITS))
        for solver in self.solvers:
            check_choice("samplers.fit.solvers", solver, samplers.BASELINES)
        try:  # the field, solver, NFE and device are the comparison's
            inspect.signature(FITS[self.method]).bind(None, None, None, **self.options, device=None)
        except TypeError as error:
            raise GenkitError(f"config key samplers.fit options {self.options} for {self.method}: {error}") from None


@dataclass
class DistillGrid:
    """AMED predictors distilled for the compared field: one per NFE, with the N and AFS that NFE implies.

    Odd NFE: AFS on, N = (NFE + 3) / 2 timestamps; even NFE: AFS off, N = NFE / 2 + 1 (docs/amed.md §7).
    """

    config: str = ""  # an AMED config file: the settings, optimizer and budget of every distillation
    overrides: list[str] = dataclasses.field(default_factory=list)
    nfe: list[int] = ranged(lambda: [5], minimum=2)
    name: str = ""  # the distillation runs are <compare run>/predictors/<name>_nfe<NFE>; default: the config's stem

    def specs(self, target: FieldConfig, folder: Path, weights: list[float] = ()) -> list[RunSpec]:
        """The AMED run of every NFE (and guidance weight, for a conditional field) for the field `target`."""
        stem = self.name or Path(self.config).stem
        specs = []
        for nfe, weight in product(self.nfe, weights or [None]):
            field = asdict(target) | ({} if weight is None else {"guidance": weight})
            pinned = [f"field.{key}={json.dumps(value)}" for key, value in field.items()]
            afs = nfe % 2 == 1
            steps = (nfe + 3) // 2 if afs else nfe // 2 + 1
            name = f"{stem}_nfe{nfe}" + ("" if weight is None else f"_w{weight:g}")
            cell = [f"amed.num_steps={steps}", f"amed.afs={str(afs).lower()}", f"name={name}"]
            specs.append(RunSpec(self.config, [*self.overrides, *pinned, *cell, f"output_dir={folder}"]))
        return specs


@dataclass
class SamplerGrid:
    """Solvers x NFE x schedules on one field (or a flow or ReFlow run trained here first), plus AMED predictors."""

    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    train_field: RunSpec | None = None  # a flow or ReFlow run to train (or reuse) first; the field is its model
    stages: list[str] = dataclasses.field(default_factory=list)  # a ReFlow run's stages, each compared as a field
    solvers: list[str] = dataclasses.field(default_factory=lambda: ["euler", "heun", "dpmpp_2m"])
    nfe: list[int] = ranged(lambda: [4, 8], minimum=1)
    schedules: list[str] = dataclasses.field(default_factory=lambda: [DEFAULT_SCHEDULE])  # names or saved files
    predictors: list[str] = dataclasses.field(default_factory=list)
    distill: list[DistillGrid] = dataclasses.field(default_factory=list)
    fit: list[FitGrid] = dataclasses.field(default_factory=list)
    metrics: list[str] = dataclasses.field(default_factory=lambda: ["rmse"])
    reference_method: str = "DOP853"
    reference_tolerance: float = ranged(1e-7, above=0)
    reference_row: bool = False
    floor: bool = False
    extractor: str = "digits"
    extractor_path: str | None = None
    reference_data: DataConfig | None = None
    repeats: int = ranged(1, minimum=1)  # timed solves of a cell; `seconds` is their median
    guidance: list[float] = ranged(list, minimum=0)  # conditional fields: the weights compared (default field.guidance)

    def __post_init__(self):
        for entry in self.solvers:
            solver_entry(entry)
        names = (DEFAULT_SCHEDULE, *samplers.SCHEDULES)
        for schedule in self.schedules:
            if schedule not in names and not Path(schedule).is_file():
                raise GenkitError(
                    f"config key samplers.schedules={schedule!r} is neither a schedule ({', '.join(names)}) nor a "
                    "saved schedule file (genkit schedule search writes one)"
                )
        for metric in self.metrics:
            check_choice("samplers.metrics", metric, METRICS)
        check_choice("samplers.extractor", self.extractor, EXTRACTORS)
        check_choice("samplers.reference_method", self.reference_method, REFERENCE_METHODS)
        if self.stages and (self.predictors or self.distill or self.fit or self.schedule_files):
            raise GenkitError(
                "samplers.stages compares a ReFlow run's stages; predictors and saved schedules belong to one field"
            )

    @property
    def schedule_files(self) -> list[str]:
        """The schedule entries that are saved schedule files."""
        return [schedule for schedule in self.schedules if schedule not in (DEFAULT_SCHEDULE, *samplers.SCHEDULES)]


def solver_entry(entry: str) -> tuple[str, dict]:
    """A samplers.solvers entry: a baseline's name, then any options as key=value (YAML values), e.g.
    `dpmpp_2m lower_order_final=true`; (name, options), or one error naming the entry."""
    name, *settings = entry.split()
    check_choice("samplers.solvers", name, samplers.BASELINES)
    pairs = [setting.partition("=") for setting in settings]
    if any(not key or not equals for key, equals, _ in pairs):
        raise GenkitError(f"config key samplers.solvers entry {entry!r}: write options as key=value after the name")
    options = {key: yaml.safe_load(value) for key, _, value in pairs}
    try:
        inspect.signature(samplers.solver_spec(name).function).bind(None, None, None, **options)
    except TypeError as error:
        raise GenkitError(f"config key samplers.solvers entry {entry!r}: {error}") from None
    return name, options


def predictor_field(predictor: Path) -> str:
    """The id of the field the predictor in model folder `predictor` was distilled for."""
    config = predictor / "config.json"
    return json.loads(config.read_text()).get("field_id", "") if config.is_file() else ""


def distilled_seconds(predictor: Path) -> float | None:
    """The training seconds of the AMED run whose model folder is `predictor`, if it is a run's."""
    run = Run(predictor.parent)
    return run.training_seconds if run.config_file.is_file() else None


def distilled_loss(predictor: Path) -> str | None:
    """The loss (amed.loss) the predictor in model folder `predictor` was distilled with, if its run folder says."""
    run = Run(predictor.parent)
    return run.resolved().get("amed", {}).get("loss", "greedy") if run.config_file.is_file() else None


@dataclass
class Cell:
    """One setting of the grid: a solver at an NFE on a schedule's name or a saved schedule (with its options)."""

    method: str
    solver: str
    nfe: int
    schedule: str | SavedSchedule
    options: dict
    field: str | None = None  # a predictor's cell runs only on the field (id) it was distilled for
    fit_seconds: float | None = None  # what fitting its schedule or distilling its predictor took


class EvaluationBar:
    """A velocity that moves a progress bar by one at each evaluation: an adaptive solve's count is not known ahead."""

    def __init__(self, velocity: Velocity, bar):
        self.velocity, self.bar = velocity, bar

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.bar.update(1)
        return self.velocity(x, t)


class SamplerComparison:
    """The cells of a SamplerGrid on its field (or on each stage of a ReFlow run), from the same noise."""

    x_axis, line_keys = "nfe", ("field", "method", "schedule")

    def __init__(self, grid: SamplerGrid, shared: Shared, accelerator: Accelerator, run_dir: Path):
        self.grid, self.shared, self.accelerator = grid, shared, accelerator
        if grid.train_field is not None:
            run = train_or_reuse(grid.train_field, shared.run_overrides)
            grid.field = dataclasses.replace(grid.field, kind="flow_run", path=str(run.folder))
        runs = [Path(grid.field.path) / stage for stage in grid.stages]
        configs = [FieldConfig(kind="flow_run", path=str(run)) for run in runs] or [grid.field]
        self.models = {
            run.name if grid.stages else "": config.load(accelerator.device)
            for run, config in zip(runs or [None], configs, strict=True)
        }
        # name -> (model, guidance): a conditional model once a guidance weight, an unconditional one as it is.
        self.guided: dict[str, tuple[Field, Guidance | None]] = {}
        interval = grid.field.guidance_setting().interval
        for name, model in self.models.items():
            if model.conditioning is None:
                if grid.guidance:
                    raise GenkitError("samplers.guidance compares guidance weights; this field is unconditional")
                self.guided[name] = (model, None)
            for weight in grid.guidance or ([grid.field.guidance] if model.conditioning else []):
                self.guided[f"{name} w={weight:g}".strip()] = (model, Guidance(weight, interval))
        # Each field bound to sample 0's class: enough to check cells, schedules and predictors against it.
        self.fields = {name: self.bound(name, [0]) for name in self.guided}
        if "agreement" in grid.metrics and not all(model.conditioning for model in self.models.values()):
            raise GenkitError("metric agreement scores requested classes; it needs a class-conditional field")
        distances = [metric for metric in grid.metrics if metric not in ("rmse", "agreement")]
        extractor = load_extractor(grid.extractor, grid.extractor_path) if "fd" in distances else None
        shape = next(iter(self.fields.values())).shape
        if extractor is not None and len(shape) != 3:
            raise GenkitError(f"metric fd needs image samples; this field's samples have shape {shape}")
        self.scorer = None
        if distances:
            data = grid.reference_data or self.run_data()
            self.scorer = SampleScorer(data, distances, extractor, accelerator)
        self.cells = self.grid_cells(run_dir)
        for name, field in self.fields.items():
            for cell in self.field_cells(name):
                field.form(cell.schedule, cell.solver)  # a schedule or solver that does not fit fails here
        self.plotted = [metric for metric in grid.metrics if metric not in ("modes", "near")]
        flows = any(isinstance(path, RectifiedPath) for field in self.fields.values() for _, path in field.forms)
        straight = ["straightness"] if grid.reference_row and flows else []
        # Beside fd, the part of it a solver can remove: fd minus the FD of the accurate solve from the same noise.
        metrics = [
            column for metric in grid.metrics for column in ([metric, "excess_fd"] if metric == "fd" else [metric])
        ]
        self.columns = ["field", "method", "solver", "schedule", "nfe", *metrics, *straight]
        self.columns += ["nfe_counted", "evaluations", "seconds", "fit_seconds"]
        self.shown = [column for column in self.columns if column != "solver"]

    def run_data(self) -> DataConfig:
        """The data set samples are compared with when reference_data is unset: a flow run's own data config."""
        if self.grid.field.kind != "flow_run":
            raise GenkitError("distance metrics on this field need samplers.reference_data, the data to compare with")
        return Run(Path(self.grid.field.path) / (self.grid.stages[0] if self.grid.stages else "")).data

    def bound(self, name: str, indices: list[int]) -> Field:
        """Field `name` for samples `indices`: a conditional model bound to their classes (drawn as in data)."""
        model, guidance = self.guided[name]
        if guidance is None:
            return model
        return model.bind(model.draw_conditions(indices, self.shared.seed), guidance)

    def field_cells(self, name: str) -> list[Cell]:
        """The cells run on field `name`: every cell without a field, and the predictors made for it."""
        return [cell for cell in self.cells if cell.field in (None, self.fields[name].field_id)]

    def grid_cells(self, run_dir: Path) -> list[Cell]:
        """Baselines x schedules x NFE (a saved or fitted schedule: its own cells), then one cell per predictor, on
        the field (of the guidance weight) it was distilled for."""
        grid, cells = self.grid, []
        field = next(iter(self.fields.values()))
        if grid.fit and field.guidance is not None:
            raise GenkitError(
                "samplers.fit fits on an unconditional field; fit a guided one with genkit schedule search"
            )
        flow = Run(grid.field.path).last_stage if grid.field.kind == "flow_run" else None
        folder = flow.schedules if flow else run_dir / "schedules"
        fitted = [
            str(path)
            for fit in grid.fit
            for path in fitted_grid(
                field, folder, {fit.method: fit.options}, fit.solvers, fit.nfe, self.accelerator.device
            )
        ]
        for entry in grid.solvers:
            solver, options = solver_entry(entry)
            named = [schedule for schedule in grid.schedules if schedule not in grid.schedule_files]
            resolved = [field.default_schedule(solver) if name == DEFAULT_SCHEDULE else name for name in named]
            # `default` may name a schedule also listed: one cell each. A sigma-space solver skips the schedules of
            # rectified time (it runs a flow in EDM form, on sigma schedules), unless they are all it is given: then
            # the grid fails, naming the sigma schedules.
            sigma_only = samplers.solver_spec(solver).sigma_space
            runnable = [name for name in resolved if not (sigma_only and name in RectifiedPath.schedules)] or resolved
            cells += [
                Cell(entry, solver, nfe, schedule, options) for schedule in dict.fromkeys(runnable) for nfe in grid.nfe
            ]
        for schedule in [*grid.schedule_files, *fitted]:
            saved = load_schedule(Path(schedule), field)
            for solver in [saved.solver] if saved.solver else [solver_entry(entry)[0] for entry in grid.solvers]:
                cells.append(Cell(solver, solver, saved.nfe(solver), saved, {}, None, saved.settings.get("seconds")))
        paths = [Path(path) for path in grid.predictors]
        for distill in grid.distill:
            paths += [
                train_or_reuse(spec, self.shared.run_overrides).model
                for spec in distill.specs(grid.field, run_dir / "predictors", grid.guidance)
            ]
        for path in paths:
            made_for = next((f for f in self.fields.values() if f.field_id == predictor_field(path)), field)
            distilled = load_distilled(path, made_for, self.accelerator.device)
            settings = distilled.settings
            method = settings.solver if settings.solver == "amed" else f"amed_plugin({settings.base})"
            method += "[bottleneck]" if settings.features == "bottleneck" else ""
            method += "[end_to_end]" if distilled_loss(path) == "end_to_end" else ""
            cell = Cell(method, settings.solver, distilled.nfe, distilled.schedule, distilled.solver_options)
            cells.append(dataclasses.replace(cell, field=made_for.field_id, fit_seconds=distilled_seconds(path)))
        return cells

    def solve(self, field: Field, z: Tensor, cell: Cell) -> tuple[Tensor | None, float, int]:
        """(data samples, or None when the solver cannot spend exactly cell.nfe; median seconds of the solves;
        network evaluations a sample, both branches of a guided call counted)."""
        seconds, out = [], None
        counted = field.guided.evaluations if field.guided else 0
        for _ in range(self.grid.repeats):
            start = time.perf_counter()
            try:
                with torch.no_grad():
                    out = field.solve(z, cell.solver, cell.nfe, cell.schedule, cell.options)
            except samplers.SamplerError:
                return None, 0.0, 0
            seconds.append(time.perf_counter() - start)
        evaluations = (field.guided.evaluations - counted) // self.grid.repeats if field.guided else cell.nfe
        return out, statistics.median(seconds), evaluations

    def reference_solve(self, field: Field, z: Tensor, schedule: str) -> tuple[Tensor, int]:
        """field.reference at the grid's method and tolerance, its evaluations counted on a bar (main process)."""
        grid = self.grid
        desc = f"reference {grid.reference_method} rtol=atol={grid.reference_tolerance:g}"
        quiet = not self.accelerator.is_main_process
        with progress(desc=desc, unit="eval", leave=False, delay=REFERENCE_BAR_DELAY, disable=quiet) as bar:
            forms = [(EvaluationBar(velocity, bar), path) for velocity, path in field.forms]
            return dataclasses.replace(field, forms=forms).reference(
                z, schedule, grid.reference_tolerance, grid.reference_method
            )

    def rmse(self, out: Tensor, target: Tensor) -> float:
        """sqrt(mean squared error) over the samples of every process."""
        error = torch.tensor([(out - target).double().pow(2).sum().item(), out.numel()], dtype=torch.float64)
        sums = reduce(error.to(self.accelerator.device), "sum")
        return (sums[0] / sums[1]).sqrt().item()

    def agreement(self, out: Tensor, labels: Tensor) -> float:
        """The share of samples (over every process) the digit classifier gives their requested class."""
        hits = (digit_classes(out).to(labels.device) == labels).sum() if len(out) else torch.tensor(0)
        counts = torch.tensor([float(hits), float(len(out))], dtype=torch.float64, device=self.accelerator.device)
        sums = reduce(counts, "sum")
        return (sums[0] / sums[1]).item()

    def field_rows(
        self, name: str, field: Field, z: Tensor, log: RunLog, run_dir: Path, labels: Tensor | None
    ) -> list[dict]:
        """The rows of one field: every cell, then the accurate solve when asked for (`labels`: the requested
        classes of a conditional field's samples)."""
        grid, rows, targets, reference_fd = self.grid, [], {}, {}

        def reference(schedule: str) -> tuple[Tensor, int]:
            """The accurate solve in the time `schedule` spans (once a time convention), and its evaluations."""
            path = field.form(schedule)[1]
            if path not in targets:
                targets[path] = self.reference_solve(field, z, schedule)
            return targets[path]

        def excess_fd(schedule: str, fd: float) -> float:
            """fd less the FD of the accurate solve in the time `schedule` spans (scored once a time convention)."""
            path = field.form(schedule)[1]
            if path not in reference_fd:
                reference_fd[path] = self.scorer.score(reference(schedule)[0])["fd"]
            return fd - reference_fd[path]

        for cell in self.field_cells(name):
            out, seconds, evaluations = self.solve(field, z, cell) if len(z) else (z, 0.0, 0)
            reachable = bool(self.accelerator.gather(torch.tensor([out is not None], device=z.device)).all())
            row = {"field": name, "method": cell.method, "solver": cell.solver}
            row["schedule"] = schedule_name(cell.schedule)
            row |= {"nfe": cell.nfe, "nfe_counted": 0, "seconds": seconds, "fit_seconds": cell.fit_seconds}
            if reachable:
                row["nfe_counted"] = cell.nfe  # samplers.solve verifies the count it spends
                row["evaluations"] = int(self.accelerator.gather(torch.tensor([evaluations], device=z.device)).max())
                if "rmse" in grid.metrics:
                    row["rmse"] = self.rmse(out, reference(field.form(cell.schedule, cell.solver)[1].schedules[0])[0])
                row |= self.scorer.score(out) if self.scorer is not None else {}
                row |= {"agreement": self.agreement(out, labels)} if "agreement" in grid.metrics else {}
                if "fd" in row:
                    row["excess_fd"] = excess_fd(field.form(cell.schedule, cell.solver)[1].schedules[0], row["fd"])
                if len(out):
                    grid_name = f"{name}{cell.method}_{schedule_name(cell.schedule)}_nfe{cell.nfe}"
                    log_grid(log, run_dir, grid_name, out[: self.shared.grid_samples])
            rows.append(row)
        if grid.reference_row:
            schedule = field.default_schedule("euler")
            target, evaluations = reference(schedule)
            row = {"field": name, "method": f"reference ({grid.reference_method})", "solver": grid.reference_method}
            row |= {"schedule": schedule, "nfe_counted": evaluations} | (
                {"rmse": 0.0} if "rmse" in grid.metrics else {}
            )
            row |= self.scorer.score(target) if self.scorer is not None else {}
            row |= {"agreement": self.agreement(target, labels)} if "agreement" in grid.metrics else {}
            row |= {"excess_fd": 0.0} if "fd" in row else {}
            velocity, path = field.form(schedule)
            if isinstance(path, RectifiedPath):
                row["straightness"] = straightness(velocity, path.start(z), nfe=32)
            rows.append(row)
        return rows

    def table(self, log: RunLog, run_dir: Path) -> tuple[list[dict], dict]:
        grid, accelerator, shared = self.grid, self.accelerator, self.shared
        first = next(iter(self.fields.values()))
        protocol = {"field_id": "; ".join(f.field_id for f in self.fields.values())}
        protocol |= {"num_samples": shared.num_samples, "seed": shared.seed}
        if "rmse" in grid.metrics or grid.reference_row:
            protocol["reference"] = f"{grid.reference_method} rtol=atol={grid.reference_tolerance:g}"
        if self.scorer is not None:
            protocol |= self.scorer.protocol()
        with accelerator.split_between_processes(list(range(shared.num_samples))) as indices:
            z = initial_noise(indices, first.shape, shared.seed).to(accelerator.device, first.dtype)
        if any(guidance is not None for _, guidance in self.guided.values()):
            protocol["conditions"] = "classes drawn as in the training data: sample i's from generator (seed, i, 1)"
            protocol["nfe_counts"] = (
                "nfe_counted: sequential model calls; evaluations: network evaluations a sample, two for a guided call "
                "(w not 0 or 1), which runs both branches on twice the batch"
            )
        rows = []
        if grid.floor and self.scorer is not None:
            rows.append({"field": "", "method": "floor (train vs val)"} | self.scorer.floor(shared.num_samples))
        for name, (model, guidance) in self.guided.items():
            field = self.bound(name, indices)
            labels = model.draw_conditions(indices, shared.seed).to(accelerator.device) if guidance else None
            rows += self.field_rows(name, field, z.to(field.dtype), log, run_dir, labels)
        return rows, protocol
