"""The exact velocity of a Gaussian-mixture data distribution: ground truth for tests and benchmarks.

Data x1 ~ sum_k w_k N(mu_k, diag(s_k^2)). Under either path each component stays Gaussian, so the
velocity is a posterior-weighted sum of per-component affine maps, in closed form. Conditioned on its component k,
the posterior is one-hot on k: `conditional_edm(x, sigma, c)` and `conditional_rectified(x, t, c)` are the exact
velocities of component c, and c = K (the null class) is the whole mixture.
"""

import torch
from torch import Tensor

from genkit.errors import GenkitError
from genkit.paths import broadcast_time


class GaussianMixture:
    """sum_k w_k N(mu_k, diag(s_k^2)) with means [K, *shape], stds [K] (isotropic) or [K, *shape] (diagonal)."""

    def __init__(self, means: Tensor, stds: Tensor, weights: Tensor | None = None):
        num_components, self.shape = means.shape[0], tuple(means.shape[1:])
        weights = torch.ones(num_components) if weights is None else torch.as_tensor(weights)
        if stds.shape not in ((num_components,), means.shape):
            raise GenkitError(f"stds must have shape [{num_components}] or {list(means.shape)}, got {list(stds.shape)}")
        if weights.shape != (num_components,) or (weights <= 0).any():
            raise GenkitError(f"weights must be {num_components} positive numbers, got {weights.tolist()}")
        if (stds <= 0).any():
            raise GenkitError("component standard deviations must be positive")
        self.means = means.reshape(num_components, -1).to(torch.float64)
        self.variances = (stds.to(torch.float64).reshape(num_components, -1) ** 2).expand_as(self.means)
        self.log_weights = (weights / weights.sum()).to(torch.float64).log()

    @classmethod
    def random(
        cls, num_components: int, shape: tuple[int, ...], seed: int = 0, diagonal: bool = False
    ) -> "GaussianMixture":
        """Means uniform in [-0.8, 0.8], stds uniform in [0.05, 0.25], weights uniform in [0.5, 1.5], from `seed`."""
        generator = torch.Generator().manual_seed(seed)
        means = torch.rand((num_components, *shape), generator=generator, dtype=torch.float64) * 1.6 - 0.8
        std_shape = (num_components, *shape) if diagonal else (num_components,)
        stds = 0.05 + 0.2 * torch.rand(std_shape, generator=generator, dtype=torch.float64)
        weights = 0.5 + torch.rand(num_components, generator=generator, dtype=torch.float64)
        return cls(means, stds, weights)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n float64 draws from the mixture, shape [n, *shape]."""
        component = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        noise = torch.randn((n, self.means.shape[1]), generator=generator, dtype=torch.float64)
        return (self.means[component] + self.variances[component].sqrt() * noise).reshape(n, *self.shape)

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def _posterior(self, x: Tensor, locs: Tensor, variances: Tensor, component: Tensor | None = None) -> Tensor:
        """p(k | x) for x [B, D] under components N(locs [B, K, D], diag(variances [B, K, D])); one-hot on
        `component` [B] where it names one (< K), the mixture's posterior where it is K or not given."""
        log_density = -0.5 * (((x[:, None] - locs) ** 2) / variances + variances.log()).sum(-1)
        posterior = torch.softmax(self.log_weights.to(x) + log_density, dim=-1)
        if component is None:
            return posterior
        if ((component < 0) | (component > self.num_components)).any():
            raise GenkitError(f"mixture components are 0..{self.num_components - 1} (and {self.num_components}: none)")
        named = component < self.num_components
        one_hot = torch.nn.functional.one_hot(component.clamp(max=self.num_components - 1), self.num_components)
        return torch.where(named[:, None], one_hot.to(posterior), posterior)

    def _flat(self, x: Tensor) -> Tensor:
        if x.shape[1:].numel() != self.means.shape[1]:
            raise GenkitError(f"field expects samples of shape {self.shape}, got {tuple(x.shape[1:])}")
        return x.reshape(x.shape[0], -1)

    def edm(self, x: Tensor, sigma: Tensor) -> Tensor:
        """EDM velocity dx/dsigma = sum_k p(k | x) sigma / (s_k^2 + sigma^2) (x - mu_k); finite at sigma = 0."""
        return self.conditional_edm(x, sigma, None)

    def conditional_edm(self, x: Tensor, sigma: Tensor, component: Tensor | None) -> Tensor:
        """The EDM velocity given each sample's component [B] (K: none, the mixture)."""
        flat, means = self._flat(x), self.means.to(x)
        sigma = broadcast_time(sigma, flat)[:, :, None]
        variances = self.variances.to(x) + sigma**2
        posterior = self._posterior(flat, means.expand_as(variances), variances, component)
        per_component = sigma / variances * (flat[:, None] - means)
        return (posterior[..., None] * per_component).sum(1).reshape(x.shape)

    def denoiser(self, x: Tensor, sigma: Tensor) -> Tensor:
        """E[x1 | x] = sum_k p(k | x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k))."""
        flat, means = self._flat(x), self.means.to(x)
        sigma = broadcast_time(sigma, flat)[:, :, None]
        data_variances = self.variances.to(x)
        variances = data_variances + sigma**2
        posterior = self._posterior(flat, means.expand_as(variances), variances)
        per_component = means + data_variances / variances * (flat[:, None] - means)
        return (posterior[..., None] * per_component).sum(1).reshape(x.shape)

    def rectified(self, x: Tensor, t: Tensor) -> Tensor:
        """Rectified velocity E[x1 - x0 | x_t]: per component mu_k + (t s_k^2 - (1 - t)) / var_k (x - t mu_k).

        Component k of x_t = t x1 + (1 - t) x0 is N(t mu_k, var_k) with var_k = t^2 s_k^2 + (1 - t)^2.
        """
        return self.conditional_rectified(x, t, None)

    def conditional_rectified(self, x: Tensor, t: Tensor, component: Tensor | None) -> Tensor:
        """The rectified velocity given each sample's component [B] (K: none, the mixture)."""
        flat, means = self._flat(x), self.means.to(x)
        t = broadcast_time(t, flat)[:, :, None]
        data_variances = self.variances.to(x)
        variances = t**2 * data_variances + (1 - t) ** 2
        locs = t * means
        posterior = self._posterior(flat, locs, variances, component)
        per_component = means + (t * data_variances - (1 - t)) / variances * (flat[:, None] - locs)
        return (posterior[..., None] * per_component).sum(1).reshape(x.shape)
