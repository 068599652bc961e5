"""Reproduce the GAN-as-ODE picture at CPU scale: MonoFlow with each h, WGAN-GP original vs ReFlow-derived.

Every run is `genkit.train.gan.train(load_config(configs/gan/<method>_<data>.yaml))` in runs/reproduce_gans/:
- toys (8gaussians, moons): MonoFlow with h = logit, non_saturating, minimax (logit shift 5, as the reference
  script) and arcsinh, 2000 steps; WGAN-GP and the ReFlow-derived critic, 4000 critic steps (800 generator
  steps); MLPs, batch 256, lr 1e-3. Scored on the 2000 val points with 2000 samples of fixed noise: sliced
  Wasserstein (SW) and energy distance (ED); on 8gaussians also the modes holding >= 20 samples within 3 std of
  their centre. "init" is the untrained generator, "floor" the same distances from 2000 train points.
- mnist5k (32x32, DCGAN nets): MonoFlow non-saturating (1500 steps) and both WGANs (3000 critic steps), batch 64,
  the reference optimisers. Scored by the Frechet distance (FD) between 500 samples and the 500 val digits on the
  features of genkit's digit classifier; "floor" is 500 train digits.
Refinement: the samples then take Euler steps along the critic's field (grad h(d) for MonoFlow, grad D for
WGAN; `genkit sample --refine-steps K --refine-step-size ETA`), K = 5 at two step sizes; a cell is marked
"helps" when the refined distance is lower.

Rerunning reuses every finished run whose config is unchanged. `--only toys|mnist`; `--quick` is a smoke test
(tiny budgets, meaningless numbers, own folders and runs/reproduce_gans_quick.json). Results go to
runs/reproduce_gans.json. Run with OMP_NUM_THREADS=1 on a shared 2-core machine.
"""

import argparse
import json
import platform
import shutil
from pathlib import Path

import torch
import yaml

from genkit.checkpoint import training_seconds, write_json
from genkit.config import config_dict, load_config
from genkit.data import build_dataset, validation_samples
from genkit.digits import digit_classifier, digit_features, digit_images
from genkit.generate import refine
from genkit.metrics import energy_distance, frechet_distance, mode_coverage, sliced_wasserstein
from genkit.toys import EIGHT_GAUSSIAN_CENTRES, EIGHT_GAUSSIAN_STD
from genkit.train import gan

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "gan"
TOYS = ("8gaussians", "moons")
TOY_METHODS = (
    "monoflow_logit",
    "monoflow_non_saturating",
    "monoflow_minimax",
    "monoflow_arcsinh",
    "wgan_gp",
    "wgan_reflow",
)
MNIST_METHODS = ("monoflow_non_saturating", "wgan_gp", "wgan_reflow")
REFINE_STEPS = 5
REFINE_SIZES = {"toys": (0.005, 0.02), "mnist": (0.01, 0.05)}
DIGIT_SAMPLES = 500
MODE_MIN_COUNT = 20
NOISE_SEED = 20_230_701


def run_config(method: str, data: str, root: Path, quick: bool):
    """The config of one cell, written to run in root/<method>_<data>."""
    overrides = [f"name={method}_{data}", f"output_dir={root}", "train.tracker=none"]
    if quick:
        overrides += ["train.steps=10", "train.eval_every=10", "train.checkpoint_every=10", "train.log_every=5"]
    return load_config(CONFIGS / f"{method}_{data}.yaml", overrides)


def latent_noise(count: int, latent_dim: int) -> torch.Tensor:
    return torch.randn(count, latent_dim, generator=torch.Generator().manual_seed(NOISE_SEED))


def toy_scores(samples: torch.Tensor, reference: torch.Tensor, data: str) -> dict[str, float]:
    scores = {"sw": sliced_wasserstein(samples, reference), "ed": energy_distance(samples, reference)}
    if data == "8gaussians":
        covered, _ = mode_coverage(samples, EIGHT_GAUSSIAN_CENTRES, 3 * EIGHT_GAUSSIAN_STD, MODE_MIN_COUNT)
        scores["modes"] = round(covered * len(EIGHT_GAUSSIAN_CENTRES))
    return scores


def evaluate_cell(run: Path, noise: torch.Tensor, score, sizes: tuple[float, ...]) -> dict:
    """Scores of the generator's samples, and after REFINE_STEPS Euler steps along the critic at each size."""
    generator, critic, settings = gan.load_gan(run / "model")
    field = gan.potential_field(critic, settings)
    with torch.no_grad():
        samples = generator(noise)
    result = {"samples": score(samples)}
    for size in sizes:
        refined = refine(field, samples, REFINE_STEPS, size).detach()
        result[f"refined_{size:g}"] = score(refined)
    return result


def train_cell(method: str, data: str, root: Path, quick: bool) -> tuple[Path, float, object]:
    """(run folder, training seconds, config): a finished run with the same config is reused, else (re)trained.

    The seconds are the span from the run's config.yaml (written when the loop starts) to its exported model.
    """
    config = run_config(method, data, root, quick)
    run = root / config.name
    saved = run / "config.yaml"
    finished = (run / "model" / "generator").is_dir() and saved.is_file()
    if not (finished and yaml.safe_load(saved.read_text()) == config_dict(config.resolved())):
        shutil.rmtree(run, ignore_errors=True)
        gan.train(config)
    return run, training_seconds(run, run / "model" / "generator"), config


