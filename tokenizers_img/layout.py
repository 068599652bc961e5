"""The quantizers' input convention: a 4-D tensor is an image (B, C, H, W); any other rank is channels-last (..., C)."""

from torch import Tensor


def channels_last(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H, W, C); any other rank is returned as it is."""
    return x.permute(0, 2, 3, 1) if x.ndim == 4 else x


def like_input(y: Tensor, x: Tensor) -> Tensor:
    """A channels-last result y in the layout of the input x: back to (B, C, H, W) when x is an image."""
    return y.permute(0, 3, 1, 2) if x.ndim == 4 else y


def require_channels(x: Tensor, dim: int, quantizer: str) -> None:
    """The channel count (dim 1 of an image, else the last dim) must be the quantizer's input width."""
    if x.ndim == 0 or channels_last(x).shape[-1] != dim:
        raise ValueError(
            f"{quantizer} expects {dim} channels (dim 1 of a 4-D image, else the last dim), got shape "
            f"{tuple(x.shape)}; reshape the input or build the quantizer with a matching dim"
        )
