"""Few-step sampling beyond AMED on two trained flows: searched, learned and end-to-end schedules against baselines.

For each model (configs/compare/bench_few_step_{digits,crops}.yaml) the flow is trained or reused, then GITS
(`genkit schedule search`) and LD3 (`genkit schedule learn`) fit euler, ipndm and dpmpp_2m schedules at NFE 3, 4, 5
(kept under the run's model/schedules/ and reused), and one `genkit compare` run scores them beside the baselines on
every schedule and three AMED-Plugin(iPNDM) distillations (greedy, end to end, end to end with learned timesteps).
Prints RMSE and excess FD by NFE, each method's fitting time, and the goal (docs/samplers.md §8.4): at NFE 5 the best
genkit sampler's RMSE <= 0.33x and excess FD <= 0.25x the best baseline's, and at NFE 3 and 4 it beats the best
baseline at NFE 5. `--only` runs one model; `--quick` is a smoke run (tiny budgets, its own folders); `--rmse-only`
skips FD (the crops' Inception is slow on a CPU). Writes runs/bench_few_step[_<only>][_quick].json.
"""

from itertools import product
from pathlib import Path

import torch

from genkit import compare
from genkit.compare.output import chosen, distil_seconds, pivot, print_pivot, print_table, script_parser, write_report
from genkit.compare.training import train_or_reuse
from genkit.config import load_config
from genkit.fields import FieldConfig
from genkit.schedules.file import read_schedule, save_schedule
from genkit.schedules.gits import search_schedule
from genkit.schedules.ld3 import learn_schedule
from samplers import BASELINES

REPO = Path(__file__).resolve().parent.parent
MODELS = ("digits", "crops")
NFES = (3, 4, 5)
SCHEDULE_SOLVERS = ("euler", "ipndm", "dpmpp_2m")
SEARCH = {"grid_points": 128, "teacher_steps": 1, "num_samples": 128}
LEARN = {"iterations": 200, "num_samples": 256, "batch_size": 64, "teacher_steps": 64}
QUICK_SEARCH = {"grid_points": 16, "teacher_steps": 1, "num_samples": 8}
QUICK_LEARN = {"iterations": 2, "num_samples": 8, "teacher_steps": 4}
# method -> (fit, options, quick options). Named schedules are baselines; a saved one's name starts with its method.
FITS = {"gits": (search_schedule, SEARCH, QUICK_SEARCH), "ld3": (learn_schedule, LEARN, QUICK_LEARN)}
QUICK = ["num_samples=16", "run_overrides=[train.steps=2,train.log_every=1,train.eval_every=2]"]
TITLES = {"rmse": "terminal RMSE to the reference", "excess_fd": "excess FD (FD minus the reference solve's)"}


def fitted_schedules(config, quick: bool) -> list[Path]:
    """GITS and LD3 schedules of each SCHEDULE_SOLVERS at each NFE for the config's field, fitted now or reused."""
    run = train_or_reuse(config.samplers.train_field, config.run_overrides)
    folder = run.last_stage.schedules
    field = FieldConfig(kind="flow_run", path=str(run.folder)).load()
    paths = []
    for (method, (fit, options, quick_options)), solver, nfe in product(FITS.items(), SCHEDULE_SOLVERS, NFES):
        path = folder / f"{method}_{solver}_nfe{nfe}.json"
        if not path.is_file():
            torch.manual_seed(0)
            schedule = fit(field, solver, nfe, **(quick_options if quick else options))
            schedule.name = path.stem
            save_schedule(schedule, path)
        paths.append(path)
    return paths


def rows(result: dict) -> list[dict]:
    """The comparison's cells, each with a `label`: the method, and its schedule unless that is a baseline's."""
    cells = compare.cells(result)
    for cell in cells:
        fitted = cell["schedule"].startswith(tuple(FITS))
        cell["label"] = cell["schedule"] if fitted else f"{cell['method']} ({cell['schedule']})"
        cell["baseline"] = cell["method"] in BASELINES and not fitted
    return cells


