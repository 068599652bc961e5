"""Benchmark the image quantizers: speed against vector-quantize-pytorch, and codebook usage after short training.

Throughput: our FSQ and EMA VectorQuantizer against vector-quantize-pytorch's FSQ and VectorQuantize, built
alike (the same FSQ levels; VQ dim 32, decay 0.99, commitment weight 0.25, EMA updates on, training mode, no
dead-code restarts), on one float32 CPU input of 64 images x 8x8 tokens = 4096 channels-last vectors. A call is
forward + backward of quantized.sum() + aux loss; each entry is 4096 / the median call time over interleaved
rounds, so a burst of load from another process slows ours and theirs alike. Theirs is built with
rotation_trick=False: its default gradient estimator (the rotation trick) is more work than the straight-through
estimator ours implements, and the comparison is of the same algorithm. ours/theirs > 1 means ours is faster.
This part needs the optional extra `bench`; without it, it is skipped and the usage table still runs.

Usage: FSQ and plain VQ (EMA codebook, no dead-code restarts: the setting of the FSQ paper's claim that VQ usage
falls as the codebook grows while FSQ stays near 100%) at 2^8..2^14 codes, each trained with genkit's own
trainer on configs/tokenizer/demo.yaml (embedded RGB crops, 32x32 images -> 8x8 tokens) for the same number of
steps, then its exported model scored on the whole val split, 512 images x 64 tokens = 32768 tokens. FSQ uses the
paper's levels, whose codebooks hold 240, 1000, 4375 and 15360 codes; VQ holds exactly 2^k. 32768 tokens are
enough to fill even 2^14 codes in principle, but a finite sample leaves some codes empty: a quantizer using all
codes uniformly would still read about 1 - exp(-32768 / K) = 86% at K = 2^14 (88% at 15360, ~100% below).
Cells are "usage% / PSNR dB"; higher is better for both. `--vq-restart` adds a VQ row with dead-code restarts
(threshold 1.0), four more runs. A code then has to win one encoding per batch on average to stay, and a batch
holds 32 x 64 = 2048 tokens: at 2^12 and 2^14 most codes are reset to batch encodings every step, so training
sees nearly unquantized latents (aux loss ~0) and those two cells are not a fair quantizer's PSNR.

The default is 200 steps, not demo.yaml's 300: on the shared 2-core CPU a step took 0.3-0.4 s when otherwise idle
(about 2 s next to another training job), so 8 runs of 300 steps would take 15 minutes or more. 200 steps is still
early training, not converged quality; pass --steps for more. Runs go to
runs/bench_tokenizers/<kind>_<size>_<steps>steps/ and resume from their checkpoints, so rerunning with the same
--steps reuses finished runs instead of training again (their train_seconds in the JSON are then near zero).

All numbers, the setup and the timings go to runs/bench_tokenizers.json.
"""

import argparse
import importlib.metadata
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from genkit.checkpoint import write_json
from genkit.config import load_config
from genkit.data import validation_samples
from genkit.train.tokenizer import TokenizerRunConfig, evaluate_tokenizer, load_tokenizer, train
from tokenizers_img import FSQ, VectorQuantizer
from tokenizers_img.fsq import LEVELS_FOR_CODEBOOK_SIZE

try:
    import vector_quantize_pytorch as vqp
except ImportError:
    vqp = None

REPO = Path(__file__).resolve().parent.parent
CODEBOOK_SIZES = (2**8, 2**10, 2**12, 2**14)
# Throughput input: 64 images x 8x8 tokens, channels-last.
IMAGES, TOKENS = 64, 8 * 8
VQ_DIM = 32
VQ_DECAY = 0.99
VQ_BETA = 0.25
WARMUP_CALLS = 2
REPEATS = 5
CALLS_PER_ROUND = 3
# Usage runs.
CONFIG = REPO / "configs" / "tokenizer" / "demo.yaml"
DEFAULT_STEPS = 200
VQ_LATENT_DIM = 8
RESTART_THRESHOLD = 1.0
VAL_IMAGES = 512
OUTPUT = REPO / "runs" / "bench_tokenizers.json"


def quantizer_pairs() -> dict[tuple[str, int], tuple[nn.Module, nn.Module, int]]:
    """(kind, codebook size) -> (ours, theirs, input width) in training mode; VQ codebooks drawn after seeding 0."""
    pairs = {}
    for size in CODEBOOK_SIZES:
        levels = LEVELS_FOR_CODEBOOK_SIZE[size]
        pairs["fsq", size] = (FSQ.from_codebook_size(size), vqp.FSQ(levels=list(levels)), len(levels))
        torch.manual_seed(0)
        ours = VectorQuantizer(size, VQ_DIM, beta=VQ_BETA, ema=True, decay=VQ_DECAY)
        torch.manual_seed(0)
        theirs = vqp.VectorQuantize(
            dim=VQ_DIM, codebook_size=size, decay=VQ_DECAY, commitment_weight=VQ_BETA, rotation_trick=False
        )
        pairs["vq", size] = (ours, theirs, VQ_DIM)
    return {key: (ours.train(), theirs.train(), dim) for key, (ours, theirs, dim) in pairs.items()}


