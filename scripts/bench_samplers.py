"""Benchmark the baseline ODE samplers: accuracy per NFE, and cost beyond the network.

Accuracy: every solver in `samplers.BASELINES` integrates the exact EDM velocity of a random Gaussian mixture
from sigma = 80 to sigma = 0.002 at NFE 3..12, from one fixed float64 noise batch. The error is the terminal
RMSE against scipy's DOP853 solution at rtol = atol = 1e-9; lower is better, and "-" marks an NFE the solver
cannot spend exactly (two-stage solvers spend evaluations in pairs).

Overhead: the same solvers drive a tiny random diffusers UNet (float32, CPU) at NFE 4 and 10. Overhead is
wall time / (NFE * time of one field call), each a median over interleaved rounds; 1.00 means the solver's
own arithmetic is free next to the network.

All numbers and the setup go to runs/bench_samplers.json.
"""

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import Tensor

import samplers
from genkit import DiffusersField, GaussianMixtureField
from genkit.checkpoint import write_json
from samplers.solvers import Field

SHAPE = (3, 16, 16)
COMPONENTS = 8
BATCH = 32
SIGMA_MAX, SIGMA_MIN = 80.0, 0.002
TOLERANCE = 1e-9
NFES = range(3, 13)
# Each solver's schedule in the diff-solvers toolbox baselines.
SCHEDULES = {
    "euler": ("karras", {"rho": 7.0}),
    "heun": ("karras", {"rho": 7.0}),
    "dpm_solver_2": ("karras", {"rho": 7.0}),
    "dpmpp_2m": ("logsnr", {}),
    "ipndm": ("karras", {"rho": 7.0}),
}
UNET_BATCH = 16
OVERHEAD_NFES = (4, 10)
REPEATS = 3
CALLS_PER_ROUND = 5
OUTPUT = Path(__file__).resolve().parent.parent / "runs" / "bench_samplers.json"


def run(field: Field, x: Tensor, solver: str, nfe: int) -> Tensor:
    """`samplers.sample` with the solver's own schedule."""
    schedule, schedule_opts = SCHEDULES[solver]
    return samplers.sample(field, x, solver=solver, nfe=nfe, schedule=schedule, schedule_opts=schedule_opts)


def rmse_table(field: GaussianMixtureField, x: Tensor, x_ref: Tensor) -> dict[str, dict[int, float | None]]:
    """Terminal RMSE against the reference for every solver and NFE; None where the NFE is out of reach."""
    table: dict[str, dict[int, float | None]] = {}
    for solver in samplers.BASELINES:
        table[solver] = {}
        for nfe in NFES:
            try:
                x_out = run(field.edm, x, solver, nfe)
            except samplers.SamplerError:
                table[solver][nfe] = None
                continue
            table[solver][nfe] = (x_out - x_ref).pow(2).mean().sqrt().item()
    return table


def seconds(fn: Callable[..., object], *args: object) -> float:
    """Wall time of one call fn(*args)."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def tiny_unet() -> UNet2DModel:
    """A randomly initialised two-level UNet for 3x16x16 images, about 0.65M parameters."""
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()


@torch.no_grad()
def overhead_table(unet: UNet2DModel) -> tuple[float, dict[str, dict[int, float]]]:
    """Median seconds per UNet field call, and each solver's median wall time over NFE such calls."""
    field = DiffusersField(unet, DDPMScheduler())
    x = SIGMA_MAX * torch.randn((UNET_BATCH, *SHAPE), generator=torch.Generator().manual_seed(0))
    sigma = torch.full((UNET_BATCH,), 1.0)
    # Warm-up: the first calls pay for allocator and kernel setup, which no solver step sees later.
    for _ in range(3):
        field(x, sigma)
    call_times: list[float] = []
    walls: dict[tuple[str, int], list[float]] = {(s, n): [] for s in samplers.BASELINES for n in OVERHEAD_NFES}
    # Rounds interleave everything timed, so a burst of load from another process slows all entries alike.
    for _ in range(REPEATS):
        call_times += [seconds(field, x, sigma) for _ in range(CALLS_PER_ROUND)]
        for solver, nfe in walls:
            walls[solver, nfe].append(seconds(run, field, x, solver, nfe))
    call_seconds = statistics.median(call_times)
    table = {
        solver: {nfe: statistics.median(walls[solver, nfe]) / (nfe * call_seconds) for nfe in OVERHEAD_NFES}
        for solver in samplers.BASELINES
    }
    return call_seconds, table


def print_table(title: str, table: dict[str, dict[int, float | None]], fmt: str) -> None:
    """Rows solver, columns NFE; "-" for a missing entry."""
    nfes = list(next(iter(table.values())))
    print(f"\n{title}")
    print(f"{'solver':<14}" + "".join(f"{nfe:>10}" for nfe in nfes))
    for solver, row in table.items():
        cells = ("-" if row[nfe] is None else format(row[nfe], fmt) for nfe in nfes)
        print(f"{solver:<14}" + "".join(f"{cell:>10}" for cell in cells))


def main() -> None:
    """Run both benchmarks, print the tables and save the numbers."""
    start = time.perf_counter()
    field = GaussianMixtureField.random(num_components=COMPONENTS, shape=SHAPE, seed=0)
    noise = torch.randn((BATCH, *SHAPE), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = SIGMA_MAX * noise
    unet = tiny_unet()
    setup = {
        "shape": list(SHAPE),
        "dims": noise[0].numel(),
        "components": COMPONENTS,
        "batch": BATCH,
        "sigma_max": SIGMA_MAX,
        "sigma_min": SIGMA_MIN,
        "reference": {"method": "DOP853", "rtol": TOLERANCE, "atol": TOLERANCE},
        "schedules": {solver: {"name": name, **opts} for solver, (name, opts) in SCHEDULES.items()},
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "unet_batch": UNET_BATCH,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    schedules = ", ".join(f"{solver}={name}" for solver, (name, _) in SCHEDULES.items())
    print(
        f"{COMPONENTS}-component Gaussian mixture on {'x'.join(map(str, SHAPE))} ({setup['dims']} dims), "
        f"batch {BATCH}, sigma {SIGMA_MAX} -> {SIGMA_MIN}, reference DOP853 rtol=atol={TOLERANCE:g}; "
        f"schedules {schedules} (karras rho=7); torch {torch.__version__}, {setup['threads']} threads"
    )

    reference_start = time.perf_counter()
    x_ref = samplers.reference(field.edm, x, SIGMA_MAX, SIGMA_MIN, rtol=TOLERANCE, atol=TOLERANCE)
    reference_seconds = time.perf_counter() - reference_start
    rmse = rmse_table(field, x, x_ref)
    print_table("Terminal RMSE vs reference (rows solver, columns NFE)", rmse, ".2e")

    call_seconds, overhead = overhead_table(unet)
    print_table(
        f"Overhead = wall / (NFE x one UNet call of {call_seconds * 1e3:.1f} ms); "
        f"{setup['unet_parameters'] / 1e6:.2f}M-parameter UNet, float32, batch {UNET_BATCH}",
        overhead,
        ".2f",
    )

    total_seconds = time.perf_counter() - start
    write_json(
        OUTPUT,
        {
            "setup": setup,
            "rmse": rmse,
            "unet_call_seconds": call_seconds,
            "overhead": overhead,
            "reference_seconds": reference_seconds,
            "total_seconds": total_seconds,
        },
    )
    print(f"\nwrote {OUTPUT} in {total_seconds:.1f} s")


if __name__ == "__main__":
    main()
