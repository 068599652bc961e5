"""Reproduce the trend of the ReFlow paper's CIFAR-10 table at CPU scale: 1-RF vs 2-RF vs 2-RF + distillation.

Each dataset is one ReFlow pipeline, `genkit.train.reflow.run(load_config(config, overrides))`: a 1-rectified flow,
pairs (z, Z1(z)) from it, a 2-rectified flow fine-tuned on them, pairs from that, and a one-step distillation
(training at t = 0 only), in runs/reproduce_reflow/<dataset>_<budget>/<stage>/. Rerunning with the same budget
reuses finished stages (and resumes an unfinished one); their training times are read back from their runs.

Toys (8gaussians, moons, checkerboard; configs/flow/reflow_moons.yaml with data.source swapped): an MLP, 2000 /
1000 / 500 steps of batch 256, 20000 pairs per reflow from an adaptive RK45 solve. Quality is measured against the
2000 held-out val points, from 2000 noise draws of a fixed seed (none of them a pair's noise): sliced Wasserstein
(SW) and energy distance (ED) after 1, 2 and 4 Euler steps and after an accurate solve ("ode": scipy RK45, rtol =
atol = 1e-5, the pairs' solver; "NFE ode" is the evaluations it spent: straighter flows need fewer, as in the paper's
127 -> 110). For 8gaussians, "modes" is how many of the 8 modes hold >= 20 samples within 3 std of their centre and
"near" the share of samples that lie that close to some centre. Lower is better for everything else; the "floor"
line is the same distance between 2000 train and the 2000 val points, what a perfect sampler would read.

mnist5k (configs/flow/reflow_mnist5k.yaml, shrunk to CPU scale): digits at 16x16, not the config's 32x32, with a
[16, 32]-channel UNet (160k parameters), 1000 / 500 / 250 steps of batch 64, lr 1e-3, 2000 pairs per reflow from
Heun at 32 NFE: a budget of ~10 minutes for this part. Quality is the Frechet distance (FD) between 500 generated
digits and the 500 val digits on the 64 penultimate-layer features of a small CNN classifier that the script trains
on the train split first (seeded, 5 epochs, ~10 s; its val accuracy is printed). 500 samples in 64 dimensions bias
FD upwards, alike for every row; the floor line is 500 train digits against the val digits. The accurate solve is
RK45 at rtol = atol = 1e-4. Grids of the one-step and the solved samples of every stage are saved as PNGs in the
pipeline's folder. "train s" is the stage's own wall time from its metrics.jsonl: the sum of its logged intervals,
the training steps and any checkpoint in between (the final evaluation, checkpoint and export come after the last
interval and are not in it). "pairs s" is the generation of the pairs the stage trains on, from the previous
stage's exported model to the pairs manifest.

On a shared 2-core CPU run it with OMP_NUM_THREADS=1: next to other jobs, torch's 2 threads made the training steps
5-10x slower than 1 thread. So run, the whole script took 12 minutes (toys ~5, mnist5k ~7).

How to read it against the paper (ALGORITHMS.md 4.6, CIFAR-10 FID): one Euler step gives 378 for 1-RF (it lands
on the data mean), 12.21 for 2-RF and 4.85 for 2-RF + distillation, while the full ODE solve gets slightly worse
after reflowing, 2.58 -> 3.36, and straightness drops. The final note says, per dataset, whether our numbers move
the same way, counting a change no larger than the floor as "equal". What one such run showed:
- mnist5k follows the paper: one-step FD 451 (the 1-RF one-step grid is the mean digit) -> 26.9 -> 24.3, the full
  solve worse after reflow, 14.4 -> 18.8 (+31%; the paper +30%), straightness 18.3 -> 1.3, RK45 NFE 92 -> 74. The
  distillation gain (2.6) is below the floor (3.5), so one seed does not establish it.
- The toys reproduce the reflow half: one Euler step of 1-RF collapses onto the mean (SW 1.33 / 0.89 / 1.07, no
  8gaussians mode covered) and 2-RF fixes it (0.19 / 0.094 / 0.10, all 8 modes), straightness drops 130-3300x and
  RK45 NFE drops by 45-65%. But the 2-D 2-RF is so straight that one step is already as good as its own solve, so
  distillation has nothing left to gain (changes below the floor), and the full solve's loss after reflow (0.169 ->
  0.173 on 8gaussians) is below the floor too: equal, where the paper has slightly worse.
- Distillation trains only t = 0, so the distilled flow's multi-step and solved samples get worse (its 2-step to
  ode columns); the paper only uses it for one step.

`--only toys|mnist` runs one part; `--quick` is a smoke test with tiny budgets (meaningless numbers), in its own
run folders and runs/reproduce_reflow_quick.json. All numbers, settings and timings go to runs/reproduce_reflow.json
(a part not run keeps its numbers from the file's previous run).
"""

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.utils import save_image

