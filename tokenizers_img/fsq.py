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


# The rounding constants are tiled this many times so that each elementwise op runs over rows of many vectors: over
# rows of len(levels) values, as a channels-last tensor gives them, the loop overhead costs more than the arithmetic.
TILE = 64


class RoundedTanh(torch.autograd.Function):
    """(codes, indices) of rows of whole vectors: step = rounding(tanh(z + shift) scale + bias) [- h if symmetric],
    code = step / h, with the straight-through gradient d code / dz = scale (1 - tanh^2) / h (docs/fsq.md §1.2).

    One fused op instead of autograd's chain of small ones: on the small tensors of a tokenizer the chain's per-op
    overhead and allocations are the cost. Backward repeats autograd's arithmetic op for op (tanh_backward included),
    so gradients equal the unfused formula's bit for bit.
    """

    @staticmethod
    def forward(ctx, rows, fsq):
        shift, scale, bias, half_width = fsq.tiled[:, : rows.shape[-1]]
        y = (rows + shift).tanh_()  # in place wherever a new tensor is not needed: allocations are part of the cost
        steps = (y * scale).add_(bias)
        steps = fsq.rounding(steps, out=steps)
        if fsq.symmetric:
            steps.sub_(half_width)
        # index = sum_i (step_i + h_i) basis_i = steps . basis + sum_i h_i basis_i: a float matrix-vector product,
        # exact while partial sums stay below 2^24 in float32 (else float64, see FSQ.index_dtype).
        vectors = steps.view(-1, len(fsq.levels)).to(fsq.index_dtype)
        indices = (vectors @ fsq.basis.to(fsq.index_dtype)).add_(fsq.index_offset).long()
        ctx.save_for_backward(y, scale, half_width)
        ctx.mark_non_differentiable(indices)
        return steps.div_(half_width), indices

    @staticmethod
    def backward(ctx, grad_codes, grad_indices):
        y, scale, half_width = ctx.saved_tensors
        slope = (grad_codes / half_width).mul_(scale)
        return torch.ops.aten.tanh_backward.grad_input(slope, y, grad_input=slope), None


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
        if symmetric:  # digit k = floor((L - 1)(tanh z + 1) / 2 + 1/2), step k - h
            half_width = (level_tensor - 1) / 2
            shift, scale, bias = torch.zeros_like(half_width), half_width, half_width + 0.5
        else:  # step = round(f(z)), f the reference bound
            half_width = level_tensor // 2
            scale = (level_tensor - 1) * (1 + BOUND_EPS) / 2
            offset = (level_tensor % 2 == 0).float() / 2
            shift, bias = torch.atanh(offset / scale), -offset
        # Constants, not state: rebuilt from `levels`, so kept out of the state dict.
        constants = {"levels": level_tensor, "half_width": half_width, "shift": shift, "scale": scale, "bias": bias}
        constants["basis"] = torch.cumprod(torch.tensor([1, *levels[:-1]]), dim=0)
        constants["tiled"] = torch.stack([shift, scale, bias, half_width]).repeat(1, TILE)
        for name, value in constants.items():
            self.register_buffer(name, value, persistent=False)
        self.rounding = torch.floor if symmetric else torch.round
        # Integer indices cost several times more on a tokenizer's small tensors; floats are exact up to 2^24 codes.
        self.index_dtype = torch.float32 if math.prod(levels) <= 2**24 else torch.float64
        self.index_offset = float(half_width.double() @ constants["basis"].double())

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
        Symmetric grid: (L-1)(tanh z + 1)/2 + 1/2, whose floor is the digit.
        """
        return torch.tanh(z + self.shift) * self.scale + self.bias

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(codes, indices) of z (..., len(levels)): step = round(f(z)), code = step / floor(L/2), index of the digits.

        Symmetric: digit k = floor((L-1)(tanh z + 1)/2 + 1/2) in {0..L-1}, step = k - h, code = (k - h)/h.
        The gradient is straight-through: d code / dz = f'(z) / h. A step is an exact small integer, so codes
        match indices_to_codes bit for bit; step + h is the digit of the index.
        """
        vectors = z.numel() // z.shape[-1]
        codes, indices = RoundedTanh.apply(z.reshape(-1, math.gcd(vectors, TILE) * z.shape[-1]), self)
        return codes.view(z.shape), indices.view(z.shape[:-1])

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

    def snap(self, latents: Tensor) -> Tensor:
        """The nearest code of each latent vector (channels-last, ..., dim), per channel: digit k = round(z h + h)
        clamped to {0..L-1}, code (k - h) / h. Without projections only, where the codes are the latents."""
        if self.project_out is not None:
            raise ValueError("an FSQ with projections (dim != len(levels) * num_codebooks) has no grid to snap to")
        z = at_least_float32(latents).unflatten(-1, (self.num_codebooks, len(self.levels)))
        digits = (
            (z * self.half_width + self.half_width)
            .round()
            .clamp(min=torch.zeros_like(self.levels), max=self.levels - 1)
        )
        return ((digits - self.half_width) / self.half_width).flatten(-2).to(latents.dtype)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(quantized in x's layout and dtype, indices [x's shape without channels (, num_codebooks)], 0)."""
        require_channels(x, self.dim, "FSQ")
        z = channels_last(x)
        if self.project_in is not None:
            z = self.project_in(z)
        z = z.unflatten(-1, (self.num_codebooks, len(self.levels)))
        # Rounding in bf16/fp16 can land in the wrong bin (docs/fsq.md §4): quantize in fp32 whatever autocast says.
        with torch.autocast(device_type=z.device.type, enabled=False):
            codes, indices = self.quantize(at_least_float32(z))
        quantized = codes.flatten(-2)
        if self.project_out is not None:
            quantized = self.project_out(quantized)
        if self.num_codebooks == 1:
            indices = indices.squeeze(-1)
        aux_loss = torch.zeros((), device=x.device)
        return like_input(quantized.to(x.dtype), x), indices, aux_loss
