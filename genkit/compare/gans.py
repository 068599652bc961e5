"""Comparing GAN runs from the same latent seeds, and what following each critic's field does to the samples.

Samples are scored against the val data by genkit.compare.scoring: `sw` and `ed` (and `modes`, `near` on
8gaussians) for points, `fd` on a feature extractor for images. Each run gets a row for its generator's samples and
one for each refinement step size (`refine_steps` Euler steps along the critic's field, as `genkit sample
--refine-steps`). With `baselines`, a "floor" row scores train data against the val data (what a perfect sampler
reads) and an "init" row the untrained generator of the first run's config.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from genkit.compare.output import Shared, log_grid
from genkit.compare.scoring import SampleScorer
from genkit.compare.training import RunSpec, train_or_reuse
from genkit.config import check_choice, ranged
from genkit.data import DataConfig, data_shape
from genkit.errors import GenkitError
from genkit.features import EXTRACTORS, load_extractor
from genkit.models import load_gan
from genkit.noise import initial_noise
from genkit.runs import Run
from genkit.sampling import refine
from genkit.toys import TOYS
from genkit.tracking import RunLog


@dataclass
class GanRuns:
    """GAN runs to compare (folders, or configs trained here), refinement step sizes, and optional baseline rows."""

    runs: list[str] = dataclasses.field(default_factory=list)
    train: list[RunSpec] = dataclasses.field(default_factory=list)
    refine_steps: int = ranged(5, minimum=1)
    refine_sizes: list[float] = ranged(list, above=0)
    baselines: bool = False
    reference_data: DataConfig | None = None  # default: the first run's data
    extractor: str = "digits"
    extractor_path: str | None = None

    def __post_init__(self):
        if not self.runs and not self.train:
            raise GenkitError("gans compares runs: list their folders under runs: or their configs under train:")
        check_choice("gans.extractor", self.extractor, EXTRACTORS)


class GanComparison:
    """GAN runs from the same latent seeds: their samples (and refined samples) scored against the val data."""

    x_axis, line_keys, plotted = "run", ("method",), ()

    def __init__(self, section: GanRuns, shared: Shared, accelerator: Accelerator, run_dir: Path):
        self.section, self.shared, self.accelerator = section, shared, accelerator
        self.runs = [Run(run) for run in section.runs] + [
            train_or_reuse(spec, shared.run_overrides) for spec in section.train
        ]
        for run in self.runs:
            if not (run.model / "generator").is_dir():
                raise GenkitError(f"{run.folder} is not a finished GAN run (no model/generator); train it first")
        data = section.reference_data or self.runs[0].data
        self.images = data.source not in TOYS
        extractor = load_extractor(section.extractor, section.extractor_path) if self.images else None
        metrics = ["fd"] if self.images else ["sw", "ed"] + (["modes", "near"] if data.source == "8gaussians" else [])
        self.scorer = SampleScorer(data, metrics, extractor, accelerator)
        self.columns = self.shown = ["method", "run", "refine_step_size", *metrics, "train_seconds"]

    def baseline_rows(self, noise: torch.Tensor) -> list[dict]:
        """The floor (train data against val data) and the untrained generator of the first run's config."""
        config = self.runs[0].config
        torch.manual_seed(config.train.seed)  # as the loop seeds torch before the trainer builds its models
        generator, _ = config.model.build(data_shape(config.data))
        with torch.no_grad():
            init = generator(noise)
        floor = self.scorer.floor(self.shared.num_samples)
        return [
            {"method": "floor", "run": "train data"} | floor,
            {"method": "init", "run": "untrained"} | self.scorer.score(init),
        ]

    def table(self, log: RunLog, run_dir: Path) -> tuple[list[dict], dict]:
        shared, section = self.shared, self.section
        protocol = {"num_samples": shared.num_samples, "seed": shared.seed, **self.scorer.protocol()}
        protocol["processes"] = self.accelerator.num_processes  # each scores its share of the samples
        rows = []
        for run in self.runs:
            gan = load_gan(run.model).to(self.accelerator.device)
            # This process's share of the samples: the scorer sums feature statistics and gathers points over processes.
            with self.accelerator.split_between_processes(list(range(shared.num_samples))) as indices:
                latent = (gan.generator.config.latent_dim,)
                noise = initial_noise(indices, latent, shared.seed).to(self.accelerator.device)
            if section.baselines and not rows:
                rows += self.baseline_rows(noise)
            with torch.no_grad():
                samples = gan.generator(noise)
            method = gan.potential.method + (f"({gan.potential.h})" if gan.potential.method == "monoflow" else "")
            run_row = {"method": method, "run": run.name, "train_seconds": run.training_seconds}
            rows.append(run_row | self.scorer.score(samples))
            for size in section.refine_sizes:
                refined = refine(gan.critic_field(), samples, section.refine_steps, size).detach()
                rows.append(run_row | {"refine_step_size": size} | self.scorer.score(refined))
            # The main process holds the first samples; a scatter of points shows every process's.
            shown = samples[: shared.grid_samples] if self.images else torch.cat(gather_object([samples.cpu()]))
            log_grid(log, run_dir, run.name, shown)
        return rows, protocol
