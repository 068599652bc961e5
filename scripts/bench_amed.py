"""AMED-Solver and AMED-Plugin(iPNDM) against the baselines at NFE 3-10 (docs/amed.md §9 for the paper's numbers).

Runs `genkit compare` on configs/compare/bench_amed_{mixture,digits}.yaml and prints RMSE, digit FD and distillation
seconds by NFE and the goal line; protocol, flags and numbers: docs/benchmarks.md. Writes runs/bench_amed.json.
"""

from pathlib import Path

from genkit import compare
from genkit.compare.output import bench_config, chosen, distil_seconds, pivot, print_pivot, script_parser, write_report
from samplers import BASELINES

FIELDS = ("mixture", "digits")
QUICK = ["num_samples=16", "samplers.nfe=[3,4,5]", "run_overrides=[train.steps=2,train.log_every=1,train.eval_every=2]"]


def report(field: str, config, result: dict) -> dict:
    """Print the field's tables and goal line; the numbers for the JSON."""
    nfes, cells = sorted(config.samplers.nfe), compare.cells(result)
    summary = {"rmse": (rmse := pivot(cells, "rmse"))}
    print_pivot(f"{field}: terminal RMSE to the reference", rmse, nfes, ".3e")
    if "fd" in config.samplers.metrics:
        summary["fd"] = pivot(cells, "fd")
        print_pivot(f"{field}: FD to the val digits", summary["fd"], nfes, ".2f")
    summary["distil_seconds"] = distil_seconds(config.run_dir, config.samplers.distill)
    print_pivot(f"{field}: distillation wall time, s", summary["distil_seconds"], nfes, ".1f")
    best = min((rmse[m][5], m) for m in BASELINES if rmse[m].get(5) is not None)
    plugin = rmse["amed_plugin(ipndm)"][5]
    summary["goal"] = {"best_baseline": best[1], "best_rmse": best[0], "plugin_rmse": plugin, "ratio": best[0] / plugin}
    print(
        f"{field}: AMED-Plugin NFE 5 RMSE {plugin:.4g} vs best baseline {best[1]} {best[0]:.4g}: "
        f"{best[0] / plugin:.2f}x (the paper: 2x)"
    )
    return summary


if __name__ == "__main__":
    args = script_parser(__doc__, only=FIELDS, quick=True).parse_args()
    results = {}
    for field in chosen(FIELDS, args.only):
        config = bench_config(f"bench_amed_{field}", args.quick, QUICK)
        if args.quick:  # smoke-test budgets in its own folders: NFE 3-5, two training steps a run
            for grid in config.samplers.distill:
                grid.nfe = [nfe for nfe in grid.nfe if nfe <= 5]
            if field == "digits":
                config.samplers.train_field.overrides.append("name=flow-quick")
        results[field] = report(field, config, compare.run(config))
    write_report(Path("runs") / ("bench_amed_quick.json" if args.quick else "bench_amed.json"), results)
