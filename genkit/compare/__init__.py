"""`genkit compare CONFIG`: every cell of a comparison on the same inputs and budget, one table, plots and grids.

A compare config sets the shared protocol (`num_samples`, `seed`, `grid_samples`), the tracker, and exactly one
subject section, each in its own module: `samplers` (solvers x NFE x schedules and AMED predictors on a field),
`tokenizers` (tokenizer runs on the same validation images) or `gans` (GAN runs from the same latent seeds). Runs
and predictors a subject needs can be trained by the comparison itself and are reused once finished. Every cell
becomes a row of ONE table with the protocol in its columns, logged as a `wandb.Table` (offline by default) with
line plots and a grid of samples a cell; the same lands in runs/<name>/ as comparison.csv, comparison.json,
plots/ and grids/.
"""

import dataclasses
from dataclasses import dataclass

from accelerate import Accelerator

from genkit.compare.gans import GanComparison, GanRuns
from genkit.compare.output import Shared, format_table, plot_metric
from genkit.compare.samplers import SamplerComparison, SamplerGrid
from genkit.compare.tokenizers import TokenizerComparison, TokenizerRuns
from genkit.config import RunConfig, check_choice, config_dict, flat_config, ranged, register_task
from genkit.errors import GenkitError
from genkit.tracking import TRACKERS, RunLog

SUBJECTS = {"samplers": SamplerComparison, "tokenizers": TokenizerComparison, "gans": GanComparison}


@register_task("compare")
@dataclass
class CompareConfig(RunConfig):
    """A comparison: the shared protocol, the tracker, and one subject section (samplers, tokenizers or gans)."""

    task: str = "compare"
    name: str = "compare"
    num_samples: int = ranged(256, minimum=2)
    seed: int = ranged(0, minimum=0)
    grid_samples: int = ranged(16, minimum=1)
    tracker: str = "wandb"
    run_overrides: list[str] = dataclasses.field(default_factory=list)  # for every run trained here (budgets)
    samplers: SamplerGrid | None = None
    tokenizers: TokenizerRuns | None = None
    gans: GanRuns | None = None

    def __post_init__(self):
        check_choice("tracker", self.tracker, TRACKERS)
        given = [subject for subject in SUBJECTS if getattr(self, subject) is not None]
        if len(given) != 1:
            raise GenkitError(
                f"a compare config sets exactly one subject section ({', '.join(SUBJECTS)}); this one sets "
                f"{', '.join(given) or 'none'}"
            )

    @property
    def subject(self) -> str:
        return next(subject for subject in SUBJECTS if getattr(self, subject) is not None)


def run(config: CompareConfig) -> dict:
    """Compute every cell, log the table (protocol last), plots and grids; returns {"columns", "rows"}."""
    run_dir = config.run_dir
    accelerator = Accelerator(log_with=None if config.tracker == "none" else config.tracker, project_dir=str(run_dir))
    shared = Shared(config.num_samples, config.seed, config.grid_samples, tuple(config.run_overrides))
    comparison = SUBJECTS[config.subject](getattr(config, config.subject), shared, accelerator, run_dir)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    log = RunLog(accelerator, run_dir, config.tracker, flat_config(config_dict(config)))
    cells, protocol = comparison.table(log, run_dir)
    columns = [*comparison.columns, *protocol]
    rows = [[cell.get(column) for column in comparison.columns] + list(protocol.values()) for cell in cells]
    log.log_table("comparison", columns, rows)
    for metric in comparison.plotted:
        plot = plot_metric(run_dir, metric, columns, rows, comparison.x_axis, comparison.line_keys)
        if plot is not None:
            log.log_picture(f"{metric}_vs_{comparison.x_axis}", plot)
    log.finish()
    if accelerator.is_main_process:
        print(format_table(comparison.shown, [[row[columns.index(c)] for c in comparison.shown] for row in rows]))
    return {"columns": columns, "rows": rows}


def cells(result: dict) -> list[dict]:
    """The rows of a comparison's result as {column: value}."""
    return [dict(zip(result["columns"], row, strict=True)) for row in result["rows"]]
