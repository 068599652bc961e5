"""The trend of the ReFlow paper's CIFAR-10 table at CPU scale: 1-RF vs 2-RF vs 2-RF + one-step distillation.

Runs `genkit compare` on configs/compare/reproduce_reflow_{8gaussians,moons,checkerboard,mnist5k}.yaml and prints,
per data set and stage, distances after 1, 2 and 4 Euler steps and the accurate solve, then our trend next to the
paper's (docs/rectified_flow.md §6); a change no larger than the floor (train against held-out data) is "equal".
Protocol and flags: docs/benchmarks.md. Writes runs/reproduce_reflow.json (or _quick).
"""

from pathlib import Path

from genkit import compare
from genkit.compare.output import bench_config, chosen, print_table, script_parser, write_report
from genkit.compare.scoring import DISTANCES
from genkit.config import load_config
from genkit.runs import Run

DATA = {"toys": ("8gaussians", "moons", "checkerboard"), "mnist": ("mnist5k",)}
STAGES = {"1-rf": "1-RF", "2-rf": "2-RF", "distill": "2-RF+distill"}
QUICK = ["train.steps=20", "reflow_steps=10", "distill_steps=10", "pairs.num_pairs=200", "pairs.shard_size=200"]


def stage_table(result: dict, run: Path) -> tuple[dict[str, dict], dict]:
    """stage -> {metric@1, @2, @4, @ode, NFE ode, straightness, train s}, and the floor's metrics."""
    metrics = [c for c in result["columns"] if c in DISTANCES]
    stages, floor = {}, {}
    for cell in compare.cells(result):
        if cell["method"].startswith("floor"):
            floor = {metric: cell[metric] for metric in metrics}
            continue
        solve = cell["method"].startswith("reference")
        stage = stages.setdefault(cell["field"], {"train s": Run(run / cell["field"]).training_seconds})
        stage |= {f"{metric}@{'ode' if solve else cell['nfe']}": cell[metric] for metric in metrics}
        if solve:
            stage |= {"NFE ode": cell["nfe_counted"], "straightness": cell["straightness"]}
    return stages, floor


def report(data: str, stages: dict[str, dict], floor: dict) -> dict[str, str]:
    """Print the data set's table and its trend against the paper's; the trend."""
    columns = [key for key in next(iter(stages.values())) if key != "train s"] + ["train s"]
    print_table(data, {label: stages[stage] for stage, label in STAGES.items()}, columns, width=13)
    print(f"{'floor':<14}" + "".join(f"{key}@train {value:.4g}   " for key, value in floor.items()))
    metric = "fd" if "fd" in floor else "sw"
    change = lambda a, b, floor: "equal" if abs(b - a) <= floor else ("better" if b < a else "worse")  # noqa: E731
    one = [stages[stage][f"{metric}@1"] for stage in STAGES]
    solve = [stages[stage][f"{metric}@ode"] for stage in ("1-rf", "2-rf")]
    straight = [stages[stage]["straightness"] for stage in ("1-rf", "2-rf")]
    trend = {
        "one step": f"{' -> '.join(f'{v:.3g}' for v in one)}: reflow {change(one[0], one[1], floor[metric])}, "
        f"distillation {change(one[1], one[2], floor[metric])} (paper 378 -> 12.21 -> 4.85: better, better)",
        "solve": f"{solve[0]:.3g} -> {solve[1]:.3g}: {change(solve[0], solve[1], floor[metric])} after reflow "
        "(paper 2.58 -> 3.36: slightly worse)",
        "straightness": f"{straight[0]:.3g} -> {straight[1]:.3g} ({'drops' if straight[1] < straight[0] else 'rises'})",
        "ode NFE": f"{stages['1-rf']['NFE ode']} -> {stages['2-rf']['NFE ode']} (paper RK45 127 -> 110)",
    }
    for claim, verdict in trend.items():
        print(f"  {claim:<13}{verdict}")
    return trend


if __name__ == "__main__":
    args = script_parser(__doc__, only=DATA, quick=True).parse_args()
    results = {}
    for data in chosen(DATA, args.only):
        config = bench_config(f"reproduce_reflow_{data}", args.quick)
        spec = config.samplers.train_field
        spec.overrides += [*QUICK, "output_dir=runs/reproduce_reflow_quick"] if args.quick else []
        stages, floor = stage_table(compare.run(config), Path(load_config(spec.config, spec.overrides).run_dir))
        results[data] = {"stages": stages, "floor": floor, "trend": report(data, stages, floor)}
    write_report(Path("runs") / ("reproduce_reflow_quick.json" if args.quick else "reproduce_reflow.json"), results)
