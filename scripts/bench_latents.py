"""Generation on the tokenizer: latent flows on FSQ and on VQ against a pixel flow of the same size and budget.

Per seed and data set: the tokenizers of configs/compare/bench_latents_<data>_tokenizers.yaml (rFD/rFID, usage), a flow
on each one's latents (decoded as is, or snapped to codes) and a pixel flow (bench_latents_<data>.yaml): gFD at NFE 4,
8 and the reference, training seconds, as mean (spread) (docs/latents.md §5). `--only digits|crops`, `--quick`."""

from pathlib import Path

from genkit import compare
from genkit.compare.output import bench_config, chosen, mean_spread, print_table, script_parser, write_report
from genkit.runs import Run

DATA, FLOWS, SEEDS = ("digits", "crops"), ("pixel", "fsq", "vq", "fsq snap", "vq snap"), (0, 1)
COLUMNS = ("rFD", "usage", "gFD nfe4", "gFD nfe8", "gFD ref", "agreement ref", "tokenizer s", "flow s")
QUICK = ["num_samples=16", "run_overrides=[train.steps=2,train.eval_every=2,train.tracker=none]"]


def tokenizers(data: str, folder: str, seed: int, quick: bool) -> dict[str, dict]:
    """FSQ and VQ trained in `folder`: name -> their rFD, usage and training seconds."""
    config = bench_config(f"bench_latents_{data}_tokenizers", quick, QUICK, tag=f"-s{seed}")
    config.run_overrides += [f"output_dir={folder}", f"train.seed={seed}"]
    cells = compare.cells(compare.run(config))
    return {c["run"]: {"rFD": c["rfd"], "usage": c["codebook_usage"], "tokenizer s": c["train_seconds"]} for c in cells}


def generation(data: str, folder: str, flow: str, seed: int, quick: bool) -> dict[str, float]:
    """`flow`: pixel, a tokenizer, or "<tokenizer> snap" (its latents snapped to codes): gFD per NFE, training s."""
    base, snap, tag = flow.split()[0], flow.endswith("snap"), f"-{flow.replace(' ', '-')}-s{seed}"
    stiff = [*QUICK, "samplers.reference_tolerance=1e-2"]  # a flow trained 2 steps is stiff: a looser reference
    config = bench_config(f"bench_latents_{data}", quick, stiff, [f"samplers.field.snap={snap}"], tag)
    spec = config.samplers.train_field
    spec.overrides += [f"name={base}_flow", f"output_dir={folder}", f"train.seed={seed}"]
    spec.overrides += [] if base == "pixel" else [f"flow.tokenizer={folder}/{base}"]
    cells = compare.cells(compare.run(config))
    row = {"flow s": Run(Path(folder) / f"{base}_flow").training_seconds}
    for cell in cells:
        key = "ref" if cell["method"].startswith("reference") else f"nfe{cell['nfe']}"
        row |= {f"gFD {key}": cell["fd"]} | ({f"agreement {key}": cell["agreement"]} if "agreement" in cell else {})
    return row


if __name__ == "__main__":
    args = script_parser(__doc__, only=DATA, quick=True).parse_args()
    results, suffix = {}, "_quick" if args.quick else ""
    for data in chosen(DATA, args.only):
        runs = {flow: [] for flow in FLOWS}
        for seed in SEEDS:
            folder = f"runs/bench_latents/{data}_s{seed}{suffix}"
            scores = tokenizers(data, folder, seed, args.quick)
            for flow in FLOWS:
                runs[flow].append(scores.get(flow.split()[0], {}) | generation(data, folder, flow, seed, args.quick))
        results[data] = runs
        table = {flow: {c: mean_spread([row.get(c) for row in rows]) for c in COLUMNS} for flow, rows in runs.items()}
        print_table(f"{data}: mean (spread) over seeds {SEEDS}", table, COLUMNS, width=18)
    write_report(Path(f"runs/bench_latents{suffix}.json"), results)
