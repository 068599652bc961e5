"""Straightness, sliced Wasserstein, energy distance and mode coverage against closed forms and float64 references."""

import math

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats
import torch
from pytorch_fid.fid_score import calculate_frechet_distance

from genkit.data import DataConfig, build_dataset, validation_samples
from genkit.errors import GenkitError
from genkit.features import digit_extractor
from genkit.metrics import energy_distance, frechet_distance, mode_coverage, sliced_wasserstein, ssim, straightness
from genkit.toys import EIGHT_GAUSSIAN_CENTRES, toy_mixture
from samplers import euler, uniform


def normal(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def straightness_by_definition(field, z0, nfe):
    """A plain Euler loop that stores every velocity: mean_i mean_n ||(Z1 - Z0) - v(Z_i, t_i)||^2."""
    z, velocities = z0, []
    for i in range(nfe):
        velocities.append(field(z, torch.full((len(z),), i / nfe, dtype=z.dtype)))
        z = z + velocities[-1] / nfe
    return torch.stack([((z - z0) - v).flatten(1).pow(2).sum(1).mean() for v in velocities]).mean().item()


def test_straightness_of_a_deterministic_affine_coupling_is_zero():
    # X1 = 2 X0 + 1: X_t = (1 + t) X0 + t moves at X0 + 1 = (x + 1) / (1 + t), constant along each path.
    def field(x, t):
        return (x + 1) / (1 + t[:, None])

    z0 = normal(512, 1)
    assert torch.allclose(euler(field, z0, uniform(2)), 2 * z0 + 1, atol=1e-14)  # one Euler step is exact
    for nfe in (1, 5, 100):
        assert straightness(field, z0, nfe) < 1e-24


def test_straightness_of_a_matrix_coupling_is_zero():
    # X1 = A X0 + b: X_t = M_t X0 + t b with M_t = (1 - t) I + t A (invertible: A's eigenvalues are 1.5 and 0.5),
    # and dX_t/dt = (A - I) X0 + b with X0 = M_t^-1 (x - t b).
    a, b = torch.tensor([[1.5, 0.5], [0.0, 0.5]], dtype=torch.float64), torch.tensor([1.0, -2.0], dtype=torch.float64)

    def field(x, t):
        m_t = (1 - t)[:, None, None] * torch.eye(2, dtype=x.dtype) + t[:, None, None] * a
        x0 = torch.linalg.solve(m_t, (x - t[:, None] * b)[..., None])[..., 0]
        return x0 @ (a - torch.eye(2, dtype=x.dtype)).T + b

    z0 = normal(256, 2)
    assert torch.allclose(euler(field, z0, uniform(2)), z0 @ a.T + b, atol=1e-12)
    assert straightness(field, z0, 20) < 1e-24


def test_straightness_of_a_rotation_matches_its_closed_forms():
    # v(x, t) = theta J x turns the plane by theta over t in [0, 1]. As complex numbers z, one Euler step multiplies
    # by q = 1 + i theta / N, so v_i = i theta q^i z0 and Z1 - Z0 = (q^N - 1) z0: the discrete
    # S_N = |z0|^2 (theta^2 mean_i |q|^2i - |q^N - 1|^2). The exact flow gives S = |z0|^2 (theta^2 - 2 (1 - cos theta)).
    theta = math.pi / 2
    rotation = theta * torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)

    def field(x, t):
        return x @ rotation.T

    z0 = normal(256, 2)
    mean_square = z0.pow(2).sum(1).mean().item()
    values = {}
    for nfe in (1, 10, 200):
        q = complex(1, theta / nfe)
        discrete = theta**2 * np.mean([abs(q) ** (2 * i) for i in range(nfe)]) - abs(q**nfe - 1) ** 2
        values[nfe] = straightness(field, z0, nfe)
        assert values[nfe] == pytest.approx(mean_square * discrete, rel=1e-10)
    assert values[1] < 1e-24  # one step is a straight line by construction
    # Euler's S_N approaches the exact flow's S at first order: 0.6% above it at N = 200.
    continuous = mean_square * (theta**2 - 2 * (1 - math.cos(theta)))
    assert values[200] == pytest.approx(continuous, rel=1e-2) and values[10] > values[200] > continuous


def test_straightness_flattens_image_shaped_samples():
    # v = x on [B, C, H, W]: Euler gives v_i = (1 + 1/N)^i z0, so S_N = |z0|^2 (mean_i r^2i - (r^N - 1)^2), r = 1 + 1/N.
    def field(x, t):
        return x

    z0, nfe = normal(64, 3, 4, 4), 20
    r = 1 + 1 / nfe
    expected = z0.flatten(1).pow(2).sum(1).mean().item() * (
        np.mean([r ** (2 * i) for i in range(nfe)]) - (r**nfe - 1) ** 2
    )
    assert straightness(field, z0, nfe) == pytest.approx(expected, rel=1e-10)
    assert straightness(field, z0.float(), nfe) == pytest.approx(expected, rel=1e-5)