def untrained_scores(config, noise: torch.Tensor, score) -> dict:
    """The initial generator's scores (the loop seeds torch with train.seed before building the models)."""
    torch.manual_seed(config.train.seed)
    generator, _ = config.model.build(tuple(validation_samples(config.data, 1).shape[1:]))
    with torch.no_grad():
        return score(generator(noise))


def run_toys(root: Path, quick: bool) -> dict:
    results = {}
    for data in TOYS:
        reference = None
        results[data] = {}
        for method in TOY_METHODS:
            run, seconds, config = train_cell(method, data, root, quick)
            if reference is None:
                reference = build_dataset(config.data, "val").points
                train_points = build_dataset(config.data, "train").points[: len(reference)]
                noise = latent_noise(len(reference), config.model.latent_dim)
                score = lambda samples: toy_scores(samples, reference, data)  # noqa: B023, E731
                results[data]["floor"] = score(train_points)
                results[data]["init"] = untrained_scores(config, noise, score)
            cell = evaluate_cell(run, noise, score, REFINE_SIZES["toys"])
            results[data][method] = {**cell, "seconds": seconds}
            print(f"{data} {method}: {cell['samples']} in {seconds:.0f} s", flush=True)
    return results


def run_mnist(root: Path, quick: bool) -> dict:
    classifier = digit_classifier(32, epochs=1 if quick else 5)
    val_features = digit_features(classifier, digit_images("val", 32))
    score = lambda samples: {"fd": frechet_distance(digit_features(classifier, samples), val_features)}  # noqa: E731
    train_digits = digit_images("train", 32)[torch.randperm(4500, generator=torch.Generator().manual_seed(0))[:500]]
    results = {"floor": score(train_digits)}
    for method in MNIST_METHODS:
        run, seconds, config = train_cell(method, "mnist5k", root, quick)
        noise = latent_noise(DIGIT_SAMPLES, config.model.latent_dim)
        if "init" not in results:
            results["init"] = untrained_scores(config, noise, score)
        cell = evaluate_cell(run, noise, score, REFINE_SIZES["mnist"])
        results[method] = {**cell, "seconds": seconds}
        print(f"mnist5k {method}: {cell['samples']} in {seconds:.0f} s", flush=True)
    return results


def print_toys(results: dict) -> None:
    sizes = REFINE_SIZES["toys"]
    for data, rows in results.items():
        print(f"\n{data}: distance to the val points (lower is better); refined = {REFINE_STEPS} critic Euler steps")
        header = f"{'':<26}{'SW':>8}{'ED':>9}" + ("  modes" if data == "8gaussians" else "")
        header += "".join(f"{'SW@' + format(s, 'g'):>11}" for s in sizes) + f"{'train s':>9}"
        print(header)
        for name, row in rows.items():
            scores = row.get("samples", row)
            line = f"{name:<26}{scores['sw']:>8.3f}{scores['ed']:>9.4f}"
            line += f"{scores['modes']:>7}" if data == "8gaussians" else ""
            refined = [row.get(f"refined_{s:g}", {}).get("sw") for s in sizes]
            line += "".join(f"{'-' if r is None else format(r, '.3f'):>11}" for r in refined)
            line += f"{row['seconds']:>9.0f}" if "seconds" in row else ""
            print(line)


def print_mnist(results: dict) -> None:
    sizes = REFINE_SIZES["mnist"]
    print("\nmnist5k: digit-classifier FD to the val digits (lower is better)")
    print(f"{'':<26}{'FD':>8}" + "".join(f"{'FD@' + format(s, 'g'):>10}" for s in sizes) + f"{'train s':>9}")
    for name, row in results.items():
        scores = row.get("samples", row)
        refined = [row.get(f"refined_{s:g}", {}).get("fd") for s in sizes]
        line = f"{name:<26}{scores['fd']:>8.2f}" + "".join(
            f"{'-' if r is None else format(r, '.2f'):>10}" for r in refined
        )
        print(line + (f"{row['seconds']:>9.0f}" if "seconds" in row else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("toys", "mnist"), default=None)
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test, meaningless numbers")
    args = parser.parse_args()
    output = REPO / "runs" / ("reproduce_gans_quick.json" if args.quick else "reproduce_gans.json")
    root = REPO / "runs" / ("reproduce_gans_quick" if args.quick else "reproduce_gans")
    results = json.loads(output.read_text()) if output.is_file() else {}
    results["machine"] = platform.platform()
    if args.only in (None, "toys"):
        results["toys"] = run_toys(root, args.quick)
    if args.only in (None, "mnist"):
        results["mnist5k"] = run_mnist(root, args.quick)
    if "toys" in results:
        print_toys(results["toys"])
    if "mnist5k" in results:
        print_mnist(results["mnist5k"])
    write_json(output, results)
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