import samplers
from genkit.checkpoint import write_json
from genkit.config import load_config
from genkit.data import build_dataset, data_shape
from genkit.digits import FEATURES, digit_features, digit_images, digit_labels, train_digit_classifier
from genkit.metrics import energy_distance, frechet_distance, mode_coverage, sliced_wasserstein
from genkit.toys import EIGHT_GAUSSIAN_CENTRES, EIGHT_GAUSSIAN_STD
from genkit.train.flow import load_velocity_model
from genkit.train.reflow import ReflowRunConfig, run, stage_names

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "flow"
OUTPUT_DIR = REPO / "runs" / "reproduce_reflow"
OUTPUT = REPO / "runs" / "reproduce_reflow.json"
QUICK_OUTPUT = REPO / "runs" / "reproduce_reflow_quick.json"
TOY_CONFIG = CONFIGS / "reflow_moons.yaml"
TOYS = ("8gaussians", "moons", "checkerboard")
MNIST_CONFIG = CONFIGS / "reflow_mnist5k.yaml"
# The table's rows: the training stages of one pipeline with rounds=1 and distillation.
ROWS = {"1-rf": "1-RF", "2-rf": "2-RF", "distill": "2-RF+distill"}
EULER_STEPS = (1, 2, 4)
SOLVE_METHOD = "RK45"
TOY_SOLVE_TOLERANCE = 1e-5
MNIST_SOLVE_TOLERANCE = 1e-4
EVAL_SEED = 20_230_201
# "Evaluate only at the end": train.eval_every must be a positive number of steps.
NO_PERIODIC_EVAL = 10**9
MODE_RADIUS = 3 * EIGHT_GAUSSIAN_STD
MODE_MIN_COUNT = 20
# mnist5k at CPU scale.
MNIST_IMAGE_SIZE = 16
MNIST_OVERRIDES = (
    f"data.image_size={MNIST_IMAGE_SIZE}",
    "model.block_channels=[16,32]",
    "optimizer.lr=1e-3",
    "train.warmup_steps=50",
    "pairs.solver=heun",
    "pairs.nfe=32",
    "pairs.batch_size=500",
)
GRID_IMAGES = 64
CLASSIFIER_EPOCHS = 5


@dataclass
class Budget:
    """Steps of each training stage and pairs per reflow, plus the evaluation sizes."""

    steps: int
    reflow_steps: int
    distill_steps: int
    num_pairs: int
    eval_samples: int
    samples: int = 0  # mnist: generated digits for FD (the toys use every val point)
    classifier_epochs: int = CLASSIFIER_EPOCHS


TOY_BUDGET = Budget(steps=2000, reflow_steps=1000, distill_steps=500, num_pairs=20_000, eval_samples=1024)
TOY_QUICK = Budget(steps=60, reflow_steps=30, distill_steps=20, num_pairs=500, eval_samples=256)
MNIST_BUDGET = Budget(steps=1000, reflow_steps=500, distill_steps=250, num_pairs=2000, eval_samples=256, samples=500)
MNIST_QUICK = Budget(
    steps=6, reflow_steps=4, distill_steps=4, num_pairs=64, eval_samples=32, samples=100, classifier_epochs=1
)


def run_name(dataset: str, budget: Budget) -> str:
    """The pipeline's folder name: the budget is part of it, so a changed budget never reuses stale stages."""
    return f"{dataset}_{budget.steps}-{budget.reflow_steps}-{budget.distill_steps}_pairs{budget.num_pairs}"


