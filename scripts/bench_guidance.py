"""Classifier-free guidance on two independently trained class-conditional digit flows: agreement and FD by weight.

Runs configs/compare/bench_guidance_digits.yaml once a seed (the flow's and the draws'), prints the chosen rows by
guidance weight and the goal of docs/guidance.md §5 (docs/benchmarks.md); writes runs/bench_guidance[_quick].json.
"""

from pathlib import Path

from genkit import compare
from genkit.compare.output import bench_config, print_table, script_parser, write_report
from samplers import BASELINES

QUICK = ["num_samples=16", "samplers.guidance=[0,2]", "run_overrides=[train.steps=2]"]
QUICK += ["samplers.reference_tolerance=1e-3"]  # an untrained flow is stiff


def chosen_rows(cells: list[dict]) -> dict[str, dict[float, dict]]:
    """row -> guidance weight -> cell, in order: the reference solve, best baseline, AMED-Plugin, best at NFE 5."""
    rows: dict[str, dict[float, dict]] = {"reference": {}, "best baseline": {}, "amed_plugin": {}, "best": {}}
    for cell in cells:
        weight, rows_of = float(cell["field"].removeprefix("w=")), {"reference": cell["method"].startswith("ref")}
        rows_of |= {"amed_plugin": cell["method"].startswith("amed_plugin"), "best": cell.get("nfe") == 5}
        rows_of["best baseline"] = cell["method"] in BASELINES and cell.get("nfe") == 5
        for row in (row for row, member in rows_of.items() if member and cell.get("rmse") is not None):
            if weight not in rows[row] or cell["rmse"] < rows[row][weight]["rmse"]:
                rows[row][weight] = cell
    return rows


if __name__ == "__main__":
    args = script_parser(__doc__, quick=True).parse_args()
    results, suffix = {}, "_quick" if args.quick else ""
    for seed in (0, 1):
        config = bench_config("bench_guidance_digits", args.quick, QUICK, [f"seed={seed}"], f"-seed{seed}")
        config.samplers.train_field.overrides += [f"name=flow_seed{seed}{suffix}", f"train.seed={seed}"]
        rows = chosen_rows(compare.cells(compare.run(config)))
        table = {r: {w: f"{c['agreement']:.3f} / {c['fd']:.2f}" for w, c in ws.items()} for r, ws in rows.items()}
        table |= {f"({r})": {w: f"{c['solver']} {c['schedule']}" for w, c in rows[r].items()} for r in list(rows)[1::2]}
        print_table(f"seed {seed}: agreement / FD by guidance weight", table, sorted(rows["reference"]), width=20)
        reference = [cell["agreement"] for _, cell in sorted(rows["reference"].items())]
        gaps = {w: cell["agreement"] - rows["reference"][w]["agreement"] for w, cell in rows["best"].items()}
        goal = {"agreement_rises": all(a < b for a, b in zip(reference, reference[1:], strict=False))}
        goal |= {"best_minus_reference": gaps, "within_2_points": all(abs(gap) <= 0.02 for gap in gaps.values())}
        print(f"seed {seed}: reference agreement by w {reference}; goal {goal}")
        results[seed] = {"rows": rows, "goal": goal}
    write_report(Path(f"runs/bench_guidance{suffix}.json"), results)
