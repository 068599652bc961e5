"""AMED-Solver and AMED-Plugin(iPNDM) against the baselines at NFE 3-10 (docs/amed.md §9 for the paper's numbers).

Runs `genkit compare` on configs/compare/bench_amed_mixture.yaml and bench_amed_digits.yaml (their comments give
the protocol: every AMED cell distils its own predictor there, reused on reruns), then prints the paper-side tables:
terminal RMSE and digit FD by NFE, distillation seconds, the goal line (AMED-Plugin at NFE 5 against the best
baseline at NFE 5; the paper has 2x on CIFAR-10 FID) and slope vs bottleneck features at NFE 5. `--only` runs one
field; `--quick` is a smoke run (tiny budgets, its own folders). Writes runs/bench_amed.json (or _quick).
"""

import argparse
from pathlib import Path

from genkit import compare
from genkit.config import load_config
from genkit.files import write_json
from genkit.runs import Run

REPO = Path(__file__).resolve().parent.parent
BASELINES = ("euler", "heun", "dpm_solver_2", "dpmpp_2m", "ipndm")
PAPER_CIFAR10_FID = {  # docs/amed.md §9, at NFE 3..10
    "ipndm": {3: 47.98, 5: 13.59, 7: 5.08, 9: 3.17},
    "amed": {3: 18.49, 4: 17.18, 5: 7.59, 6: 7.04, 7: 4.36, 8: 5.56, 9: 3.67, 10: 4.14},
    "amed_plugin(ipndm)": {3: 10.81, 4: 10.43, 5: 6.61, 6: 6.67, 7: 3.65, 8: 3.34, 9: 2.63, 10: 2.48},
}
QUICK = ["num_samples=16", "samplers.nfe=[3,4,5]", "run_overrides=[train.steps=2,train.log_every=1,train.eval_every=2]"]


def quick(config, field: str):
    """The comparison at smoke-test budgets, in its own folders: NFE 3-5, two training steps a run."""
    config.name += "-quick"
    for grid in config.samplers.distill:
        grid.nfe = [nfe for nfe in grid.nfe if nfe <= 5]
    if field == "digits":
        config.samplers.train_field.overrides = ["name=flow-quick", "output_dir=runs/bench_amed", "train.tracker=none"]
    return config


def by_method(result: dict, value: str) -> dict[str, dict[int, float | None]]:
    """method -> NFE -> value, from a comparison's rows."""
    table: dict[str, dict[int, float | None]] = {}
    for cell in compare.cells(result):
        table.setdefault(cell["method"], {})[cell["nfe"]] = cell.get(value)
    return table


def print_table(title: str, table: dict, nfes: list[int], fmt: str) -> None:
    print(f"\n{title}\n{'':<30}" + "".join(f"{'NFE ' + str(n):>10}" for n in nfes))
    for method, row in table.items():
        print(f"{method:<30}" + "".join(f"{'-' if row.get(n) is None else format(row[n], fmt):>10}" for n in nfes))


def report(field: str, config, result: dict) -> dict:
    """Print the field's tables and goal line; the numbers for the JSON."""
    nfes = sorted(config.samplers.nfe)
    rmse = by_method(result, "rmse")
    print_table(f"{field}: terminal RMSE to the reference", rmse, nfes, ".3e")
    summary = {"rmse": rmse}
    if "fd" in config.samplers.metrics:
        summary["fd"] = by_method(result, "fd")
        print_table(f"{field}: FD to the val digits", summary["fd"], nfes, ".2f")
    predictors = config.run_dir / "predictors"
    summary["distil_seconds"] = {
        grid.name: {nfe: Run(predictors / f"{grid.name}_nfe{nfe}").training_seconds for nfe in grid.nfe}
        for grid in config.samplers.distill
    }
    print_table(f"{field}: distillation wall time, s", summary["distil_seconds"], nfes, ".1f")
    best = min((rmse[m][5], m) for m in BASELINES if rmse[m].get(5) is not None)
    plugin = rmse["amed_plugin(ipndm)"][5]
    summary["goal"] = {"best_baseline": best[1], "best_rmse": best[0], "plugin_rmse": plugin, "ratio": best[0] / plugin}
    print(
        f"{field}: AMED-Plugin NFE 5 RMSE {plugin:.4g} vs best baseline {best[1]} {best[0]:.4g}: "
        f"{best[0] / plugin:.2f}x (the paper: 2x)"
    )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("mixture", "digits"), default=None)
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run, meaningless numbers")
    args = parser.parse_args()
    results = {"paper_cifar10_fid": PAPER_CIFAR10_FID}
    for field in ("mixture", "digits"):
        if args.only in (None, field):
            config = load_config(REPO / f"configs/compare/bench_amed_{field}.yaml", QUICK if args.quick else [])
            config = quick(config, field) if args.quick else config
            results[field] = report(field, config, compare.run(config))
    print_table("CIFAR-10 FID in the paper", PAPER_CIFAR10_FID, list(range(3, 11)), ".2f")
    output = REPO / "runs" / ("bench_amed_quick.json" if args.quick else "bench_amed.json")
    write_json(output, results)
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