def pipeline_overrides(dataset: str, budget: Budget, extra: tuple[str, ...] = ()) -> list[str]:
    """The config overrides of one pipeline: its folder, budget, tracker and only a final evaluation per stage."""
    return [
        f"name={run_name(dataset, budget)}",
        f"output_dir={OUTPUT_DIR}",
        "train.tracker=none",
        f"train.eval_every={NO_PERIODIC_EVAL}",
        "rounds=1",
        f"train.steps={budget.steps}",
        f"reflow_steps={budget.reflow_steps}",
        f"distill_steps={budget.distill_steps}",
        f"eval_samples={budget.eval_samples}",
        f"pairs.num_pairs={budget.num_pairs}",
        f"pairs.shard_size={min(budget.num_pairs, 5000)}",
        *extra,
    ]


def train_seconds(stage_dir: Path, batch_size: int) -> float:
    """Wall time of a training stage: the sum of its logged intervals, images / (images per second)."""
    seconds, previous = 0.0, 0
    for line in (stage_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "images_per_second" in record:
            seconds += (record["step"] - previous) * batch_size / record["images_per_second"]
            previous = record["step"]
    return seconds


def pairs_seconds(pairs_dir: Path, previous_stage_dir: Path) -> float:
    """Wall time of a pair generation: from the previous stage's exported model to the pairs manifest."""
    return (pairs_dir / "pairs.json").stat().st_mtime - (previous_stage_dir / "model" / "config.json").stat().st_mtime


def run_pipeline(config: ReflowRunConfig) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], float]:
    """Run (or finish) the pipeline; its summary, each training stage's train and pairs seconds, and the wall time."""
    start = time.perf_counter()
    summary = run(config)
    seconds = time.perf_counter() - start
    root = Path(config.output_dir) / config.name
    stages = stage_names(config)
    timings = {}
    for index, stage in enumerate(stages):
        if stage in ROWS:
            timing = {"train_seconds": train_seconds(root / stage, config.train.batch_size), "pairs_seconds": None}
            if index > 0:
                timing["pairs_seconds"] = pairs_seconds(root / stages[index - 1], root / stages[index - 2])
            timings[stage] = timing
    return summary, timings, seconds


@torch.no_grad()
def generate(model: nn.Module, noise: Tensor, tolerance: float) -> tuple[dict[str, Tensor], int]:
    """Samples after 1, 2, 4 Euler steps and after the accurate solve (keys "1", "2", "4", "solve"); the solve's NFE."""
    samples = {str(steps): samplers.euler(model, noise, samplers.uniform(steps + 1)) for steps in EULER_STEPS}
    counting = samplers.CountingField(model)
    samples["solve"] = samplers.reference(
        counting, noise, 0.0, 1.0, rtol=tolerance, atol=tolerance, method=SOLVE_METHOD
    )
    return samples, counting.nfe


def toy_metrics(samples: Tensor, reference: Tensor, dataset: str) -> dict[str, float]:
    """SW and ED to the held-out points; for 8gaussians also the modes covered and the high-quality share."""
    metrics = {"sw": sliced_wasserstein(samples, reference), "ed": energy_distance(samples, reference)}
    if dataset == "8gaussians":
        covered, quality = mode_coverage(samples, EIGHT_GAUSSIAN_CENTRES, MODE_RADIUS, MODE_MIN_COUNT)
        metrics |= {"modes": covered * len(EIGHT_GAUSSIAN_CENTRES), "high_quality": quality}
    return metrics


