"""Benchmark AMED-Solver and AMED-Plugin(iPNDM) against the baseline solvers at NFE 3..10 (ALGORITHMS 1.9).

Two fields, each solved from one fixed noise batch at sigma_max = 80 down to sigma_min = 0.002 in EDM form:
- `mixture`: the exact velocity of the 64-dim, 8-component Gaussian mixture of configs/amed/gmm64.yaml (float64,
  256 draws), against scipy's DOP853 solution at rtol = atol = 1e-9;
- `digits`: a 1-rectified flow (a 160k-parameter diffusers UNet) trained by genkit on mnist5k at 16x16
  (configs/flow/rf_mnist5k.yaml, ~4 min on 2 CPU cores; reused from runs/bench_amed/flow when there), converted
  with RectifiedAsEDM (float32, 256 draws), against DOP853 at rtol = atol = 1e-5. Its samples are also scored by
  the Frechet distance (FD) to the 500 val digits on the features of genkit's digit classifier (256 samples bias
  FD upwards, alike for every cell; the reference solve's FD is the floor a solver can reach).

Baselines use the diff-solvers toolbox schedules (polynomial rho = 7 for Euler, Heun, DPM-Solver-2 and iPNDM;
logSNR for DPM-Solver++(2M)); "-" marks an NFE a two-stage solver cannot spend exactly. Every AMED cell distils
its own predictor through `genkit.train.amed.train` with the paper's settings (ALGORITHMS 1.7): odd NFE is
N = (NFE + 3) / 2 timestamps with AFS, even NFE is N = NFE / 2 + 1 without; AMED-Solver on time_uniform with a
Heun teacher (M = 1), AMED-Plugin on polynomial rho = 7 with an iPNDM teacher (M = 2) and scale_time 0.2 (the
CIFAR-10 setting); in batches of 128 with Adam 5e-3, on the paper's 10k noise draws for the mixture and on 2560
for digits (a CPU budget: a digits step costs ~30 UNet passes of the batch); "distil s" is its wall time. At
NFE 5 on digits both AMED variants are also distilled with features = "bottleneck" (the UNet's middle block)
instead of the pooled slope. The goal line compares AMED-Plugin at NFE 5 with the best baseline at NFE 5
(the paper: 2x).

`--only mixture|digits` runs one part; `--quick` is a smoke test (tiny budgets, meaningless numbers, its own
folders and runs/bench_amed_quick.json); `--nfe 5 6 --digit-draws 10000` reruns some columns with the paper's
distillation budget (its own folders and JSON, the same trained flow as the default run); `--features bottleneck`
distils every AMED cell on the U-Net's middle block instead of the slope. Results and settings
go to runs/bench_amed.json. On a shared 2-core machine run it with OMP_NUM_THREADS=1 next to other jobs.
"""

import argparse
import dataclasses
import json
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

import samplers
from genkit.checkpoint import training_seconds, write_json
from genkit.config import load_config
from genkit.digits import digit_classifier, digit_features, digit_images
from genkit.errors import GenkitError
from genkit.fields import FieldConfig, LoadedField
from genkit.metrics import frechet_distance
from genkit.train import flow
from genkit.train.amed import AmedRunConfig, AmedSettings, load_predictor, sigma_max_noise
from genkit.train.amed import train as distil_predictor
from genkit.train.loop import TrainConfig
from samplers.schedules import SIGMA_MAX, SIGMA_MIN

REPO = Path(__file__).resolve().parent.parent
OUTPUT_DIR = REPO / "runs" / "bench_amed"
MIXTURE_CONFIG = REPO / "configs" / "amed" / "gmm64.yaml"
FLOW_CONFIG = REPO / "configs" / "flow" / "rf_mnist5k.yaml"
NFES = tuple(range(3, 11))
BASELINE_SCHEDULES = {
    "euler": "karras",
    "heun": "karras",
    "dpm_solver_2": "karras",
    "dpmpp_2m": "logsnr",
    "ipndm": "karras",
}
AMED_VARIANTS = {
    "amed": {"solver": "amed", "schedule": "time_uniform", "teacher": "heun", "teacher_steps": 1},
    "amed_plugin": {
        "solver": "amed_plugin",
        "base": "ipndm",
        "schedule": "karras",
        "teacher": "ipndm",
        "teacher_steps": 2,
        "scale_time": 0.2,
    },
}
ROWS = (*BASELINE_SCHEDULES, *AMED_VARIANTS)
FEATURE_NFE = 5
EVAL_SEED = 20_240_617
# The paper's CIFAR-10 FIDs (ALGORITHMS 1.9, diff-solvers README), for the note.
PAPER_CIFAR10_FID = {
    "euler": {3: 93.36, 4: None, 5: 49.66, 6: None, 7: 27.93, 8: None, 9: 18.43, 10: None},
    "heun": {4: 319.87, 6: 99.74, 8: 38.06, 10: 15.93},
    "dpm_solver_2": {4: 145.98, 6: 60.00, 8: 10.30, 10: 5.01},
    "ipndm": {3: 47.98, 5: 13.59, 7: 5.08, 9: 3.17},
    "amed": {3: 18.49, 4: 17.18, 5: 7.59, 6: 7.04, 7: 4.36, 8: 5.56, 9: 3.67, 10: 4.14},
    "amed_plugin": {3: 10.81, 4: 10.43, 5: 6.61, 6: 6.67, 7: 3.65, 8: 3.34, 9: 2.63, 10: 2.48},
}


