"""The GAN-as-ODE picture at CPU scale: MonoFlow with each h, WGAN-GP original vs ReFlow-derived (docs/gans_as_odes.md).

Runs `genkit compare` on configs/compare/reproduce_gans_{8gaussians,moons,mnist5k}.yaml and prints each method's
distances and whether 5 Euler steps on its critic's field help (protocol and flags: docs/benchmarks.md). Writes
runs/reproduce_gans.json (or _quick).
"""

from pathlib import Path

from genkit import compare
from genkit.compare.output import bench_config, chosen, print_table, script_parser, write_report
from genkit.compare.scoring import DISTANCES

DATA = {"toys": ("8gaussians", "moons"), "mnist": ("mnist5k",)}
QUICK = ["run_overrides=[output_dir=runs/reproduce_gans_quick,train.tracker=none,train.steps=10,train.log_every=5]"]


def table(result: dict) -> dict[str, dict]:
    """method (or floor/init) -> {distances of its samples, refined_<size>: distances after refinement, seconds}."""
    rows, metric_columns = {}, [c for c in result["columns"] if c in DISTANCES]
    for cell in compare.cells(result):
        scores = {metric: cell[metric] for metric in metric_columns}
        name = cell["method"] if cell["method"] in ("floor", "init") else cell["run"]
        key = "samples" if cell["refine_step_size"] is None else f"refined_{cell['refine_step_size']:g}"
        rows.setdefault(name, {"train_seconds": cell["train_seconds"]})[key] = scores
    return rows


def print_rows(data: str, rows: dict[str, dict], metric: str) -> None:
    sizes = sorted({key for row in rows.values() for key in row if key.startswith("refined_")})
    table = {name: {metric: row["samples"][metric], "train s": row["train_seconds"]} for name, row in rows.items()}
    for name, row in rows.items():
        helps = {size: row[size][metric] < row["samples"][metric] for size in sizes if size in row}
        table[name] |= {size: f"{row[size][metric]:.4g}{' helps' if better else ''}" for size, better in helps.items()}
    title = f"{data}: {metric.upper()} to the val data (lower is better); refined = 5 Euler steps on the critic"
    print_table(title, table, [metric, *sizes, "train s"], {"train s": ".0f"}, width=14)


if __name__ == "__main__":
    args = script_parser(__doc__, only=DATA, quick=True).parse_args()
    results = {}
    for data in chosen(DATA, args.only):
        config = bench_config(f"reproduce_gans_{data}", args.quick, QUICK)
        results[data] = table(compare.run(config))
        print_rows(data, results[data], "fd" if data in DATA["mnist"] else "sw")
    write_report(Path("runs") / ("reproduce_gans_quick.json" if args.quick else "reproduce_gans.json"), results)