def evaluate_toy(dataset: str, budget: Budget) -> dict:
    """One toy pipeline, then every stage's metrics on the same noise."""
    config = load_config(TOY_CONFIG, pipeline_overrides(dataset, budget, (f"data.source={dataset}",)))
    summary, timings, pipeline_seconds = run_pipeline(config)
    start = time.perf_counter()
    reference = build_dataset(config.data, "val").points
    train_points = build_dataset(config.data, "train").points[: len(reference)]
    noise = torch.randn(reference.shape, generator=torch.Generator().manual_seed(EVAL_SEED))
    stages = {}
    for stage in ROWS:
        model = load_velocity_model(OUTPUT_DIR / config.name / stage / "model")
        samples, nfe = generate(model, noise, TOY_SOLVE_TOLERANCE)
        metrics = {key: toy_metrics(points, reference, dataset) for key, points in samples.items()}
        stages[stage] = {"straightness": summary[stage]["straightness"], "solve_nfe": nfe, **timings[stage]}
        stages[stage] |= {f"{name}_{key}": value for key, values in metrics.items() for name, value in values.items()}
    floor = {
        "sw": sliced_wasserstein(train_points, reference),
        "ed": energy_distance(train_points, reference),
    }
    return {
        "run": config.name,
        "overrides": pipeline_overrides(dataset, budget, (f"data.source={dataset}",)),
        "held_out": len(reference),
        "floor": floor,
        "stages": stages,
        "summary": summary,
        "pipeline_seconds": pipeline_seconds,
        "eval_seconds": time.perf_counter() - start,
    }


def save_grid(images: Tensor, path: Path) -> None:
    """The first GRID_IMAGES images in [-1, 1] as one PNG grid, 8 a row."""
    save_image(images[:GRID_IMAGES].clamp(-1, 1), path, nrow=8, normalize=True, value_range=(-1, 1))


def evaluate_mnist(budget: Budget) -> dict:
    """The classifier, the mnist5k pipeline, then every stage's FDs, solve NFE and sample grids."""
    config = load_config(MNIST_CONFIG, pipeline_overrides("mnist5k", budget, MNIST_OVERRIDES))
    start = time.perf_counter()
    train_images, val_images = (digit_images(split, config.data.image_size) for split in ("train", "val"))
    train_labels, val_labels = digit_labels("train"), digit_labels("val")
    classifier = train_digit_classifier(train_images, train_labels, budget.classifier_epochs)
    with torch.no_grad():
        val_accuracy = (classifier(val_images).argmax(1) == val_labels).double().mean().item()
    classifier_seconds = time.perf_counter() - start
    print(
        f"digit classifier: val accuracy {val_accuracy:.1%} after {budget.classifier_epochs} epochs, "
        f"{classifier_seconds:.0f} s",
        flush=True,
    )

    summary, timings, pipeline_seconds = run_pipeline(config)
    start = time.perf_counter()
    val_features = digit_features(classifier, val_images)
    # mnist5k is sorted by digit: a seeded subset of the train split has every digit.
    subset = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(0))[: len(val_images)]
    floor = frechet_distance(digit_features(classifier, train_images[subset]), val_features)
    noise = torch.randn((budget.samples, *data_shape(config.data)), generator=torch.Generator().manual_seed(EVAL_SEED))
    root = OUTPUT_DIR / config.name
    stages = {}
    for stage in ROWS:
        samples, nfe = generate(load_velocity_model(root / stage / "model"), noise, MNIST_SOLVE_TOLERANCE)
        stages[stage] = {"straightness": summary[stage]["straightness"], "solve_nfe": nfe, **timings[stage]}
        for key, images in samples.items():
            stages[stage][f"fd_{key}"] = frechet_distance(digit_features(classifier, images), val_features)
        for key in ("1", "solve"):
            path = root / f"grid_{stage}_{'1step' if key == '1' else 'solve'}.png"
            save_grid(samples[key], path)
            stages[stage][f"grid_{key}"] = str(path.relative_to(REPO))
    return {
        "run": config.name,
        "overrides": pipeline_overrides("mnist5k", budget, MNIST_OVERRIDES),
        "classifier": {
            "val_accuracy": val_accuracy,
            "epochs": budget.classifier_epochs,
            "features": FEATURES,
            "seconds": classifier_seconds,
        },
        "samples": budget.samples,
        "held_out": len(val_images),
        "floor": {"fd": floor},
        "stages": stages,
        "summary": summary,
        "pipeline_seconds": pipeline_seconds,
        "eval_seconds": time.perf_counter() - start,
    }


def cell(value: float | None, fmt: str) -> str:
    """A number in `fmt`, or "-" for a missing one."""
    return "-" if value is None else format(value, fmt)