@dataclass
class Budget:
    """Sizes of one benchmark run."""

    mixture_samples: int = 256
    digit_samples: int = 256
    mixture_distil_samples: int = 10_000
    # A digits distillation step costs ~30 UNet passes of a batch: 2560 draws keep a cell near 2 minutes on CPU.
    digit_distil_samples: int = 2560
    distil_batch: int = 128
    flow_steps: int = 1500
    classifier_epochs: int = 5
    nfes: tuple[int, ...] = NFES


FULL = Budget()
QUICK = Budget(
    mixture_samples=16,
    digit_samples=32,
    mixture_distil_samples=256,
    digit_distil_samples=256,
    flow_steps=6,
    classifier_epochs=1,
    nfes=(3, 4, 5),
)


def amed_settings(variant: str, nfe: int, features: str = "slope") -> AmedSettings:
    """The paper's settings of `variant` at this NFE: AFS on for odd NFE, off for even."""
    afs = nfe % 2 == 1
    num_steps = (nfe + 3) // 2 if afs else nfe // 2 + 1
    return AmedSettings(num_steps=num_steps, afs=afs, features=features, **AMED_VARIANTS[variant])


def distil(
    name: str, field: FieldConfig, loaded: LoadedField, settings: AmedSettings, draws: int, budget: Budget, folder: Path
) -> tuple[samplers.AMEDPredictor, float]:
    """A predictor for `settings` distilled on `draws` noise draws in folder/name, and the distillation's wall time.

    A finished distillation there with the same field, settings and draws is reused; its time is the span from
    the run's config.yaml (written when the loop starts) to its exported model.
    """
    run = folder / name
    try:
        predictor, _ = load_predictor(run / "model", loaded.field_id, settings)
        if yaml.safe_load((run / "config.yaml").read_text())["num_samples"] == draws:
            return predictor, training_seconds(run, run / "model")
    except (GenkitError, FileNotFoundError):
        pass
    shutil.rmtree(run, ignore_errors=True)
    steps = draws // budget.distil_batch
    config = AmedRunConfig(
        name=name,
        output_dir=str(folder),
        num_samples=draws,
        field=field,
        amed=settings,
        train=TrainConfig(
            steps=steps,
            batch_size=budget.distil_batch,
            ema_decay=0.0,
            max_grad_norm=0.0,
            tracker="none",
            log_every=steps,
            eval_every=steps,
            checkpoint_every=steps,
        ),
    )
    distil_predictor(config)
    predictor, _ = load_predictor(run / "model", loaded.field_id, settings)
    return predictor, training_seconds(run, run / "model")


def reference_solution(loaded: LoadedField, noise: Tensor, tolerance: float, cache: Path) -> Tensor:
    """DOP853 from sigma_max to sigma_min; kept in `cache` with its noise, field id and tolerance for reruns."""
    key = {"field": loaded.field_id, "tolerance": repr(tolerance)}
    if cache.is_file():
        with safe_open(cache, "pt") as saved:
            if saved.metadata() == key and torch.equal(saved.get_tensor("noise"), noise):
                return saved.get_tensor("target")
    target = samplers.reference(loaded.edm, noise, SIGMA_MAX, SIGMA_MIN, rtol=tolerance, atol=tolerance)
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file({"noise": noise, "target": target}, cache, metadata=key)
    return target


def rmse(x: Tensor, target: Tensor) -> float:
    return (x - target).double().pow(2).mean().sqrt().item()


