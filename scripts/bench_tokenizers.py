"""The image quantizers: speed against vector-quantize-pytorch, and codebook usage after short training.

Prints vectors/s of ours and theirs on forward + backward (needs the optional extra `bench`) and codebook usage / PSNR
of FSQ and VQ at 2^8..2^14 codes (configs/compare/bench_tokenizers.yaml); protocol and flags: docs/benchmarks.md.
Writes runs/bench_tokenizers.json.
"""

import statistics
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from genkit import compare
from genkit.compare.output import print_table, script_parser, wall_seconds, write_report
from genkit.config import load_config
from tokenizers_img import FSQ, VectorQuantizer
from tokenizers_img.fsq import LEVELS_FOR_CODEBOOK_SIZE

SIZES = (2**8, 2**10, 2**12, 2**14)
KINDS = ("fsq", "vq", "vqr")  # vqr: VQ with dead-code restarts
SPEED_FORMATS = {"ours": ".3g", "theirs": ".3g", "ours/theirs": ".2f"}  # identical: "yes" or "NO" (FSQ only)


def pairs(vqp) -> dict[str, tuple[nn.Module, nn.Module, int]]:
    """'kind size' -> (ours, theirs, input width), training mode; VQ codebooks drawn after seeding 0."""
    built = {}
    for size in SIZES:
        levels = list(LEVELS_FOR_CODEBOOK_SIZE[size])
        built[f"fsq {size}"] = (FSQ(levels), vqp.FSQ(levels=levels), len(levels))
        torch.manual_seed(0)
        ours = VectorQuantizer(size, 32, beta=0.25, ema=True, decay=0.99)
        torch.manual_seed(0)
        vq = vqp.VectorQuantize(dim=32, codebook_size=size, decay=0.99, commitment_weight=0.25, rotation_trick=False)
        built[f"vq {size}"] = (ours, vq, 32)
    return {key: (ours.train(), theirs.train(), dim) for key, (ours, theirs, dim) in built.items()}


def outputs(quantizer: nn.Module, inputs: Tensor) -> tuple[tuple, Tensor]:
    """Forward, then backward of quantized.sum() + aux loss (their FSQ returns no loss): outputs, input gradient."""
    inputs = inputs.detach().requires_grad_()
    result = quantizer(inputs)
    (result[0].sum() + (result[2] if len(result) > 2 else 0.0)).backward()
    return result, inputs.grad


def throughput() -> dict[str, dict[str, float]] | None:
    """Vectors/s of ours and theirs and their ratio, per quantizer and size; None without vector-quantize-pytorch."""
    try:
        import vector_quantize_pytorch as vqp  # noqa: PLC0415 (an optional extra)
    except ImportError:
        print("vector-quantize-pytorch is not installed: no throughput comparison (pip install -e '.[bench]')")
        return None
    built, times = pairs(vqp), {}
    inputs = {dim: torch.randn(64, 64, dim, generator=torch.Generator().manual_seed(0)) for dim in (3, 4, 5, 32)}
    # Each entry on its own, ours and theirs interleaved: between VQ's 4096 x codebook distance matrices the allocator
    # hands memory back to the system, and every small FSQ tensor would pay the page faults.
    for key, (ours, theirs, dim) in built.items():
        for round_ in range(12):  # two warm-up rounds, then ten timed ones
            for who, quantizer in (("ours", ours), ("theirs", theirs)):
                value = [wall_seconds(outputs, quantizer, inputs[dim]) for _ in range(3)]
                times.setdefault((key, who), []).extend(value if round_ >= 2 else [])
    table = {key: {who: 4096 / statistics.median(times[key, who]) for who in ("ours", "theirs")} for key in built}
    for key, row in table.items():
        row["ours/theirs"] = row["ours"] / row["theirs"]
        if key.startswith("fsq"):  # the same algorithm: the same codes, indices and input gradients, bit for bit
            (ours, grad), (theirs, their_grad) = (outputs(q, inputs[built[key][2]]) for q in built[key][:2])
            same = all(map(torch.equal, (*ours[:2], grad), (*theirs[:2], their_grad)))
            row["identical"] = "yes" if same else "NO"
    return table


if __name__ == "__main__":
    script_parser(__doc__).parse_args()
    start = time.perf_counter()
    speed = throughput()
    if speed is not None:
        print_table("vectors/s", speed, ("ours", "theirs", "ours/theirs", "identical"), SPEED_FORMATS, width=13)
    config = load_config("compare/bench_tokenizers")
    columns = ("codebook_size", "codebook_usage", "psnr", "train_seconds")
    usage = {row["run"]: {key: row[key] for key in columns} for row in compare.cells(compare.run(config))}
    text = "{codebook_usage:.1%} / {psnr:.2f}"
    table = {kind: {size: text.format(**usage[f"{kind}_{size}"]) for size in SIZES} for kind in KINDS}
    print_table("usage / PSNR dB", table, SIZES, width=16, headers=[f"2^{size.bit_length() - 1}" for size in SIZES])
    result = {"throughput_vectors_per_second": speed, "usage": usage, "torch": torch.__version__}
    write_report(Path("runs/bench_tokenizers.json"), result, start)
