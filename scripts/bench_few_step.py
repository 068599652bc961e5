"""Few-step sampling beyond AMED on two trained flows: searched, learned and end-to-end schedules against baselines.

For each model (configs/compare/bench_few_step_{digits,crops}.yaml) the flow is trained or reused, then GITS
(`genkit schedule search`) and LD3 (`genkit schedule learn`) fit euler, ipndm and dpmpp_2m schedules at NFE 3, 4, 5
(kept under the run's model/schedules/ and reused), and one `genkit compare` run scores them beside the baselines on
every schedule and three AMED-Plugin(iPNDM) distillations (greedy, end to end, end to end with learned timesteps).
Prints RMSE and excess FD by NFE, each method's fitting time, and the goal of issue 14: at NFE 5 the best genkit
sampler's RMSE <= 0.33x and excess FD <= 0.25x the best baseline's, and at NFE 3 and 4 it beats the best baseline at
NFE 5. `--only` runs one model; `--quick` is a smoke run (tiny budgets, its own folders); `--rmse-only` skips FD (the
crops' Inception is slow on a CPU). Writes runs/bench_few_step[_<only>][_quick].json.
"""

import argparse
from pathlib import Path

import torch

from genkit import compare
from genkit.compare.training import train_or_reuse
from genkit.config import load_config
from genkit.fields import FieldConfig
from genkit.files import write_json
from genkit.runs import Run
from genkit.schedules.file import read_schedule, save_schedule
from genkit.schedules.gits import search_schedule
from genkit.schedules.ld3 import learn_schedule

REPO = Path(__file__).resolve().parent.parent
MODELS = ("digits", "crops")
NFES = (3, 4, 5)
SCHEDULE_SOLVERS = ("euler", "ipndm", "dpmpp_2m")
BASELINES = ("euler", "heun", "dpm_solver_2", "dpmpp_2m", "ipndm")
SEARCH = {"grid_points": 128, "teacher_steps": 1, "num_samples": 128}
LEARN = {"iterations": 200, "num_samples": 256, "batch_size": 64, "teacher_steps": 64}
QUICK_SEARCH = {"grid_points": 16, "teacher_steps": 1, "num_samples": 8}
QUICK_LEARN = {"iterations": 2, "num_samples": 8, "teacher_steps": 4}
QUICK = ["num_samples=16", "run_overrides=[train.steps=2,train.log_every=1,train.eval_every=2]"]
# Schedules: the named ones are baselines; a saved file's name starts with its method.
FITTED = ("gits", "ld3")


def fitted_schedules(config, quick: bool) -> list[Path]:
    """GITS and LD3 schedules of each SCHEDULE_SOLVERS at each NFE for the config's field, fitted now or reused."""
    run = train_or_reuse(config.samplers.train_field, config.run_overrides)
    folder = run.last_stage.schedules
    field = FieldConfig(kind="flow_run", path=str(run.folder)).load()
    paths = []
    for method, fit, options in (
        ("gits", search_schedule, QUICK_SEARCH if quick else SEARCH),
        ("ld3", learn_schedule, QUICK_LEARN if quick else LEARN),
    ):
        for solver in SCHEDULE_SOLVERS:
            for nfe in NFES:
                path = folder / f"{method}_{solver}_nfe{nfe}.json"
                if not path.is_file():
                    torch.manual_seed(0)
                    schedule = fit(field, solver, nfe, **options)
                    schedule.name = path.stem
                    save_schedule(schedule, path)
                paths.append(path)
    return paths


def rows(result: dict) -> list[dict]:
    """The comparison's cells, each with a `label`: the method, and its schedule unless that is a baseline's."""
    cells = compare.cells(result)
    for cell in cells:
        fitted = cell["schedule"].startswith(FITTED)
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
    for grid in config.samplers.distill:
        for nfe in grid.nfe:
            seconds[f"{grid.name}_nfe{nfe}"] = Run(
                config.run_dir / "predictors" / f"{grid.name}_nfe{nfe}"
            ).training_seconds
    return seconds


def print_table(title: str, cells: list[dict], metric: str) -> None:
    print(f"\n{title}\n{'':<40}" + "".join(f"{'NFE ' + str(n):>10}" for n in NFES))
    labels = dict.fromkeys(c["label"] for c in cells)
    for label in labels:
        row = {c["nfe"]: c.get(metric) for c in cells if c["label"] == label}
        if any(value is not None for value in row.values()):
            print(f"{label:<40}" + "".join(f"{'-' if row.get(n) is None else format(row[n], '.4g'):>10}" for n in NFES))


def goal(cells: list[dict]) -> dict:
    """Issue 14's goal on one model: the ratios at NFE 5 and whether NFE 3 and 4 beat the best baseline at NFE 5."""
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
    return summary


def print_goal(model: str, summary: dict) -> None:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=MODELS, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run, meaningless numbers")
    parser.add_argument(
        "--rmse-only", action="store_true", help="skip FD (on one CPU thread Inception takes ~2 min a sample set)"
    )
    args = parser.parse_args()
    results = {}
    for model in MODELS:
        if args.only not in (None, model):
            continue
        path = REPO / f"configs/compare/bench_few_step_{model}.yaml"
        overrides = (QUICK if args.quick else []) + (["samplers.metrics=[rmse]"] if args.rmse_only else [])
        config = load_config(path, overrides)
        if args.quick:
            config.name += "-quick"
            config.samplers.train_field.overrides.append("name=flow_quick")
        schedules = fitted_schedules(config, args.quick)
        config.samplers.schedules = [*config.samplers.schedules, *map(str, schedules)]
        cells = rows(compare.run(config))
        print_table(f"{model}: terminal RMSE to the reference", cells, "rmse")
        if "fd" in config.samplers.metrics:
            print_table(f"{model}: excess FD (FD minus the reference solve's)", cells, "excess_fd")
        seconds = fitting_seconds(config, schedules)
        print(f"\n{model}: fitting time on this CPU, s")
        for name, value in seconds.items():
            print(f"  {name:<36}{value:>8.1f}")
        summary = goal(cells)
        print_goal(model, summary)
        results[model] = {"cells": cells, "fitting_seconds": seconds, "goal": summary}
    stem = "bench_few_step" + (f"_{args.only}" if args.only else "") + ("_quick" if args.quick else "")
    output = REPO / "runs" / f"{stem}.json"
    write_json(output, results)
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
