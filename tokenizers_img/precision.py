"""Rounding, distances and losses run in at least float32: half precision lands in the wrong bin or loses the sum.

float64 stays float64, so a float64 model (exact comparisons, reference runs) computes in float64 throughout.
"""

import torch
from torch import Tensor


def at_least_float32(x: Tensor) -> Tensor:
    """x in float32 if it is in a half-precision type, else unchanged (float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
