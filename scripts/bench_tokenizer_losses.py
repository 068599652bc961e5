"""The tokenizer losses side by side: L1 alone, + perceptual, + perceptual + adversarial, + adversarial alone.

Runs `genkit compare` on configs/compare/bench_tokenizer_losses_{digits,crops}.yaml and prints each loss's metrics as
the mean (spread) over seeds (protocol: docs/benchmarks.md). Writes runs/bench_tokenizer_losses.json.
"""

import json
import statistics
from pathlib import Path

from genkit import compare
from genkit.compare.output import chosen, mean_spread, print_table, script_parser, write_report
from genkit.config import load_config

LOSSES = ("l1", "perceptual", "adversarial", "gan")  # gan: the adversarial term without the perceptual one
COLUMNS = ("psnr", "ssim", "rfd", "codebook_usage", "train_images_per_second")


def training_speed(run: Path) -> float:
    """Median training images/s the run logged over its second half (where the discriminator, if any, trains)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "images_per_second" in r]
    return statistics.median(r["images_per_second"] for r in logged if r["step"] > logged[-1]["step"] // 2)


def by_loss(result: dict, run_root: Path) -> dict[str, dict[str, list[float]]]:
    """loss -> column -> its value for each seed."""
    table: dict[str, dict[str, list[float]]] = {}
    for cell in compare.cells(result):
        loss = cell["run"].split("_")[1]
        values = cell | {"train_images_per_second": training_speed(run_root / cell["run"])}
        for column in COLUMNS:
            table.setdefault(loss, {}).setdefault(column, []).append(values[column])
    return table


if __name__ == "__main__":
    only = script_parser(__doc__, only=("digits", "crops")).parse_args().only
    report = {}
    for data in chosen(("digits", "crops"), only):
        result = compare.run(load_config(f"compare/bench_tokenizer_losses_{data}"))
        report[data] = table = by_loss(result, Path("runs/bench_tokenizer_losses"))
        distance = "rFD (digits)" if data == "digits" else "rFID (Inception)"
        spread = {loss: {column: mean_spread(v) for column, v in table[loss].items()} for loss in LOSSES}
        print_table(f"{data}: mean (spread) over seeds; {distance} in the rfd column", spread, COLUMNS, width=24)
    write_report(Path("runs/bench_tokenizer_losses.json"), report)