def test_one_rectified_flow_of_the_independent_coupling_is_curved():
    field = toy_mixture()
    z0 = normal(1000, 2)
    value = straightness(field.rectified, z0, 50)
    assert value == pytest.approx(straightness_by_definition(field.rectified, z0, 50), rel=1e-9)
    # Law(Z_t) = Law(X_t) and E||v*||^2 <= E||X1 - X0||^2 bound S by E||X1 - X0||^2 for independent X0, X1.
    x1 = field.sample(2000, torch.Generator().manual_seed(1))
    coupling_cost = (x1 - normal(2000, 2, seed=2)).pow(2).sum(1).mean().item()
    assert 0.5 < value < coupling_cost


def test_sliced_wasserstein_identical_and_shifted_sets():
    x = normal(500, 3)
    assert sliced_wasserstein(x, x) == 0
    assert sliced_wasserstein(x, x[torch.randperm(500)]) == 0
    # In 1-D the directions are +-1 and sorting matches every point with its own shift: exactly |c|.
    line = normal(300, 1)
    assert sliced_wasserstein(line, line - 0.7) == pytest.approx(0.7, rel=1e-12)
    # In D dims each projection's W_2^2 is (theta . c)^2, and E[(theta . c)^2] = ||c||^2 / D for theta uniform on the
    # sphere. In 3-D, theta . c_hat is uniform on [-1, 1]: 10^4 projections estimate SW to 0.5% (one std).
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert sliced_wasserstein(x[:100], x[:100] + c, projections=10_000) == pytest.approx(
        c.norm().item() / math.sqrt(3), rel=0.02
    )


def test_sliced_wasserstein_matches_sorted_matching_in_1d_and_flattens():
    x, y = normal(400, 1), normal(400, 1, seed=1) * 2 + 0.3
    reference = np.sqrt(np.mean((np.sort(x.numpy()[:, 0]) - np.sort(y.numpy()[:, 0])) ** 2))
    assert sliced_wasserstein(x, y) == pytest.approx(reference, rel=1e-12)
    images, other = normal(50, 1, 2, 2), normal(50, 1, 2, 2, seed=3)
    assert sliced_wasserstein(images, other, seed=5) == sliced_wasserstein(images.flatten(1), other.flatten(1), seed=5)
    assert sliced_wasserstein(images, other, seed=5) != sliced_wasserstein(images, other, seed=6)
    with pytest.raises(GenkitError, match="equal-size sets, got 50 and 49"):
        sliced_wasserstein(images, other[:49])


def test_energy_distance_against_scipy():
    x, y = normal(300, 2), normal(200, 2, seed=1) + torch.tensor([0.5, 0.0], dtype=torch.float64)
    xn, yn = x.numpy(), y.numpy()
    cdist = scipy.spatial.distance.cdist
    reference = 2 * cdist(xn, yn).mean() - cdist(xn, xn).mean() - cdist(yn, yn).mean()
    assert energy_distance(x, y) == pytest.approx(reference, rel=1e-12)
    assert energy_distance(x.float(), y.float()) == pytest.approx(reference, rel=1e-5)
    # In 1-D, scipy's energy_distance is the square root of the same V-statistic.
    line, other = normal(100, 1), normal(150, 1, seed=2) * 1.5
    assert energy_distance(line, other) == pytest.approx(
        scipy.stats.energy_distance(line.numpy()[:, 0], other.numpy()[:, 0]) ** 2, rel=1e-10
    )


