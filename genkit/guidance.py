"""Conditions and classifier-free guidance: a conditional model bound to per-sample conditions is a plain velocity.

A conditional velocity is `model(x, t, c)` with `c` [B, *condition_shape]: class labels (long, [B]) or embeddings
(float, [B, L, D]). The unconditional branch is the model at its null condition (a null class, K for labels
0..K-1, or a null embedding). Classifier-free guidance at weight w (Ho & Salimans 2022, eq. 6 read as a velocity):

    v_w(x, t) = v(x, t, null) + w (v(x, t, c) - v(x, t, null)),

so w = 0 is the unconditional field, w = 1 the conditional one and w > 1 extrapolates past it. Both branches run in
one forward pass on twice the batch; an evaluation is one call of the model, whatever its batch, so a guided solve
at NFE n spends n evaluations on 2B samples (w = 0 and w = 1 run one branch). With a guidance interval [lo, hi] in
sigma (Kynkaanniemi et al. 2024), w applies where lo <= sigma <= hi and the conditional field runs elsewhere.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from genkit.errors import GenkitError
from genkit.paths import broadcast_time

ConditionalVelocity = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Guidance:
    """The guidance weight w, and the sigma interval [lo, hi] where it applies (None: every sigma)."""

    weight: float = 1.0
    interval: tuple[float, float] | None = None

    def __post_init__(self):
        if not self.weight >= 0:
            raise GenkitError(f"the guidance weight must be >= 0 (1: the conditional model), got {self.weight}")
        if self.interval is not None and not 0 <= self.interval[0] <= self.interval[1]:
            raise GenkitError(f"the guidance interval must be [lo, hi] sigmas with 0 <= lo <= hi, got {self.interval}")

    @property
    def label(self) -> str:
        """How a bound field's id names this guidance: what a predictor or schedule made on it is made for."""
        interval = "" if self.interval is None else f", sigma in [{self.interval[0]:g}, {self.interval[1]:g}]"
        return f"guided(w={self.weight:g}{interval})"


def guidance_mismatch(made_for: str, field_id: str) -> str | None:
    """When two field ids differ only in their guidance, the sentence that says so (None otherwise)."""
    made_base, _, made_guidance = made_for.partition(" guided(")
    base, _, guidance = field_id.partition(" guided(")
    if made_base != base or made_guidance == guidance:
        return None
    name = lambda part: f"guided({part}" if part else "no guidance"  # noqa: E731
    return f"it was made for {name(made_guidance)}, not {name(guidance)}; make one for this guidance or use its own"


class Guided:
    """model(x, t, c) at per-sample conditions `condition`, guided with `guidance` against the `null` condition.

    `sigma(t)` maps the model's time to sigma, where the guidance interval is stated. The batch of x must be the
    batch of `condition`.
    """

    def __init__(
        self,
        model: ConditionalVelocity,
        condition: Tensor,
        null: Tensor,
        guidance: Guidance,
        sigma: Callable[[Tensor], Tensor],
    ):
        self.model, self.condition, self.null, self.guidance, self.sigma = model, condition, null, guidance, sigma
        self.evaluations = 0  # network evaluations a sample so far: one a call, two where both branches run

    def _weights(self, t: Tensor) -> Tensor:
        """w for each sample: the guidance weight inside the interval, 1 outside it."""
        weight = torch.full_like(t, self.guidance.weight)
        if self.guidance.interval is None:
            return weight
        lo, hi = self.guidance.interval
        sigma = self.sigma(t)
        return torch.where((sigma >= lo) & (sigma <= hi), weight, torch.ones_like(t))

    def _branches(self, x: Tensor, t: Tensor, run: Callable) -> tuple[Tensor, Tensor | None]:
        """run(x, t, c) on the batch of both branches (or the one branch w asks for); its output and the weights."""
        if len(x) != len(self.condition):
            raise GenkitError(
                f"the field is bound to {len(self.condition)} conditions but was called on {len(x)} samples; bind "
                "one condition a sample"
            )
        condition = self.condition.to(x.device)
        null = self.null.to(x.device, condition.dtype).expand_as(condition)
        weights = self._weights(t)
        if bool((weights == 1).all()):
            self.evaluations += 1
            return run(x, t, condition), None
        if bool((weights == 0).all()):
            self.evaluations += 1
            return run(x, t, null), None
        self.evaluations += 2
        both = run(torch.cat([x, x]), torch.cat([t, t]), torch.cat([condition, null]))
        return both, weights

    def _guide(self, both: Tensor, weights: Tensor | None, x: Tensor) -> Tensor:
        if weights is None:
            return both
        conditional, unconditional = both.chunk(2)
        return unconditional + broadcast_time(weights, x).to(x.dtype) * (conditional - unconditional)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        both, weights = self._branches(x, t, self.model)
        return self._guide(both, weights, x)

    def velocity_and_bottleneck(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The guided velocity and the conditional branch's bottleneck features (AMED predictors may read them)."""
        method = getattr(self.model, "velocity_and_bottleneck", None)
        if method is None:
            raise GenkitError(f"{type(self.model).__name__} has no velocity_and_bottleneck(x, t, c) method")
        outputs: list[Tensor] = []

        def run(x: Tensor, t: Tensor, c: Tensor) -> Tensor:
            velocity, features = method(x, t, c)
            outputs.append(features)
            return velocity

        both, weights = self._branches(x, t, run)
        return self._guide(both, weights, x), outputs[0][: len(x)]