def print_table(title: str, columns: dict[str, tuple[str, str]], stages: dict[str, dict]) -> None:
    """Rows 1-RF, 2-RF, 2-RF+distill; columns key -> (header, format)."""
    print(f"\n{title}")
    print(f"{'':<14}" + "".join(f"{header:>10}" for header, _ in columns.values()))
    for stage, label in ROWS.items():
        row = stages[stage]
        print(f"{label:<14}" + "".join(f"{cell(row.get(key), fmt):>10}" for key, (_, fmt) in columns.items()))


def common_columns(metric: str, label: str, fmt: str) -> dict[str, tuple[str, str]]:
    """`label`@1, @2, @4 Euler steps and @solve, for the metric keys `metric`_1 ... `metric`_solve."""
    columns = {f"{metric}_{steps}": (f"{label}@{steps}", fmt) for steps in EULER_STEPS}
    columns[f"{metric}_solve"] = (f"{label}@ode", fmt)
    return columns


def pipeline_note(result: dict) -> str:
    """Seconds the stages took to train and make pairs, and how long this run's run() call took (less on reuse)."""
    stages = result["stages"].values()
    built = sum(stage["train_seconds"] + (stage["pairs_seconds"] or 0) for stage in stages)
    return f"stages {built:.0f} s, run() now {result['pipeline_seconds']:.0f} s"


def print_toy(dataset: str, result: dict, budget: Budget) -> None:
    """The toy's table: straightness, SW and ED per sampler, solve NFE, modes (8gaussians), seconds."""
    columns = {"straightness": ("straight", ".4f"), **common_columns("sw", "SW", ".4f")}
    columns |= common_columns("ed", "ED", ".4f") | {"solve_nfe": ("NFE ode", "d")}
    if dataset == "8gaussians":
        columns |= {"modes_1": ("modes@1", ".0f"), "high_quality_1": ("near@1", ".0%")}
        columns |= {"modes_solve": ("modes@ode", ".0f"), "high_quality_solve": ("near@ode", ".0%")}
    columns |= {"train_seconds": ("train s", ".0f"), "pairs_seconds": ("pairs s", ".0f")}
    print_table(
        f"{dataset}: MLP, {budget.steps}/{budget.reflow_steps}/{budget.distill_steps} steps, {budget.num_pairs} RK45 "
        f"pairs per reflow; {result['held_out']} samples vs held-out; ode = RK45 rtol=atol={TOY_SOLVE_TOLERANCE:g}; "
        f"{pipeline_note(result)}",
        columns,
        result["stages"],
    )
    floor = result["floor"]
    print(f"{'floor':<14}(train vs val points) SW {floor['sw']:.4f}, ED {floor['ed']:.4f}")


def print_mnist(result: dict, budget: Budget) -> None:
    """The mnist5k table: straightness, FD per sampler, solve NFE, seconds."""
    columns = {"straightness": ("straight", ".2f"), **common_columns("fd", "FD", ".2f")}
    columns |= {"solve_nfe": ("NFE ode", "d"), "train_seconds": ("train s", ".0f"), "pairs_seconds": ("pairs s", ".0f")}
    print_table(
        f"mnist5k {MNIST_IMAGE_SIZE}x{MNIST_IMAGE_SIZE}: UNet [16,32], {budget.steps}/{budget.reflow_steps}/"
        f"{budget.distill_steps} steps, {budget.num_pairs} Heun-32 pairs per reflow; FD on {FEATURES} classifier "
        f"features (val acc {result['classifier']['val_accuracy']:.1%}), {result['samples']} samples vs "
        f"{result['held_out']} val digits; ode = RK45 rtol=atol={MNIST_SOLVE_TOLERANCE:g}; "
        f"{pipeline_note(result)}",
        columns,
        result["stages"],
    )
    print(f"{'floor':<14}({result['held_out']} train vs val digits) FD {result['floor']['fd']:.2f}")


def change(before: float, after: float, floor: float) -> str:
    """The change from before to after, lower being better: "better", "worse", or "equal" (within `floor`)."""
    if abs(after - before) <= floor:
        return "equal"
    return "better" if after < before else "worse"


