"""Few-step sampling beyond AMED on two trained flows: searched, learned and end-to-end schedules against baselines.

Trains or reuses each flow (configs/compare/bench_few_step_{digits,crops}.yaml), fits GITS and LD3 schedules for
euler, ipndm and dpmpp_2m at NFE 3-5 (kept under the run's schedules/), runs one `genkit compare` a model and prints
RMSE and excess FD by NFE, fitting times and the goal of docs/samplers.md §8.4; flags and numbers: docs/benchmarks.md.
Writes runs/bench_few_step[_<only>][_quick].json.
"""

from pathlib import Path

from genkit import compare
from genkit.compare.output import bench_config, chosen, pivot, print_pivot, script_parser, write_report
from samplers import BASELINES

MODELS = ("digits", "crops")
NFES = (3, 4, 5)
# The smoke run's fits (the full ones are the config's samplers.fit); a fitted schedule's name starts with its method.
QUICK_FITS = {
    "gits": {"grid_points": 16, "teacher_steps": 1, "num_samples": 8},
    "ld3": {"iterations": 2, "num_samples": 8, "teacher_steps": 4},
}
QUICK = ["num_samples=16", "run_overrides=[train.steps=2,train.log_every=1,train.eval_every=2]"]
TITLES = {"rmse": "terminal RMSE to the reference", "excess_fd": "excess FD (FD minus the reference solve's)"}


def rows(result: dict) -> list[dict]:
    """The comparison's cells, each with a `label`: the method, and its schedule unless that is a baseline's."""
    cells = compare.cells(result)
    for cell in cells:
        fitted = cell["schedule"].startswith(tuple(QUICK_FITS))
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


def goal(model: str, cells: list[dict]) -> dict:
    """Print the goal on one model (docs/samplers.md §8.4): the ratios at NFE 5, and whether NFE 3 and 4 beat the
    best baseline at NFE 5; those numbers."""
    summary = {}
    for metric, limit in (("rmse", 0.33), ("excess_fd", 0.25)):
        baseline, ours = best(cells, 5, metric, True), best(cells, 5, metric, False)
        if baseline is None or ours is None:
            continue
        ratio = abs(ours[metric]) / abs(baseline[metric])
        line = summary[metric] = {"baseline": baseline["label"], "baseline_value": baseline[metric], "ratio": ratio}
        line |= {"ours": ours["label"], "ours_value": ours[metric], "limit": limit, "met": ratio <= limit}
        print(
            f"{model} {metric} at NFE 5: {ours['label']} {ours[metric]:.4g} vs best baseline {baseline['label']} "
            f"{baseline[metric]:.4g}: {ratio:.2f}x (goal <= {limit}x: {'met' if ratio <= limit else 'missed'})"
        )
        for nfe in (3, 4):
            fewer = best(cells, nfe, metric, False)
            beats = abs(fewer[metric]) < abs(baseline[metric])
            line[f"nfe{nfe}"] = {"ours": fewer["label"], "value": fewer[metric], "beats_baseline_nfe5": beats}
            verdict = "beats" if beats else "does not beat"
            print(f"  NFE {nfe}: {fewer['label']} {fewer[metric]:.4g} {verdict} the best baseline at NFE 5")
    return summary


if __name__ == "__main__":
    parser = script_parser(__doc__, only=MODELS, quick=True)
    parser.add_argument("--rmse-only", action="store_true", help="skip FD (Inception: ~2 min a sample set on a CPU)")
    args = parser.parse_args()
    results = {}
    for model in chosen(MODELS, args.only):
        config = bench_config(
            f"bench_few_step_{model}", args.quick, QUICK, ["samplers.metrics=[rmse]"] * args.rmse_only
        )
        if args.quick:
            config.samplers.train_field.overrides.append("name=flow_quick")
            for fit in config.samplers.fit:
                fit.options = QUICK_FITS[fit.method]
        cells = rows(compare.run(config))
        for metric in ("rmse", "excess_fd") if "fd" in config.samplers.metrics else ("rmse",):
            print_pivot(f"{model}: {TITLES[metric]}", pivot(cells, metric, "label"), NFES, ".4g", skip_empty=True)
        print_pivot(
            f"{model}: fitting seconds on this CPU", seconds := pivot(cells, "fit_seconds", "label"), NFES, ".1f", True
        )
        results[model] = {"cells": cells, "fitting_seconds": seconds, "goal": goal(model, cells)}
    stem = "bench_few_step" + (f"_{args.only}" if args.only else "") + ("_quick" if args.quick else "")
    write_report(Path("runs") / f"{stem}.json", results)