def test_energy_distance_is_zero_for_identical_sets_and_grows_with_the_shift():
    x, y = normal(400, 3), normal(400, 3, seed=1)
    assert energy_distance(x, x) == pytest.approx(0, abs=1e-12)
    distances = [energy_distance(x, y + shift) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert 0 < distances[0] < distances[1] < distances[2] < distances[3]


def test_mode_coverage_on_constructed_samples():
    offsets = 0.05 * normal(10, 2).float()
    # 10 samples at each of modes 0-5, 2 at mode 6, none at mode 7, and 8 at the origin, 2 from every mode.
    samples = torch.cat(
        [*(centre + offsets for centre in EIGHT_GAUSSIAN_CENTRES[:6]), EIGHT_GAUSSIAN_CENTRES[6] + offsets[:2]]
        + [torch.zeros(8, 2)]
    )
    assert mode_coverage(samples, EIGHT_GAUSSIAN_CENTRES, radius=0.5) == pytest.approx((7 / 8, 62 / 70))
    assert mode_coverage(samples, EIGHT_GAUSSIAN_CENTRES, radius=0.5, min_count=3) == pytest.approx((6 / 8, 62 / 70))
    # A wide radius makes every sample high quality, but the origin's samples count for one nearest mode only.
    assert mode_coverage(samples, EIGHT_GAUSSIAN_CENTRES, radius=2.5) == pytest.approx((7 / 8, 1.0))
    assert mode_coverage(samples, EIGHT_GAUSSIAN_CENTRES, radius=0.01) == pytest.approx((0.0, 0.0), abs=0.02)


def with_moments(mean: np.ndarray, covariance: np.ndarray, n: int, seed: int) -> torch.Tensor:
    """n points whose sample mean and (n - 1)-normalised covariance are exactly `mean` and `covariance`."""
    points = np.random.default_rng(seed).standard_normal((n, len(mean)))
    points -= points.mean(0)
    whitened = points @ np.linalg.inv(np.linalg.cholesky(np.cov(points, rowvar=False)).T)
    return torch.from_numpy(whitened @ np.linalg.cholesky(covariance).T + mean)


def test_frechet_distance_is_the_closed_form_between_gaussians():
    """Diagonal covariances: FD = ||mu_a - mu_b||^2 + sum (sigma_a - sigma_b)^2; symmetric; 0 on itself."""
    mean_a, mean_b = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 0.0])
    std_a, std_b = np.array([1.0, 2.0, 0.5]), np.array([0.3, 2.0, 1.5])
    a = with_moments(mean_a, np.diag(std_a**2), 400, seed=0)
    b = with_moments(mean_b, np.diag(std_b**2), 300, seed=1)
    expected = ((mean_a - mean_b) ** 2).sum() + ((std_a - std_b) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_ssim_is_one_on_identical_images_and_falls_with_noise():
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    smooth = torch.nn.functional.avg_pool2d(images, 5, stride=1, padding=2)
    noise = torch.randn(smooth.shape, generator=torch.Generator().manual_seed(1))
    assert ssim(smooth, smooth) == pytest.approx(1.0)
    scores = [ssim((smooth + scale * noise).clamp(-1, 1), smooth) for scale in (0.05, 0.2, 0.8)]
    assert 1 > scores[0] > scores[1] > scores[2] > -1


def wang_ssim(a: np.ndarray, b: np.ndarray, data_range: float = 2.0) -> float:
    """SSIM of two single-channel images as Wang et al. (2004) define it, window by window."""
    taps = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)
    window = np.outer(taps, taps) / np.outer(taps, taps).sum()  # MATLAB's fspecial('gaussian', 11, 1.5)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    scores = []
    for top in range(a.shape[0] - 10):
        for left in range(a.shape[1] - 10):
            x, y = a[top : top + 11, left : left + 11], b[top : top + 11, left : left + 11]
            mean_x, mean_y = (window * x).sum(), (window * y).sum()
            var_x, var_y = (window * (x - mean_x) ** 2).sum(), (window * (y - mean_y) ** 2).sum()
            covariance = (window * (x - mean_x) * (y - mean_y)).sum()
            numerator = (2 * mean_x * mean_y + c1) * (2 * covariance + c2)
            scores.append(numerator / ((mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)))
    return float(np.mean(scores))


def test_ssim_is_wangs_gaussian_window_ssim():
    images = torch.rand(2, 3, 24, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1
    reference = torch.nn.functional.avg_pool2d(images, 3, stride=1, padding=1)
    pairs = zip(images.flatten(0, 1).numpy(), reference.flatten(0, 1).numpy(), strict=True)
    expected = np.mean([wang_ssim(x, y) for x, y in pairs])
    # Both are float64 sums of a few hundred terms: they agree to ~1e-15.
    assert ssim(images, reference) == pytest.approx(expected, rel=1e-10)


def independent_frechet(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """pytorch-fid's Frechet distance (its own formula, scipy's sqrtm) on the means and covariances of two sets."""
    a, b = features_a.double().numpy(), features_b.double().numpy()
    return calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def test_frechet_distance_equals_pytorch_fids_on_digit_classifier_features():
    """The same features of 300 val digits and of 300 train digits with noise: genkit's FD equals pytorch-fid's."""
    data = DataConfig(source="mnist5k", image_size=16)
    extractor = digit_extractor()
    real = extractor.features(validation_samples(data, 300))
    train = torch.stack([build_dataset(data, "train")[i] for i in range(300)])
    noisy = extractor.features(train + 0.3 * torch.randn(train.shape, generator=torch.Generator().manual_seed(0)))
    # Both are float64 formulas of the same statistics: they agree to round-off, far inside 1e-4 relative.
    assert frechet_distance(real, noisy) == pytest.approx(independent_frechet(real, noisy), rel=1e-4)
    assert frechet_distance(real, noisy) > 1.0  # not vacuous: the noise moves the features