def trend(stages: dict[str, dict], metric: str, floor: float) -> dict[str, str]:
    """Our numbers next to the paper's claims, for one metric; differences within the held-out floor count as equal."""
    one = [stages[stage][f"{metric}_1"] for stage in ROWS]
    solve = [stages["1-rf"][f"{metric}_solve"], stages["2-rf"][f"{metric}_solve"]]
    straight = [stages["1-rf"]["straightness"], stages["2-rf"]["straightness"]]
    nfe = [stages["1-rf"]["solve_nfe"], stages["2-rf"]["solve_nfe"]]
    reflow, distill = change(one[0], one[1], floor), change(one[1], one[2], floor)
    gap = {"better": "better than", "worse": "worse than", "equal": "as good as"}[change(solve[1], one[1], floor)]
    return {
        "one_step": f"{' -> '.join(f'{v:.3g}' for v in one)}: reflow {reflow}, distillation {distill} "
        "(paper 378 -> 12.21 -> 4.85: better, better)",
        "2-RF gap": f"2-RF one step {one[1]:.3g} is {gap} its ODE solve {solve[1]:.3g} "
        "(paper 12.21 vs 3.36: much worse, the room distillation fills)",
        "solve": f"{solve[0]:.3g} -> {solve[1]:.3g}: {change(solve[0], solve[1], floor)} after reflow "
        "(paper 2.58 -> 3.36: slightly worse)",
        "straightness": f"{straight[0]:.3g} -> {straight[1]:.3g}: "
        + ("drops, as the theory says" if straight[1] < straight[0] else "does not drop, unlike the theory"),
        "ode NFE": f"{nfe[0]} -> {nfe[1]} (paper RK45 127 -> 110)",
    }


def main() -> None:
    """Run the chosen pipelines, print a table per dataset and the comparison with the paper, save the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("toys", "mnist"), help="run only the toys or only mnist5k")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test, not results")
    args = parser.parse_args()
    start = time.perf_counter()
    toy_budget, mnist_budget = (TOY_QUICK, MNIST_QUICK) if args.quick else (TOY_BUDGET, MNIST_BUDGET)
    output = QUICK_OUTPUT if args.quick else OUTPUT
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; runs under {OUTPUT_DIR}", flush=True)

    results: dict[str, dict] = {}
    if args.only != "mnist":
        for dataset in TOYS:
            results[dataset] = evaluate_toy(dataset, toy_budget)
            print_toy(dataset, results[dataset], toy_budget)
    if args.only != "toys":
        results["mnist5k"] = evaluate_mnist(mnist_budget)
        print_mnist(results["mnist5k"], mnist_budget)

    print(
        "\nPaper (CIFAR-10 FID, ALGORITHMS.md 4.6): one Euler step 1-RF 378 -> 2-RF 12.21 -> 2-RF+distill 4.85; "
        "full ODE solve 1-RF 2.58 -> 2-RF 3.36 (slightly worse); straightness drops with reflow."
    )
    for dataset, result in results.items():
        metric = "fd" if dataset == "mnist5k" else "sw"
        result["trend"] = trend(result["stages"], metric, result["floor"][metric])
        print(f"{dataset} ({metric.upper()}):")
        for claim, verdict in result["trend"].items():
            print(f"  {claim:<13}{verdict}")

    total_seconds = time.perf_counter() - start
    # Keep the other part's numbers of an earlier run with the same budgets when only one part ran.
    previous = json.loads(output.read_text()) if output.exists() else {}
    datasets = previous.get("datasets", {}) | results
    setup = {
        "toy_budget": asdict(toy_budget),
        "mnist_budget": asdict(mnist_budget),
        "eval_seed": EVAL_SEED,
        "solve": {
            "method": SOLVE_METHOD,
            "toy_tolerance": TOY_SOLVE_TOLERANCE,
            "mnist_tolerance": MNIST_SOLVE_TOLERANCE,
        },
        "mode_radius": MODE_RADIUS,
        "mode_min_count": MODE_MIN_COUNT,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    write_json(output, {"setup": setup, "datasets": datasets, "total_seconds": total_seconds})
    print(f"\nwrote {output} in {total_seconds:.1f} s")


if __name__ == "__main__":
    main()
