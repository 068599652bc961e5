"""Finite Scalar Quantization (Mentzer et al. 2023): bound each channel, round it, rescale to [-1, 1] (docs/fsq.md).

The codebook is implicit, the Cartesian product of the per-channel level sets; there is no codebook
parameter and no auxiliary loss. A code is handled through its per-channel digits k_i in {0..L_i-1}:
code_i = (k_i - h_i) / h_i, with h_i = floor(L_i / 2) (reference grid) or (L_i - 1) / 2 (symmetric grid).
"""

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tokenizers_img.layout import channels_last, like_input, require_channels
from tokenizers_img.precision import at_least_float32

# Paper Table 1 (docs/fsq.md §2): target codebook size -> levels.
LEVELS_FOR_CODEBOOK_SIZE = {
    2**8: (8, 6, 5),
    2**10: (8, 5, 5, 5),
    2**12: (7, 5, 5, 5, 5),
    2**14: (8, 8, 8, 6, 5),
    2**16: (8, 8, 8, 5, 5, 5),
}

# Widens the bound slightly so that tanh's open interval still reaches the outermost integers.
BOUND_EPS = 1e-3


def round_ste(x: Tensor) -> Tensor:
    """round(x) forward, identity backward: x + sg(round(x) - x)."""
    return x + (x.round() - x).detach()


def floor_ste(x: Tensor) -> Tensor:
    """floor(x) forward, identity backward: x + sg(floor(x) - x)."""
    return x + (x.floor() - x).detach()


class FSQ(nn.Module):
    """FSQ over len(levels) * num_codebooks channels; forward(x) -> (quantized, indices, aux_loss = 0).

    levels: L_i per channel of one codebook (each >= 3, or >= 2 with symmetric=True)
    dim: input width; when it differs from len(levels) * num_codebooks, Linear projections map in and out
    num_codebooks: groups of len(levels) channels quantized independently with the same levels
    symmetric: codes {-1, -1 + 2/(L-1), ..., 1} that include +-1 (arXiv 2411.19842) instead of the reference grid
    """

    def __init__(self, levels: Sequence[int], dim: int | None = None, num_codebooks: int = 1, symmetric: bool = False):
        super().__init__()
        levels = [int(level) for level in levels]
        if not levels or min(levels) < 2:
            raise ValueError(f"FSQ levels must be a non-empty list of integers >= 2, got {levels}")
        if not symmetric and min(levels) < 3:
            raise ValueError(
                f"FSQ levels {levels} contain 2, for which the reference bound gives the codes {{-1, 0}} and a "
                "saturated tanh at z = 0 (vanishing gradient); pass symmetric=True or use levels >= 3"
            )
        if num_codebooks < 1:
            raise ValueError(f"num_codebooks must be at least 1, got {num_codebooks}")
        self.symmetric = symmetric
        self.num_codebooks = num_codebooks
        code_dim = len(levels) * num_codebooks
        self.dim = code_dim if dim is None else dim
        if self.dim < 1:
            raise ValueError(f"FSQ dim must be positive, got {dim}")
        projected = self.dim != code_dim
        self.project_in = nn.Linear(self.dim, code_dim) if projected else None
        self.project_out = nn.Linear(code_dim, self.dim) if projected else None

        level_tensor = torch.tensor(levels, dtype=torch.float32)
        half_width = (level_tensor - 1) / 2 if symmetric else (level_tensor // 2)
        basis = torch.cumprod(torch.tensor([1, *levels[:-1]]), dim=0)
        # Constants, not state: rebuilt from `levels`, so kept out of the state dict.
        self.register_buffer("levels", level_tensor, persistent=False)
        self.register_buffer("half_width", half_width, persistent=False)
        self.register_buffer("basis", basis, persistent=False)

    @classmethod
    def from_codebook_size(cls, size: int, **kwargs) -> "FSQ":
        """FSQ with the paper's recommended levels for a codebook of about `size` codes (docs/fsq.md §2)."""
        if size not in LEVELS_FOR_CODEBOOK_SIZE:
            supported = ", ".join(f"2^{int(math.log2(s))}={s}" for s in LEVELS_FOR_CODEBOOK_SIZE)
            raise ValueError(f"no recommended FSQ levels for codebook size {size}; choose one of {supported}")
        return cls(LEVELS_FOR_CODEBOOK_SIZE[size], **kwargs)

    @property
    def codebook_size(self) -> int:
        """|C| = prod_i L_i codes per codebook."""
        return math.prod(int(level) for level in self.levels)

    def bound(self, z: Tensor) -> Tensor:
        """f(z) = tanh(z + shift) half_l - offset: the reference bound, f(0) = 0 exactly (docs/fsq.md §1.1).

        half_l = (L-1)(1+eps)/2, offset = 0.5 for even L else 0, shift = atanh(offset / half_l); f's range
        (-half_l - offset, half_l - offset) rounds onto the integers {-floor(L/2), ..., ceil(L/2) - 1}.
        """
        half_l = (self.levels - 1) * (1 + BOUND_EPS) / 2
        offset = (self.levels % 2 == 0).float() / 2
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def quantize(self, z: Tensor) -> Tensor:
        """Codes of z (..., len(levels)) with a straight-through gradient: round_ste(f(z)) / floor(L/2), or symmetric.

        Symmetric: digit k = floor((L-1)(tanh z + 1)/2 + 1/2) in {0..L-1} with a floor STE, code = (k - h)/h.
        """
        if self.symmetric:
            digits = floor_ste((self.levels - 1) * (torch.tanh(z) + 1) / 2 + 0.5)
        else:
            digits = round_ste(self.bound(z)) + self.half_width
        # (k - h) is an exact small number, so codes match indices_to_codes bit for bit.
        return (digits - self.half_width) / self.half_width

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """Mixed-radix index sum_i k_i basis_i of codes (..., len(levels)), k_i = code_i h_i + h_i."""
        digits = (at_least_float32(codes) * self.half_width + self.half_width).round().long()
        return (digits * self.basis).sum(-1)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Codes (..., len(levels)) of indices: k_i = floor(index / basis_i) mod L_i, code_i = (k_i - h_i) / h_i."""
        digits = (indices.long()[..., None] // self.basis) % self.levels.long()
        return (digits - self.half_width) / self.half_width

    def indices_to_latents(self, indices: Tensor) -> Tensor:
        """What forward returns for these indices, channels-last (..., dim): codes, merged codebooks, project_out."""
        if self.num_codebooks == 1:
            indices = indices[..., None]
        latents = self.indices_to_codes(indices).flatten(-2)
        return latents if self.project_out is None else self.project_out(latents)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(quantized in x's layout and dtype, indices [x's shape without channels (, num_codebooks)], 0)."""
        require_channels(x, self.dim, "FSQ")
        z = channels_last(x)
        if self.project_in is not None:
            z = self.project_in(z)
        z = z.unflatten(-1, (self.num_codebooks, len(self.levels)))
        # Rounding in bf16/fp16 can land in the wrong bin (docs/fsq.md §4): quantize in fp32 whatever autocast says.
        with torch.autocast(device_type=z.device.type, enabled=False):
            codes = self.quantize(at_least_float32(z))
            indices = self.codes_to_indices(codes)
        quantized = codes.flatten(-2)
        if self.project_out is not None:
            quantized = self.project_out(quantized)
        if self.num_codebooks == 1:
            indices = indices.squeeze(-1)
        aux_loss = torch.zeros((), device=x.device)
        return like_input(quantized.to(x.dtype), x), indices, aux_loss
