"""How much of a codebook a set of indices uses: fraction of codes used and perplexity (docs/vq.md §5)."""

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class CodebookUsage:
    """fraction_used = |{k : count_k > 0}| / K; perplexity = exp(-sum_k p_k log p_k), in [1, K]."""

    fraction_used: float
    perplexity: float


def codebook_usage(indices: Tensor, codebook_size: int) -> CodebookUsage:
    """Usage of the empirical code distribution p_k = count_k / N over all entries of `indices`."""
    if indices.numel() == 0:
        raise ValueError("codebook_usage needs at least one index; pass the indices of a non-empty batch")
    if indices.is_floating_point() or indices.min() < 0 or indices.max() >= codebook_size:
        raise ValueError(
            f"indices must be integers in [0, {codebook_size}); got {indices.dtype} in "
            f"[{indices.min().item()}, {indices.max().item()}]: pass the quantizer's own indices and codebook_size"
        )
    return usage_of_counts(torch.bincount(indices.flatten().long(), minlength=codebook_size))


def usage_of_counts(counts: Tensor) -> CodebookUsage:
    """Usage of a histogram of code counts [K] (merged over batches or processes by summing), p_k = count_k / N."""
    counts = counts.double()
    p = counts[counts > 0] / counts.sum()
    entropy = -(p * p.log()).sum()
    return CodebookUsage(fraction_used=len(p) / len(counts), perplexity=entropy.exp().item())
