"""What a comparison writes besides its table: a grid of samples a cell, metric plots, the table as text; and what
the benchmark scripts (scripts/) share: their flags, a pivot of the table by method x NFE, text tables, JSON."""

import argparse
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from torch import Tensor

from genkit.files import write_json
from genkit.runs import Run
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


def script_parser(doc: str, only: Sequence[str] = (), quick: bool = False) -> argparse.ArgumentParser:
    """A benchmark script's parser, described by the first line of its docstring `doc`: with `--only` one of `only`
    (when given) and `--quick`, a smoke run (when asked for)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if only:
        parser.add_argument("--only", choices=tuple(only), default=None, help="run just this one")
    if quick:
        parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run, meaningless numbers")
    return parser


def bench_config(
    name: str, quick: bool = False, quick_overrides: Sequence[str] = (), overrides: Sequence[str] = (), tag: str = ""
):
    """The shipped compare config compare/<name> with `overrides`, its run named <name><tag>; for a `--quick` smoke run
    also `quick_overrides`, and named <name><tag>-quick so that its tables do not overwrite the full run's."""
    from genkit.config import load_config  # the compare task registers itself with genkit.config, which imports this

    config = load_config(f"compare/{name}", [*overrides, *(quick_overrides if quick else ())])
    config.name += tag + ("-quick" if quick else "")
    return config


def chosen(names: Sequence[str] | Mapping[str, Sequence[str]], only: str | None) -> list[str]:
    """What a run with `--only only` covers: every name without it, else the one chosen; `names` is a list of
    names or maps each choice to its names (`--only toys` for 8gaussians and moons)."""
    if isinstance(names, Mapping):
        return [name for choice, group in names.items() if only in (None, choice) for name in group]
    return [name for name in names if only in (None, name)]


def pivot(cells: Iterable[dict], value: str, row: str = "method") -> dict[Any, dict[Any, Any]]:
    """The cells of a comparison (`genkit.compare.cells`) as cell[row] -> NFE -> cell[value], in the cells' order;
    None where the cell has no such value or was not reachable (it spent no evaluations: `nfe_counted` 0)."""
    table: dict[Any, dict[Any, Any]] = {}
    for cell in cells:
        table.setdefault(cell[row], {})[cell.get("nfe")] = cell.get(value) if cell.get("nfe_counted", 1) else None
    return table


def print_table(
    title: str,
    table: Mapping[Any, Mapping[Any, Any]],
    columns: Sequence,
    fmt: str | Mapping[Any, str] = ".4g",
    width: int = 10,
    headers: Sequence[str] | None = None,
    skip_empty: bool = False,
) -> None:
    """Print `table` (row name -> column -> value) under a blank line and `title`: a line a row, a column of `width`
    characters a key of `columns` (headed by `headers`, else the keys); a str is printed as it is, another value with
    `fmt` (or `fmt[column]`), a missing one or None as '-'. `skip_empty` leaves out the rows with no value in any of
    the columns."""
    names = [n for n, row in table.items() if not skip_empty or any(row.get(c) is not None for c in columns)]
    label = max((len(str(name)) for name in names), default=0) + 2
    formats = [fmt if isinstance(fmt, str) else fmt.get(column, ".4g") for column in columns]
    print(f"\n{title}\n{'':<{label}}" + "".join(f"{h:>{width}}" for h in headers or [str(c) for c in columns]))
    for name in names:
        values = [table[name].get(column) for column in columns]
        texts = [
            "-" if v is None else v if isinstance(v, str) else format(v, f)
            for v, f in zip(values, formats, strict=True)
        ]
        print(f"{name!s:<{label}}" + "".join(f"{text:>{width}}" for text in texts))


def print_pivot(
    title: str, table: Mapping[Any, Mapping[int, Any]], nfes: Sequence[int] | None, fmt: str, skip_empty: bool = False
) -> None:
    """`print_table` of a `pivot` (or any row -> NFE -> value), a column headed 'NFE n' for each of `nfes` (None:
    the first row's)."""
    nfes = list(next(iter(table.values()), {})) if nfes is None else nfes
    print_table(title, table, nfes, fmt, headers=[f"NFE {nfe}" for nfe in nfes], skip_empty=skip_empty)


def mean_spread(values: Sequence[float | None]) -> str:
    """'mean (max - min)' of the values given (None: not measured), or '-' when there are none."""
    given = [value for value in values if value is not None]
    return f"{statistics.mean(given):.4g} ({max(given) - min(given):.2g})" if given else "-"


def distil_seconds(run_dir: Path, grids: Iterable) -> dict[str, dict[int, float]]:
    """grid name -> NFE -> training seconds of each AMED predictor a comparison in `run_dir` distilled for its
    `samplers.distill` grids (`grids`: their `name` and `nfe`), from run_dir/predictors/<name>_nfe<nfe>."""
    folder = run_dir / "predictors"
    return {
        grid.name: {nfe: Run(folder / f"{grid.name}_nfe{nfe}").training_seconds for nfe in grid.nfe} for grid in grids
    }


def wall_seconds(function: Callable[..., object], *args: Any) -> float:
    """Wall time of one call of `function(*args)`."""
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def write_report(path: Path, data: dict, start: float | None = None) -> None:
    """`data` as indented JSON to `path` (atomically), then "wrote <path>", and the seconds since `start` (a
    `time.perf_counter()`) when given."""
    write_json(path, data)
    print(f"\nwrote {path}" + ("" if start is None else f" in {time.perf_counter() - start:.1f} s"))