def forward_backward(quantizer: nn.Module, inputs: Tensor) -> None:
    """One call: forward, then backward of quantized.sum() + aux loss (their FSQ returns no loss)."""
    x = inputs.detach().requires_grad_()
    outputs = quantizer(x)
    aux_loss = outputs[2] if len(outputs) > 2 else 0.0
    (outputs[0].sum() + aux_loss).backward()


def seconds(fn: Callable[..., object], *args: object) -> float:
    """Wall time of one call fn(*args)."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def throughput_table() -> dict[str, dict[int, float]]:
    """Vectors/s of ours and theirs per kind and codebook size, and their ratio ours/theirs."""
    pairs = quantizer_pairs()
    generator = torch.Generator().manual_seed(0)
    inputs = {dim: torch.randn((IMAGES, TOKENS, dim), generator=generator) for dim in {d for _, _, d in pairs.values()}}
    # Warm-up: the first calls pay for allocator and kernel setup, which no later call sees.
    for ours, theirs, dim in pairs.values():
        for _ in range(WARMUP_CALLS):
            forward_backward(ours, inputs[dim])
            forward_backward(theirs, inputs[dim])
    times: dict[tuple[str, int, str], list[float]] = {
        (kind, size, who): [] for kind, size in pairs for who in ("ours", "theirs")
    }
    # Rounds interleave everything timed, so a burst of load from another process slows all entries alike.
    for _ in range(REPEATS):
        for (kind, size), (ours, theirs, dim) in pairs.items():
            times[kind, size, "ours"] += [seconds(forward_backward, ours, inputs[dim]) for _ in range(CALLS_PER_ROUND)]
            times[kind, size, "theirs"] += [
                seconds(forward_backward, theirs, inputs[dim]) for _ in range(CALLS_PER_ROUND)
            ]
    vectors = IMAGES * TOKENS
    table: dict[str, dict[int, float]] = {}
    for kind in ("fsq", "vq"):
        for who in ("ours", "theirs"):
            table[f"{kind} {who}"] = {
                size: vectors / statistics.median(times[kind, size, who]) for size in CODEBOOK_SIZES
            }
        table[f"{kind} ours/theirs"] = {
            size: table[f"{kind} ours"][size] / table[f"{kind} theirs"][size] for size in CODEBOOK_SIZES
        }
    return table


def run_overrides(kind: str, size: int, steps: int) -> list[str]:
    """The demo config overrides of one usage run: its name, budget, resumption and quantizer."""
    slug = kind.replace("+", "_")
    overrides = [
        f"name=bench_tokenizers/{slug}_{size}_{steps}steps",
        f"output_dir={REPO / 'runs'}",
        "train.tracker=none",
        f"train.steps={steps}",
        f"train.eval_every={steps}",
        f"train.checkpoint_every={steps}",
        "train.resume=latest",
    ]
    if kind == "fsq":
        levels = LEVELS_FOR_CODEBOOK_SIZE[size]
        return overrides + [f"model.quantizer.levels=[{','.join(map(str, levels))}]", f"model.latent_dim={len(levels)}"]
    threshold = RESTART_THRESHOLD if kind == "vq+restart" else 0
    return overrides + [
        "model.quantizer.kind=vq",
        f"model.quantizer.codebook_size={size}",
        "model.quantizer.ema=true",
        f"model.quantizer.dead_code_threshold={threshold}",
        f"model.latent_dim={VQ_LATENT_DIM}",
    ]


def usage_run(config: TokenizerRunConfig, images: Tensor) -> dict[str, float]:
    """Train (or resume) one run, then its exported model's metrics on `images` and the seconds each part took."""
    start = time.perf_counter()
    train(config)
    train_seconds = time.perf_counter() - start
    folder = Path(config.output_dir) / config.name
    runtime = json.loads((folder / "runtime.json").read_text())
    tokenizer = load_tokenizer(folder / "model")
    metrics, _ = evaluate_tokenizer(tokenizer, images)
    return {
        **metrics,
        "codebook_size": tokenizer.codebook_size,
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - start - train_seconds,
        "resumed_from_step": runtime["resumed_from_step"],
    }


