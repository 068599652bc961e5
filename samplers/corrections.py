"""A learned solver's correction table: what it adds to each step of a closed-form base solver.

A base single-evaluation solver (euler, ipndm, dpmpp_2m) takes step i from x_i to its own x_{i+1}^base; the learned
solver adds a linear combination of the whole history of states x_j and velocities d_j = field(x_j, t_j), j <= i:

    x_{i+1} = x_{i+1}^base + sum_{j <= i} ( velocity[i, j] (t_{i+1} - t_i) d_j + state[i, j] x_j ),

two lower-triangular N x N tables for N steps (N(N + 1) coefficients), as the generalised solvers of GS and
DS-Solver learn them. With both tables zero each step adds exact zeros, so the base solver is reproduced bit for bit
(and fitting starts there). The velocity terms are scaled by the step so that a coefficient means the same at any
step size; the state terms reach what the base step cannot, e.g. on data N(mu, s^2 I) the rectified-flow map
x_1 = mu + s z, which no multiple of the first velocity d_0 = mu - z gives from x_0 = z. docs/samplers.md §8.5.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from samplers.errors import SamplerError


@dataclass
class Corrections:
    """The `velocity` and `state` tables [N, N] of an N-step learned solver (entries above the diagonal unused)."""

    velocity: Tensor
    state: Tensor

    @classmethod
    def zeros(cls, steps: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> "Corrections":
        """The table that changes nothing: the base solver itself."""
        return cls(*(torch.zeros(steps, steps, dtype=dtype, device=device) for _ in range(2)))

    @property
    def steps(self) -> int:
        return self.velocity.shape[0]

    def check(self, steps: int) -> None:
        """A table for exactly `steps` steps, or a SamplerError."""
        shapes = {tuple(self.velocity.shape), tuple(self.state.shape)}
        if shapes != {(steps, steps)}:
            raise SamplerError(
                f"a correction table of shape {sorted(shapes)} does not fit a solve of {steps} steps; a learned solver "
                "runs on the timesteps it was learned with"
            )

    def correct(
        self, i: int, x_next: Tensor, timesteps: Tensor, states: list[Tensor], velocities: list[Tensor]
    ) -> Tensor:
        """Step i's base result plus its row of corrections on the history states[0..i], velocities[0..i]."""
        h = timesteps[i + 1] - timesteps[i]
        velocity, state = (table[i].to(x_next.device, x_next.dtype) for table in (self.velocity, self.state))
        for j in range(i + 1):
            x_next = x_next + velocity[j] * h * velocities[j] + state[j] * states[j]
        return x_next

    def tolist(self) -> dict:
        """The tables as nested lists of floats (each row up to its diagonal), for a JSON file."""
        rows = lambda table: [table[i, : i + 1].double().tolist() for i in range(self.steps)]  # noqa: E731
        return {"velocity": rows(self.velocity), "state": rows(self.state)}

    @classmethod
    def fromlist(cls, document: dict) -> "Corrections":
        """The tables `tolist` wrote (row i holds i + 1 numbers), or a SamplerError."""
        tables = []
        for key in ("velocity", "state"):
            rows = document.get(key) if isinstance(document, dict) else None
            if not isinstance(rows, list) or [len(r) if isinstance(r, list) else -1 for r in rows] != list(
                range(1, len(rows) + 1)
            ):
                raise SamplerError(f"a correction table needs lower-triangular rows under {key!r} (row i of i + 1)")
            table = torch.zeros(len(rows), len(rows), dtype=torch.float64)
            try:
                for i, row in enumerate(rows):
                    table[i, : i + 1] = torch.tensor(row, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                raise SamplerError(f"the correction table under {key!r} holds something other than numbers") from None
            if not table.isfinite().all():
                raise SamplerError(f"the correction table under {key!r} holds a NaN or an infinity")
            tables.append(table)
        if tables[0].shape != tables[1].shape:
            raise SamplerError("the velocity and state tables of a correction table have different sizes")
        return cls(*tables)
