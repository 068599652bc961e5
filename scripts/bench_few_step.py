"""Few-step sampling on three trained flows: learned solvers, searched and learned schedules, AMED, baselines.

Trains or reuses each flow (configs/compare/bench_few_step_{digits,crops,latent}.yaml; the latent flow's tokenizer
first), fits GITS, LD3 and the learned solver for iPNDM at NFE 3-6 (kept under the run's schedules/), runs one
`genkit compare` a model and prints RMSE and excess FD by NFE, fitting times and the goal of docs/samplers.md §8.5;
flags and numbers: docs/benchmarks.md. Writes runs/bench_few_step[_<only>][_quick].json.
"""

from pathlib import Path

from genkit import compare
from genkit.compare.output import bench_config, chosen, pivot, print_pivot, script_parser, write_report
from samplers import BASELINES

MODELS = ("digits", "crops", "latent")
NFES = (3, 4, 5, 6)
TOKENIZER = Path("runs/bench_latents/crops_s0/fsq")  # the latent flow's (scripts/bench_latents.py, seed 0)
# The smoke run's fits (the full ones are the config's samplers.fit); a fitted schedule's name starts with its method.
QUICK_FITS = {
    "gits": {"grid_points": 16, "teacher_steps": 1, "num_samples": 8},
    "ld3": {"iterations": 2, "num_samples": 8, "teacher_steps": 4},
    "learned": {"iterations": 2, "num_samples": 8, "teacher_steps": 4},
}
QUICK = ["num_samples=16", "run_overrides=[train.steps=2,train.log_every=1,train.eval_every=2]"]
TITLES = {"rmse": "terminal RMSE to the reference", "excess_fd": "excess FD (FD minus the reference solve)"}


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
    """Print the goal on one model (docs/samplers.md §8.5): the learned solver's RMSE at NFE 5 against the best
    baseline's at NFE 5 (at most 0.33x), and whether at NFE 4 it beats that; those numbers."""
    baseline = best(cells, 5, "rmse", True)
    learned = {c["nfe"]: c for c in cells if c["schedule"].startswith("learned_ipndm") and c.get("rmse") is not None}
    if baseline is None or 5 not in learned:
        return {}
    ratio, fewer = learned[5]["rmse"] / baseline["rmse"], learned.get(4, {}).get("rmse")
    summary = {"baseline": baseline["label"], "baseline_rmse": baseline["rmse"], "learned_rmse": learned[5]["rmse"]}
    summary |= {"ratio": ratio, "met": ratio <= 0.33, "learned_nfe4_rmse": fewer}
    summary["nfe4_beats"] = fewer is not None and fewer < baseline["rmse"]
    print(
        f"{model} at NFE 5: learned {learned[5]['rmse']:.4g} vs best baseline {baseline['label']} "
        f"{baseline['rmse']:.4g}: {ratio:.2f}x (goal <= 0.33x: {'met' if ratio <= 0.33 else 'missed'}); "
        f"learned at NFE 4: {fewer:.4g}, {'beats' if summary['nfe4_beats'] else 'does not beat'} it"
    )
    return summary


if __name__ == "__main__":
    parser = script_parser(__doc__, only=MODELS, quick=True)
    parser.add_argument("--rmse-only", action="store_true", help="skip FD (Inception: ~2 min a sample set on a CPU)")
    args = parser.parse_args()
    results = {}
    for model in chosen(MODELS, args.only):
        if model == "latent" and not TOKENIZER.is_dir():
            tokenizers = bench_config("bench_latents_crops_tokenizers", tag="-s0")  # full size even for --quick
            tokenizers.run_overrides += [f"output_dir={TOKENIZER.parent}", "train.seed=0"]
            compare.run(tokenizers)
        rmse_only = ["samplers.metrics=[rmse]"] * args.rmse_only
        config = bench_config(f"bench_few_step_{model}", args.quick, QUICK, rmse_only)
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