@torch.no_grad()
def solve_cell(loaded: LoadedField, noise: Tensor, row: str, nfe: int, predictor=None, settings=None) -> Tensor | None:
    """The terminal state of `row` at `nfe` from `noise`, or None when the solver cannot spend exactly `nfe`."""
    if row in BASELINE_SCHEDULES:
        try:
            return samplers.sample(loaded.edm, noise, row, nfe, schedule=BASELINE_SCHEDULES[row])
        except samplers.SamplerError:
            return None
    counting = samplers.CountingField(loaded.edm)
    out = settings.sample(counting, noise, predictor)
    assert counting.nfe == nfe, (row, nfe, counting.nfe)
    return out


def field_rows(
    name: str,
    field: FieldConfig,
    budget: Budget,
    root: Path,
    samples: int,
    draws: int,
    tolerance: float,
    reference_root: Path,
    score=None,
    features: str = "slope",
) -> dict:
    """Every (row, NFE) cell of one field: RMSE to the reference, `score` of the samples, distillation seconds.

    AMED predictors read `features`; with slope features and a `score` (the image model) both AMED variants are
    also distilled at FEATURE_NFE on bottleneck features.
    """
    loaded = field.load()
    noise = sigma_max_noise(samples, loaded.shape, SIGMA_MAX, EVAL_SEED, loaded.dtype)
    start = time.perf_counter()
    # Shared by the variants of a budget (--digit-draws): keyed by field, noise and tolerance.
    target = reference_solution(loaded, noise, tolerance, reference_root / name / "reference.safetensors")
    result = {"reference_seconds": time.perf_counter() - start, "rmse": {}, "score": {}, "distil_seconds": {}}
    measure = lambda out: (rmse(out, target), None if score is None else score(out))  # noqa: E731
    if score is not None:
        result["reference_score"] = score(target)
    for row in ROWS:
        result["rmse"][row], result["score"][row] = {}, {}
        for nfe in budget.nfes:
            predictor, settings = None, None
            if row in AMED_VARIANTS:
                settings = amed_settings(row, nfe, features)
                predictor, seconds = distil(f"{row}_nfe{nfe}", field, loaded, settings, draws, budget, root / name)
                result["distil_seconds"].setdefault(row, {})[nfe] = seconds
            out = solve_cell(loaded, noise, row, nfe, predictor, settings)
            result["rmse"][row][nfe], result["score"][row][nfe] = (None, None) if out is None else measure(out)
            print(f"{name} {row} NFE {nfe}: RMSE {result['rmse'][row][nfe]}", flush=True)
    if score is not None and features == "slope":
        result["bottleneck"] = {}
        for variant in AMED_VARIANTS:
            settings = amed_settings(variant, FEATURE_NFE, "bottleneck")
            folder = root / name
            predictor, seconds = distil(
                f"{variant}_nfe{FEATURE_NFE}_bottleneck", field, loaded, settings, draws, budget, folder
            )
            rmse_value, score_value = measure(solve_cell(loaded, noise, variant, FEATURE_NFE, predictor, settings))
            result["bottleneck"][variant] = {"rmse": rmse_value, "score": score_value, "distil_seconds": seconds}
    return result


def train_flow(budget: Budget, root: Path) -> Path:
    """The digits flow run: reused when its model exists, else trained with FLOW_CONFIG."""
    name = "flow"
    run = root / name
    if not (run / "model").is_dir():
        overrides = [
            f"name={name}",
            f"output_dir={root}",
            f"train.steps={budget.flow_steps}",
            "train.tracker=none",
        ]
        flow.train(load_config(FLOW_CONFIG, overrides))
    return run


def digit_scorer(image_size: int, budget: Budget):
    """FD of samples to the val digits on the classifier's features, and the train-vs-val floor."""
    classifier = digit_classifier(image_size, epochs=budget.classifier_epochs)
    val_features = digit_features(classifier, digit_images("val", image_size))
    return lambda samples: frechet_distance(digit_features(classifier, samples / (1 + SIGMA_MIN)), val_features)


def cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_table(title: str, table: dict, nfes: tuple[int, ...], fmt: str) -> None:
    print(f"\n{title}")
    print(f"{'':<14}" + "".join(f"{'NFE ' + str(n):>10}" for n in nfes))
    for row, values in table.items():
        print(f"{row:<14}" + "".join(f"{cell(values.get(n), fmt):>10}" for n in nfes))


