"""Scoring generated samples against held-out data, the same way in every subject (docs/metrics.md).

`sw` (sliced Wasserstein) and `ed` (energy distance) compare points with the val points; on 8gaussians `modes`
counts the modes holding >= 20 samples within 3 std of their centre and `near` is the share of samples that close
to some centre; `fd` is the Frechet distance of image features to the val images' on a feature extractor. Under
`accelerate launch` each process scores its share: feature statistics are summed exactly, points are gathered.
"""

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import Tensor

from genkit.data import DataConfig, build_dataset
from genkit.errors import GenkitError
from genkit.features import Extractor
from genkit.metrics import (
    FeatureStatistics,
    energy_distance,
    frechet_from_statistics,
    mode_coverage,
    sliced_wasserstein,
)
from genkit.toys import EIGHT_GAUSSIAN_CENTRES, EIGHT_GAUSSIAN_STD, TOYS

DISTANCES = ("sw", "ed", "modes", "near", "fd")
MODE_MIN_COUNT = 20


class SampleScorer:
    """The `metrics` of samples against the val split of `data`; `extractor` for `fd` (image data)."""

    def __init__(self, data: DataConfig, metrics: list[str], extractor: Extractor | None, accelerator: Accelerator):
        self.data, self.metrics, self.extractor, self.accelerator = data, metrics, extractor, accelerator
        points = data.source in TOYS
        for metric in metrics:
            if metric in ("sw", "ed", "modes", "near") and not points:
                raise GenkitError(f"metric {metric} compares 2-D points; data.source={data.source} gives images")
            if metric in ("modes", "near") and data.source != "8gaussians":
                raise GenkitError(f"metric {metric} counts the modes of 8gaussians, not of {data.source}")
            if metric == "fd" and (points or extractor is None):
                raise GenkitError(f"metric fd needs image data and an extractor; data.source={data.source}")
        self.reference = build_dataset(data, "val")
        self.reference_stats = self.statistics(self.local_share(self.reference)) if "fd" in metrics else None

    def local_share(self, dataset) -> Tensor | None:
        """This process's share of a dataset, stacked (None when it has none)."""
        with self.accelerator.split_between_processes(list(range(len(dataset)))) as indices:
            return torch.stack([dataset[i] for i in indices]) if indices else None

    def statistics(self, local: Tensor | None) -> FeatureStatistics:
        """Feature statistics of every process's samples together (an empty share contributes zeros)."""
        extractor = self.extractor
        if local is None or len(local) == 0:
            probe = torch.zeros(2, extractor.channels, extractor.image_size, extractor.image_size)
            dim = extractor.features(probe).shape[1]
            zeros = FeatureStatistics(
                0, torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64)
            )
            return zeros.gathered(self.accelerator.state)
        return FeatureStatistics.of(self.extractor.features(local)).gathered(self.accelerator.state)

    def score(self, local: Tensor) -> dict[str, float]:
        """Every metric of the samples all processes hold together (`local` is this process's share)."""
        scores = {}
        if "fd" in self.metrics:
            scores["fd"] = frechet_from_statistics(self.statistics(local), self.reference_stats)
        if any(metric != "fd" for metric in self.metrics):
            samples = torch.cat([part for part in gather_object([local.detach().cpu()]) if len(part)])
            reference = self.reference.points
            count = min(len(samples), len(reference))  # sliced Wasserstein compares equal-size sets
            if "sw" in self.metrics:
                scores["sw"] = sliced_wasserstein(samples[:count], reference[:count])
            if "ed" in self.metrics:
                scores["ed"] = energy_distance(samples, reference)
            if "modes" in self.metrics or "near" in self.metrics:
                covered, near = mode_coverage(samples, EIGHT_GAUSSIAN_CENTRES, 3 * EIGHT_GAUSSIAN_STD, MODE_MIN_COUNT)
                scores |= {"modes": round(covered * len(EIGHT_GAUSSIAN_CENTRES)), "near": near}
        return {metric: scores[metric] for metric in self.metrics}

    def floor(self, count: int) -> dict[str, float]:
        """The metrics of `count` train examples (a seeded subset, every class) against the val data."""
        train = build_dataset(self.data, "train")
        chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:count].tolist()
        with self.accelerator.split_between_processes(chosen) as indices:
            local = torch.stack([train[i] for i in indices]) if indices else torch.empty(0, *train[0].shape)
        return self.score(local)

    def protocol(self) -> dict:
        """What a reader needs to reproduce these numbers: the reference set, and the extractor for fd."""
        protocol = {"reference_set": f"{len(self.reference)} val {self.data.source}"}
        return protocol | (self.extractor.protocol() if "fd" in self.metrics else {})
