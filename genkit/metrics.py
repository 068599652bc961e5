"""Metrics: tensors in, numbers out; nothing here knows about training."""

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from accelerate import PartialState
from accelerate.utils import reduce
from skimage.metrics import structural_similarity
from torch import Tensor

from genkit.errors import GenkitError
from genkit.velocity import Velocity
from samplers import euler, uniform


def psnr_per_image(images: Tensor, reference: Tensor, data_range: float = 2.0) -> Tensor:
    """10 log10(range^2 / MSE) of each image, [N] in float64, for images in [-1, 1] (range 2)."""
    mse = (images.double() - reference.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def psnr(images: Tensor, reference: Tensor, data_range: float = 2.0) -> float:
    """Mean over images of 10 log10(range^2 / MSE), for images in [-1, 1] (range 2)."""
    return psnr_per_image(images, reference, data_range).mean().item()


def ssim_per_image(images: Tensor, reference: Tensor) -> Tensor:
    """Wang et al. (2004)'s SSIM of each image, [N] in float64 on the CPU, for images in [-1, 1].

    An 11x11 Gaussian window of sigma 1.5, population (co)variances, K1 = 0.01 and K2 = 0.03; averaged over channels
    and over the window positions that lie inside the image.
    """
    pairs = zip(images.detach().double().cpu().numpy(), reference.detach().double().cpu().numpy(), strict=True)
    # scikit-image's defaults (7x7 uniform window, sample covariance) are not the published SSIM; these settings are.
    options = {"data_range": 2.0, "channel_axis": 0, "gaussian_weights": True, "sigma": 1.5}
    scores = [structural_similarity(a, b, use_sample_covariance=False, **options) for a, b in pairs]
    return torch.tensor(scores, dtype=torch.float64)


def ssim(images: Tensor, reference: Tensor) -> float:
    """Mean over images of Wang et al. (2004)'s SSIM (ssim_per_image) for images in [-1, 1]."""
    return ssim_per_image(images, reference).mean().item()


def straightness(field: Velocity, z0: Tensor, nfe: int = 100) -> float:
    """S = int_0^1 E||(Z1 - Z0) - v(Z_t, t)||^2 dt along `nfe` uniform Euler steps from z0 (docs/metrics.md §8).

    Discretised on the solver's own grid: the integral is the mean over t_i = i / nfe, i < nfe, of the velocity Euler
    used at its state Z_i (a left Riemann sum), and Z1 is the end of that same simulation. The squared norm is summed
    over dimensions and averaged over samples. S = 0 exactly when every path is a straight line at constant speed.
    """
    # mean_i ||d - v_i||^2 = mean_i ||v_i - v_mean||^2 + ||d - v_mean||^2 with d = Z1 - Z0. Welford's running mean
    # and sum of squared deviations give both terms without storing nfe velocities or cancelling large numbers.
    v_mean = torch.zeros(z0.shape[0], z0[0].numel(), dtype=torch.float64, device=z0.device)
    squared_deviations = torch.zeros(z0.shape[0], dtype=torch.float64, device=z0.device)

    def record(state: dict) -> None:
        velocity = state["velocity"].double().flatten(1)
        delta = velocity - v_mean
        v_mean.add_(delta / (state["i"] + 1))
        squared_deviations.add_((delta * (velocity - v_mean)).sum(1))

    with torch.no_grad():
        z1 = euler(field, z0, uniform(nfe + 1), callback=record)
    d = (z1 - z0).double().flatten(1)
    per_sample = squared_deviations / nfe + (d - v_mean).pow(2).sum(1)
    return per_sample.mean().item()


def sliced_wasserstein(x: Tensor, y: Tensor, projections: int = 256, seed: int = 0) -> float:
    """SW_2 = sqrt(mean over random unit directions theta of W_2^2(theta . x, theta . y)) for equal-size sets [N, ...].

    Each 1-D W_2^2 between N points and N points is the mean squared difference of the sorted projections; the
    directions are uniform on the sphere, drawn from `seed`, so two calls with one seed use the same directions.
    """
    if len(x) != len(y):
        raise GenkitError(
            f"sliced_wasserstein compares equal-size sets, got {len(x)} and {len(y)} points; draw as many samples "
            "as there are reference points"
        )
    x, y = x.double().flatten(1), y.double().flatten(1).to(x.device)
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(x.shape[1], projections, generator=generator, dtype=torch.float64).to(x.device)
    directions = directions / directions.norm(dim=0)
    x_sorted, y_sorted = (x @ directions).sort(dim=0).values, (y @ directions).sort(dim=0).values
    return (x_sorted - y_sorted).pow(2).mean(0).mean().sqrt().item()


def _mean_distance(a: Tensor, b: Tensor) -> Tensor:
    """Mean of ||a_i - b_j|| over all pairs (i, j)."""
    # Not cdist's matrix-product shortcut: its cancellation loses digits and leaves a nonzero diagonal.
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").mean()


def energy_distance(x: Tensor, y: Tensor) -> float:
    """2 E||X - Y|| - E||X - X'|| - E||Y - Y'|| as a V-statistic (all pairs, i = j included) on sets [N, ...], [M, ...].

    The V-statistic is the energy distance between the two empirical distributions: never negative, and 0 for
    identical sets. It is the square of scipy.stats.energy_distance in 1-D.
    """
    x, y = x.double().flatten(1), y.double().flatten(1)
    return (2 * _mean_distance(x, y) - _mean_distance(x, x) - _mean_distance(y, y)).item()


def mode_coverage(samples: Tensor, centres: Tensor, radius: float, min_count: int = 1) -> tuple[float, float]:
    """(fraction of modes covered, fraction of high-quality samples) for samples [N, D] and mode centres [K, D].

    A sample is high quality when its nearest centre is within `radius`, and then counts for that mode; a mode is
    covered when at least `min_count` samples count for it (raise it above 1 so that stray samples cover no mode).
    """
    distances = torch.cdist(samples.double(), centres.double().to(samples.device))
    nearest_distance, nearest = distances.min(dim=1)
    high_quality = nearest_distance <= radius
    counts = torch.bincount(nearest[high_quality], minlength=len(centres))
    return (counts >= min_count).double().mean().item(), high_quality.double().mean().item()


def as_uint8(images: Tensor) -> Tensor:
    """Images x in [-1, 1] as 8-bit levels round((x + 1) 127.5), clamped to [0, 255]: what an image file holds."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def uint8_levels(images: Tensor) -> Tensor:
    """x in [-1, 1] -> as_uint8 -> back to [-1, 1]: the 8-bit image FID features see."""
    return as_uint8(images).to(images.dtype) / 127.5 - 1


@dataclass
class FeatureStatistics:
    """count, sum and sum of outer products of feature vectors in float64: the Gaussian fit, mergeable exactly."""

    count: int
    total: Tensor
    outer: Tensor

    @classmethod
    def of(cls, features: Tensor) -> "FeatureStatistics":
        features = features.detach().double().cpu().flatten(1)
        return cls(len(features), features.sum(0), features.T @ features)

    @classmethod
    def zeros(cls, dim: int) -> "FeatureStatistics":
        """The statistics of no features: what a process without a share contributes to `gathered`."""
        return cls(0, torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64))

    def merged(self, other: "FeatureStatistics") -> "FeatureStatistics":
        return FeatureStatistics(self.count + other.count, self.total + other.total, self.outer + other.outer)

    def gathered(self, state: PartialState) -> "FeatureStatistics":
        """The statistics of every process's features together: float64 sums, reduced across processes."""
        if state.num_processes == 1:
            return self
        packed = torch.cat([torch.tensor([float(self.count)], dtype=torch.float64), self.total, self.outer.flatten()])
        packed = reduce(packed.to(state.device), reduction="sum").cpu()
        dim = len(self.total)
        return FeatureStatistics(int(packed[0].item()), packed[1 : dim + 1], packed[dim + 1 :].reshape(dim, dim))

    def mean_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        """The sample mean and the (n - 1)-normalised sample covariance."""
        if self.count < 2:
            raise GenkitError(f"a Frechet distance needs at least 2 feature vectors a side, got {self.count}")
        mean = self.total / self.count
        covariance = (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)
        return mean.numpy(), covariance.numpy()


def frechet_from_statistics(a: FeatureStatistics, b: FeatureStatistics) -> float:
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)) of two Gaussian fits."""
    (mean_a, covariance_a), (mean_b, covariance_b) = a.mean_covariance(), b.mean_covariance()
    # C_a C_b is similar to a PSD matrix, so its square root has a real trace; round-off adds tiny imaginary parts.
    with warnings.catch_warnings():
        # Dead ReLU features (zero variance) make both covariances singular; the square root is still well defined.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(covariance_a @ covariance_b).real
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(covariance_a + covariance_b - 2 * root))


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    """The Frechet distance between the Gaussians fitted to two feature sets [N, D]."""
    return frechet_from_statistics(FeatureStatistics.of(features_a), FeatureStatistics.of(features_b))
