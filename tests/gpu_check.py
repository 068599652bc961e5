"""What only a GPU can show: half precision, NCCL and channels_last keep genkit's numbers (`make gpu-check`).

Each check prints its measured value next to the tolerance it must meet; the table also goes to runs/gpu_check.json
and the exit code is 1 when a check fails. TF32 is turned off, so float32 means float32 on the GPU as on the CPU.
Without CUDA the script says so in one line and exits 0; `--device cpu` runs the same checks on the CPU (gloo in
place of NCCL), which is how the test suite keeps them working.
"""

import argparse
import copy
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import samplers
from genkit.files import write_json
from genkit.gaussian_mixture import GaussianMixture
from genkit.nets import UNetVelocity
from genkit.nets.gan import DCGANCritic
from genkit.train.gan import gradient_penalty
from samplers.ld3 import learn_solver
from tokenizers_img import FSQ, VectorQuantizer
from tokenizers_img.model import Tokenizer

OUTPUT = Path(__file__).resolve().parent.parent / "runs" / "gpu_check.json"
VQ_STEPS, VQ_BATCH = 8, 64


def seeded(*shape: int, seed: int, device: str, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)


def fsq_under_bf16(device: str) -> float:
    """Fraction of FSQ codes that change when the encoder runs under bf16 autocast (FSQ rounds in float32)."""
    fsq, z = FSQ([8, 5, 5, 5]), 2 * seeded(64, 4, 16, 16, seed=0, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        _, autocast_indices, _ = fsq(z)
    return (autocast_indices != fsq(z)[1]).double().mean().item()


def penalty_under_bf16(device: str) -> float:
    """Relative change of the WGAN-GP penalty under bf16 autocast (it is computed in float32 from the raw critic)."""
    torch.manual_seed(0)
    critic, points = DCGANCritic(3, 32, width=32).to(device), seeded(32, 3, 32, 32, seed=1, device=device)
    plain = gradient_penalty(critic, points, 1.0)
    with torch.autocast(device, dtype=torch.bfloat16):
        inside = gradient_penalty(critic, points, 1.0)
    return ((inside - plain).abs() / plain).item()


def vq_ema_run(rank: int, world: int, device: str) -> torch.Tensor:
    """A float64 EMA codebook after VQ_STEPS steps on this rank's share of the global batches."""
    torch.manual_seed(0)
    vq = VectorQuantizer(64, 8, ema=True, dead_code_threshold=0.5).double().to(device).train()
    for step in range(VQ_STEPS):
        batch = seeded(VQ_BATCH, 8, seed=100 + step, device="cpu", dtype=torch.float64) + step / VQ_STEPS
        vq(batch.chunk(world)[rank].to(device))
    return vq.codebook.cpu()


def vq_ema_worker(rank: int, world: int, device: str, port: int, folder: str) -> None:
    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    placed = f"cuda:{rank}" if device == "cuda" else "cpu"
    if device == "cuda":
        torch.cuda.set_device(rank)
    torch.save(vq_ema_run(rank, world, placed), f"{folder}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def vq_ema_collective(device: str, world: int) -> float:
    """Largest difference between any rank's codebook and one process's that saw every global batch (float64)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(vq_ema_worker, args=(world, device, port, folder), nprocs=world)
        codebooks = [torch.load(f"{folder}/rank{rank}.pt") for rank in range(world)]
    single = vq_ema_run(0, 1, "cpu")
    return max((codebook - single).abs().max().item() for codebook in codebooks)


def tokenizer_step_bf16_channels_last(device: str) -> float:
    """Relative difference of the bf16 channels_last loss from the float32 one; the step must leave finite weights."""
    torch.manual_seed(0)
    tokenizer = Tokenizer(channels=(32, 64, 64)).to(device, memory_format=torch.channels_last)
    images = seeded(16, 3, 32, 32, seed=2, device=device).clamp(-1, 1).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        float32_loss = tokenizer(images)[1]["total"]
    optimizer = torch.optim.AdamW(tokenizer.parameters(), lr=1e-4)
    with torch.autocast(device, dtype=torch.bfloat16):
        loss = tokenizer(images)[1]["total"]
    loss.backward()
    optimizer.step()
    if not all(parameter.isfinite().all() for parameter in tokenizer.parameters()):
        return float("inf")
    return ((loss - float32_loss).abs() / float32_loss).item()


def sampling_against_cpu(device: str, network: bool) -> float:
    """Largest difference between samples drawn on `device` and on the CPU from the same noise."""
    if network:
        torch.manual_seed(0)
        net = UNetVelocity.build(3, 16).eval()
        fields = {"cpu": net, device: copy.deepcopy(net).to(device)}
        noise, options = (
            seeded(8, 3, 16, 16, seed=3, device="cpu"),
            {"solver": "euler", "nfe": 4, "schedule": "uniform"},
        )
    else:
        mixture = GaussianMixture.random(8, (3, 16, 16), seed=0)
        fields = {"cpu": mixture.edm, device: mixture.edm}  # the mixture's tensors follow x's device
        noise = 80 * seeded(8, 3, 16, 16, seed=3, device="cpu", dtype=torch.float64)
        options = {"solver": "heun", "nfe": 10, "schedule": "karras"}
    with torch.no_grad():
        here = samplers.solve(fields[device], noise.to(device), **options).cpu()
        there = samplers.solve(fields["cpu"], noise, **options)
    return (here - there).abs().max().item()


def learned_solver_against_cpu(device: str) -> float:
    """Largest difference between a learned solver (times and correction table) fitted on `device` and on the CPU."""
    mixture = GaussianMixture.random(8, (16,), seed=0)
    noise = 80 * seeded(64, 16, seed=4, device="cpu", dtype=torch.float64)
    fitted = {}
    for where in ("cpu", device):
        x = noise.to(where)
        target = samplers.solve(mixture.edm, x, "heun", 64, "karras")
        options = {"iterations": 50, "corrections": True}
        times, table, _ = learn_solver(samplers.ipndm, mixture.edm, x, target, samplers.karras(5), True, **options)
        fitted[where] = torch.cat([times, table.velocity.flatten(), table.state.flatten()])
    return (fitted[device] - fitted["cpu"]).abs().max().item()


def checks(device: str) -> list[tuple[str, callable, float]]:
    """(name, measurement, tolerance): each measurement must come out at most its tolerance."""
    gpus = torch.cuda.device_count() if device == "cuda" else 2
    return [
        ("FSQ codes changed under bf16 autocast (fraction)", lambda: fsq_under_bf16(device), 0.0),
        # The same float32 arithmetic; a convolution's backward may sum in another order (~1e-6 seen on CPU).
        ("gradient penalty under bf16 autocast (relative)", lambda: penalty_under_bf16(device), 1e-5),
        *[
            # float64 sums of at most 64 rows: round-off ~1e-15 of codes of size ~1.
            (
                f"VQ EMA codebook, {world} rank(s) vs one process (max abs)",
                lambda w=world: vq_ema_collective(device, w),
                1e-10,
            )
            for world in sorted({1, gpus})
        ],
        # bf16 keeps 8 bits of mantissa: ~0.4% a rounding, a few % through the autoencoder.
        (
            "tokenizer step in bf16, channels_last: loss vs float32 (relative)",
            lambda: tokenizer_step_bf16_channels_last(device),
            0.05,
        ),
        # float64 solves: only the last bits of exp/log differ between the devices' math libraries.
        ("mixture, Heun NFE 10, float64: samples vs CPU (max abs)", lambda: sampling_against_cpu(device, False), 1e-9),
        # float32 convolutions of up to 600 terms summed in another order (<= 600 eps ~ 4e-5), over 4 Euler steps.
        ("U-Net, Euler NFE 4, float32: samples vs CPU (max abs)", lambda: sampling_against_cpu(device, True), 1e-3),
        # float64 fits: the devices' last-bit differences, carried through 50 Adam steps of size <= 0.05.
        (
            "learned iPNDM NFE 4, float64: times and table vs CPU (max abs)",
            lambda: learned_solver_against_cpu(device),
            1e-8,
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    device = parser.parse_args().device
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; nothing to check (run it on a GPU machine, or with --device cpu)")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"gpu-check on {name}, torch {torch.__version__}")
    rows, started = [], time.perf_counter()
    for check, measure, tolerance in checks(device):
        value = measure()
        rows.append({"check": check, "value": value, "tolerance": tolerance, "passed": value <= tolerance})
        print(f"{'PASS' if value <= tolerance else 'FAIL'}  {check:<68} {value:10.3g}  (at most {tolerance:g})")
    print(f"{sum(r['passed'] for r in rows)}/{len(rows)} passed in {time.perf_counter() - started:.0f} s")
    write_json(OUTPUT, {"device": name, "torch": torch.__version__, "checks": rows})
    return 0 if all(row["passed"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