def best(cells: list[dict], nfe: int, metric: str, baseline: bool) -> dict | None:
    """The cell with the least |`metric`| at `nfe` among baselines (or among genkit's samplers).

    Excess FD is the sample FD less the reference solve's from the same noise: a few-step solver can land below it by
    chance, and what counts is how far it lands from it either way.
    """
    scored = [c for c in cells if c["nfe"] == nfe and c["baseline"] == baseline and c.get(metric) is not None]
    return min(scored, key=lambda c: abs(c[metric]), default=None)


def fitting_seconds(config, schedules: list[Path]) -> dict[str, float]:
    """Seconds each fitted schedule and each distilled predictor took on this CPU."""
    seconds = {path.stem: read_schedule(path).settings["seconds"] for path in schedules}
    distilled = distil_seconds(config.run_dir, config.samplers.distill)
    return seconds | {f"{name}_nfe{nfe}": value for name, row in distilled.items() for nfe, value in row.items()}


def goal(model: str, cells: list[dict]) -> dict:
    """Print the goal on one model (docs/samplers.md §8.4): the ratios at NFE 5, and whether NFE 3 and 4 beat the
    best baseline at NFE 5; those numbers."""
    summary = {}
    for metric, limit in (("rmse", 0.33), ("excess_fd", 0.25)):
        baseline, ours = best(cells, 5, metric, True), best(cells, 5, metric, False)
        if baseline is None or ours is None:
            continue
        ratio = abs(ours[metric]) / abs(baseline[metric])
        summary[metric] = {"baseline": baseline["label"], "baseline_value": baseline[metric], "ours": ours["label"]}
        summary[metric] |= {"ours_value": ours[metric], "ratio": ratio, "limit": limit, "met": ratio <= limit}
        for nfe in (3, 4):
            fewer = best(cells, nfe, metric, False)
            summary[metric][f"nfe{nfe}"] = {"ours": fewer["label"], "value": fewer[metric]}
            summary[metric][f"nfe{nfe}"]["beats_baseline_nfe5"] = abs(fewer[metric]) < abs(baseline[metric])
    for metric, line in summary.items():
        print(
            f"{model} {metric} at NFE 5: {line['ours']} {line['ours_value']:.4g} vs best baseline {line['baseline']} "
            f"{line['baseline_value']:.4g}: {line['ratio']:.2f}x (goal <= {line['limit']}x: "
            f"{'met' if line['met'] else 'missed'})"
        )
        for nfe in (3, 4):
            fewer = line[f"nfe{nfe}"]
            verdict = "beats" if fewer["beats_baseline_nfe5"] else "does not beat"
            print(f"  NFE {nfe}: {fewer['ours']} {fewer['value']:.4g} {verdict} the best baseline at NFE 5")
    return summary


if __name__ == "__main__":
    parser = script_parser(__doc__, only=MODELS, quick=True)
    parser.add_argument("--rmse-only", action="store_true", help="skip FD (Inception: ~2 min a sample set on a CPU)")
    args = parser.parse_args()
    results = {}
    for model in chosen(MODELS, args.only):
        overrides = (QUICK if args.quick else []) + (["samplers.metrics=[rmse]"] if args.rmse_only else [])
        config = load_config(REPO / f"configs/compare/bench_few_step_{model}.yaml", overrides)
        if args.quick:
            config.name += "-quick"
            config.samplers.train_field.overrides.append("name=flow_quick")
        schedules = fitted_schedules(config, args.quick)
        config.samplers.schedules = [*config.samplers.schedules, *map(str, schedules)]
        cells = rows(compare.run(config))
        for metric in ("rmse", "excess_fd") if "fd" in config.samplers.metrics else ("rmse",):
            print_pivot(f"{model}: {TITLES[metric]}", pivot(cells, metric, "label"), NFES, ".4g", skip_empty=True)
        seconds = fitting_seconds(config, schedules)
        print_table(f"{model}: fitting time on this CPU", {name: {"s": v} for name, v in seconds.items()}, ["s"], ".1f")
        results[model] = {"cells": cells, "fitting_seconds": seconds, "goal": goal(model, cells)}
    stem = "bench_few_step" + (f"_{args.only}" if args.only else "") + ("_quick" if args.quick else "")
    write_report(REPO / "runs" / f"{stem}.json", results)