def goal_line(field: str, result: dict) -> dict:
    """AMED-Plugin at NFE 5 against the best baseline at NFE 5."""
    baselines = {row: result["rmse"][row].get(5) for row in BASELINE_SCHEDULES}
    best = min((value, row) for row, value in baselines.items() if value is not None)
    plugin = result["rmse"]["amed_plugin"].get(5)
    ratio = best[0] / plugin if plugin else None
    print(
        f"{field}: AMED-Plugin NFE 5 RMSE {cell(plugin, '.4g')} vs best baseline {best[1]} {best[0]:.4g}: {ratio:.2f}x"
    )
    return {"best_baseline": best[1], "best_baseline_rmse": best[0], "plugin_rmse": plugin, "ratio": ratio}


def by_nfe(table: dict) -> dict[str, dict[int, float | None]]:
    """A row -> NFE table with integer NFE keys (JSON turns them into strings)."""
    return {row: {int(nfe): value for nfe, value in values.items()} for row, values in table.items()}


def report(field: str, result: dict) -> dict:
    """Print the field's tables and goal line; the goal's numbers."""
    rmse_table = by_nfe(result["rmse"])
    nfes = tuple(next(iter(rmse_table.values())))
    print_table(f"{field}: terminal RMSE to the reference", rmse_table, nfes, ".3e")
    if "reference_score" in result:
        title = f"{field}: FD to the val digits (the reference solve: {result['reference_score']:.2f})"
        print_table(title, by_nfe(result["score"]), nfes, ".2f")
    print_table(f"{field}: distillation wall time, s", by_nfe(result["distil_seconds"]), nfes, ".1f")
    return goal_line(field, result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("mixture", "digits"), default=None)
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test, meaningless numbers")
    parser.add_argument("--nfe", type=int, nargs="+", default=None, help="only these NFE columns")
    parser.add_argument("--digit-draws", type=int, default=None, help="distillation draws for digits (2560)")
    parser.add_argument("--features", choices=("slope", "bottleneck"), default="slope", help="AMED predictor input")
    args = parser.parse_args()
    budget = QUICK if args.quick else FULL
    budget = dataclasses.replace(
        budget,
        nfes=tuple(args.nfe or budget.nfes),
        digit_distil_samples=args.digit_draws or budget.digit_distil_samples,
    )
    variant = "quick" if args.quick else "" if budget == FULL else f"draws{budget.digit_distil_samples}"
    variant = "_".join(v for v in (variant, "" if args.features == "slope" else args.features) if v)
    output = REPO / "runs" / (f"bench_amed_{variant}.json" if variant else "bench_amed.json")
    root = OUTPUT_DIR.with_name(f"bench_amed_{variant}") if variant else OUTPUT_DIR
    # The trained flow and the reference solves are shared by every variant of the full budget.
    shared = root if args.quick else OUTPUT_DIR
    results = json.loads(output.read_text()) if output.is_file() else {}
    results |= {"settings": {"budget": vars(budget), "variants": AMED_VARIANTS}, "machine": platform.platform()}
    results["paper_cifar10_fid"] = PAPER_CIFAR10_FID
    torch.manual_seed(0)
    if args.only in (None, "mixture"):
        mixture = load_config(MIXTURE_CONFIG).field
        results["mixture"] = field_rows(
            "mixture", mixture, budget, root, budget.mixture_samples, budget.mixture_distil_samples, 1e-9, shared
        )
        write_json(output, results)
    if args.only in (None, "digits"):
        run = train_flow(budget, shared)
        digits = FieldConfig(kind="flow_run", path=str(run))
        score = digit_scorer(digits.load().shape[-1], budget)
        results["digits"] = field_rows(
            "digits",
            digits,
            budget,
            root,
            budget.digit_samples,
            budget.digit_distil_samples,
            1e-5,
            shared,
            score,
            args.features,
        )
        results["digits"]["flow_seconds"] = training_seconds(run, run / "model")
        write_json(output, results)
    for field in ("mixture", "digits"):
        if field in results:
            results[field]["goal"] = report(field, results[field])
    if "bottleneck" in results.get("digits", {}):
        print(f"\ndigits, NFE {FEATURE_NFE}: predictor features   RMSE        FD   distil s")
        for variant, values in results["digits"]["bottleneck"].items():
            slope = [
                by_nfe(results["digits"][key])[variant][FEATURE_NFE] for key in ("rmse", "score", "distil_seconds")
            ]
            for features, row in (("slope", slope), ("bottleneck", list(values.values()))):
                print(f"{variant + ' / ' + features:<30}{row[0]:>10.4g}{row[1]:>10.2f}{row[2]:>11.1f}")
    write_json(output, results)
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