def usage_table(kinds: tuple[str, ...], steps: int) -> tuple[dict[str, dict[int, dict[str, float]]], int]:
    """Metrics of every (kind, codebook size) run, and how many val images they were scored on."""
    table: dict[str, dict[int, dict[str, float]]] = {kind: {} for kind in kinds}
    images = None
    for kind in kinds:
        for size in CODEBOOK_SIZES:
            config = load_config(CONFIG, run_overrides(kind, size, steps))
            if images is None:
                # Every run shares demo.yaml's data config, hence one val batch for all.
                images = validation_samples(config.data, VAL_IMAGES)
            table[kind][size] = usage_run(config, images)
            cell = table[kind][size]
            print(
                f"{kind} {size}: usage {cell['codebook_usage']:.1%}, PSNR {cell['psnr']:.2f} dB, "
                f"train {cell['train_seconds']:.0f} s (resumed at step {cell['resumed_from_step']})",
                flush=True,
            )
    return table, len(images)


def print_table(title: str, table: dict[str, dict[int, str]]) -> None:
    """Rows as given, columns codebook size."""
    print(f"\n{title}")
    print(f"{'':<18}" + "".join(f"{f'2^{size.bit_length() - 1}':>16}" for size in CODEBOOK_SIZES))
    for name, row in table.items():
        print(f"{name:<18}" + "".join(f"{row[size]:>16}" for size in CODEBOOK_SIZES))


def main() -> None:
    """Run both benchmarks, print the tables and save the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps of every usage run")
    parser.add_argument("--vq-restart", action="store_true", help="also train VQ with dead-code restarts")
    args = parser.parse_args()
    start = time.perf_counter()
    their_version = importlib.metadata.version("vector-quantize-pytorch") if vqp is not None else None
    setup = {
        "codebook_sizes": list(CODEBOOK_SIZES),
        "fsq_levels": {size: list(LEVELS_FOR_CODEBOOK_SIZE[size]) for size in CODEBOOK_SIZES},
        "throughput": {
            "input": [IMAGES, TOKENS, "dim"],
            "dtype": "float32",
            "device": "cpu",
            "vq_dim": VQ_DIM,
            "vq_decay": VQ_DECAY,
            "vq_commitment_weight": VQ_BETA,
            "theirs_rotation_trick": False,
            "warmup_calls": WARMUP_CALLS,
            "repeats": REPEATS,
            "calls_per_round": CALLS_PER_ROUND,
        },
        "usage": {
            "config": str(CONFIG.relative_to(REPO)),
            "steps": args.steps,
            "vq_latent_dim": VQ_LATENT_DIM,
            "restart_threshold": RESTART_THRESHOLD if args.vq_restart else None,
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "genkit": importlib.metadata.version("genkit"),
            "vector_quantize_pytorch": their_version,
        },
        "threads": torch.get_num_threads(),
    }
    print(
        f"codebook sizes {', '.join(map(str, CODEBOOK_SIZES))}; torch {torch.__version__}, "
        f"{setup['threads']} threads; vector-quantize-pytorch {their_version or 'not installed'}"
    )

    throughput = None
    throughput_seconds = 0.0
    if vqp is None:
        print(
            "\nvector-quantize-pytorch is not installed: skipping the throughput comparison (pip install -e '.[bench]')"
        )
    else:
        throughput_start = time.perf_counter()
        throughput = throughput_table()
        throughput_seconds = time.perf_counter() - throughput_start
        cells = {
            name: {size: format(value, ".2f" if "/" in name else ".2e") for size, value in row.items()}
            for name, row in throughput.items()
        }
        print_table(
            f"Quantizer forward+backward, vectors/s (median; {IMAGES}x{TOKENS} vectors, float32 CPU; "
            f"FSQ levels per paper, VQ dim {VQ_DIM} EMA); ours/theirs > 1: ours faster",
            cells,
        )

    usage_start = time.perf_counter()
    kinds = ("fsq", "vq", "vq+restart") if args.vq_restart else ("fsq", "vq")
    usage, val_images = usage_table(kinds, args.steps)
    usage_seconds = time.perf_counter() - usage_start
    setup["usage"]["val_images"] = val_images
    cells = {
        kind: {size: f"{m['codebook_usage']:.1%} / {m['psnr']:.2f}" for size, m in row.items()}
        for kind, row in usage.items()
    }
    print_table(
        f"Codebook usage / PSNR dB on {val_images} val images ({val_images * TOKENS} tokens) after {args.steps} steps",
        cells,
    )

    total_seconds = time.perf_counter() - start
    write_json(
        OUTPUT,
        {
            "setup": setup,
            "throughput_vectors_per_second": throughput,
            "usage": usage,
            "throughput_seconds": throughput_seconds,
            "usage_seconds": usage_seconds,
            "total_seconds": total_seconds,
        },
    )
    print(f"\nwrote {OUTPUT} in {total_seconds:.1f} s")


if __name__ == "__main__":
    main()
