"""The baseline solvers: terminal error per NFE, and wall time beyond the network's (configs/compare/bench_samplers*).

Error: `genkit compare configs/compare/bench_samplers.yaml` (RMSE against DOP853 on a 768-dim mixture, NFE 3-12).
Overhead: the same solvers drive a random 0.65M-parameter diffusers U-Net (float32, CPU, batch 16) at NFE 4 and 10;
overhead = a solve's median wall time / (NFE x the median time of one field call): 1.00 means the solver's own
arithmetic is free next to the network. Prints both tables and writes runs/bench_samplers.json.
"""

import statistics
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

from genkit import compare
from genkit.config import load_config
from genkit.fields import FieldConfig
from genkit.files import write_json

REPO = Path(__file__).resolve().parent.parent
UNET = REPO / "runs" / "bench_samplers" / "unet"


def save_unet() -> None:
    """A randomly initialised two-level U-Net for 3x16x16 images with a DDPM scheduler, as a diffusers folder."""
    torch.manual_seed(0)
    blocks = ("DownBlock2D", "DownBlock2D")
    unet = UNet2DModel(
        16,
        3,
        3,
        down_block_types=blocks,
        up_block_types=("UpBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
    )
    unet.save_pretrained(UNET / "unet")
    DDPMScheduler().save_pretrained(UNET / "scheduler")


def call_seconds(calls: int = 15) -> float:
    """The median time of one U-Net field call on the overhead comparison's batch (after 3 warm-up calls)."""
    field = FieldConfig(kind="diffusers", path=str(UNET)).load()
    x, sigma, times = 80 * torch.randn(16, 3, 16, 16), torch.ones(16), []
    with torch.no_grad():
        for call in range(3 + calls):
            start = time.perf_counter()
            field.edm(x, sigma)
            times += [time.perf_counter() - start] if call >= 3 else []
    return statistics.median(times)


def pivot(result: dict, value: str) -> dict[str, dict[int, float | None]]:
    """method -> NFE -> value of a comparison's rows."""
    table: dict[str, dict[int, float | None]] = {}
    for cell in compare.cells(result):
        table.setdefault(cell["method"], {})[cell["nfe"]] = cell[value] if cell["nfe_counted"] else None
    return table


def print_table(title: str, table: dict[str, dict[int, float | None]], fmt: str) -> None:
    nfes = list(next(iter(table.values())))
    print(f"\n{title}\n{'solver':<14}" + "".join(f"{nfe:>10}" for nfe in nfes))
    for solver, row in table.items():
        print(f"{solver:<14}" + "".join(f"{'-' if row[n] is None else format(row[n], fmt):>10}" for n in nfes))


def main() -> None:
    start = time.perf_counter()
    rmse = pivot(compare.run(load_config(REPO / "configs/compare/bench_samplers.yaml")), "rmse")
    if not UNET.is_dir():
        save_unet()
    timing = pivot(compare.run(load_config(REPO / "configs/compare/bench_samplers_overhead.yaml")), "seconds")
    call = call_seconds()
    overhead = {solver: {nfe: seconds / (nfe * call) for nfe, seconds in row.items()} for solver, row in timing.items()}
    print_table("Terminal RMSE vs DOP853 (rows solver, columns NFE)", rmse, ".2e")
    print_table(f"Overhead = wall / (NFE x one U-Net call of {call * 1e3:.1f} ms)", overhead, ".2f")
    output = REPO / "runs" / "bench_samplers.json"
    write_json(output, {"rmse": rmse, "unet_call_seconds": call, "overhead": overhead, "torch": torch.__version__})
    print(f"\nwrote {output} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
