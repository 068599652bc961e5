"""The baseline solvers: terminal error per NFE, and wall time beyond the network's (configs/compare/bench_samplers*).

Prints the RMSE against DOP853 on a 768-dim mixture and each solver's overhead on a random 0.65M-parameter U-Net
(protocol: docs/benchmarks.md); writes runs/bench_samplers.json.
"""

import statistics
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

from genkit import compare
from genkit.compare.output import pivot, print_pivot, wall_seconds, write_report
from genkit.config import load_config
from genkit.fields import FieldConfig

UNET = Path("runs/bench_samplers/unet")


def save_unet() -> None:
    """A randomly initialised two-level U-Net for 3x16x16 images with a DDPM scheduler, as a diffusers folder."""
    torch.manual_seed(0)
    blocks, sizes = {"down_block_types": ("DownBlock2D",) * 2, "up_block_types": ("UpBlock2D",) * 2}, (32, 64)
    unet = UNet2DModel(16, 3, 3, **blocks, block_out_channels=sizes, layers_per_block=1, norm_num_groups=8)
    unet.save_pretrained(UNET / "unet")
    DDPMScheduler().save_pretrained(UNET / "scheduler")


def call_seconds(calls: int = 15) -> float:
    """The median time of one U-Net field call on the overhead comparison's batch (after 3 warm-up calls)."""
    field = FieldConfig(kind="diffusers", path=str(UNET)).load()
    x, sigma = 80 * torch.randn(16, 3, 16, 16), torch.ones(16)
    with torch.no_grad():
        times = [wall_seconds(field.edm, x, sigma) for _ in range(3 + calls)]
    return statistics.median(times[3:])


if __name__ == "__main__":
    start = time.perf_counter()
    rmse = pivot(compare.cells(compare.run(load_config("compare/bench_samplers"))), "rmse")
    if not UNET.is_dir():
        save_unet()
    timing = pivot(compare.cells(compare.run(load_config("compare/bench_samplers_overhead"))), "seconds")
    call = call_seconds()
    overhead = {solver: {nfe: seconds / (nfe * call) for nfe, seconds in row.items()} for solver, row in timing.items()}
    print_pivot("Terminal RMSE vs DOP853 (rows solver, columns NFE)", rmse, None, ".2e")
    print_pivot(f"Overhead = wall / (NFE x one U-Net call of {call * 1e3:.1f} ms)", overhead, None, ".2f")
    result = {"rmse": rmse, "unet_call_seconds": call, "overhead": overhead, "torch": torch.__version__}
    write_report(Path("runs/bench_samplers.json"), result, start)
