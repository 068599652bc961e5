"""Image tokenizers: quantizers (VQ, FSQ) inside a convolutional autoencoder."""

from tokenizers_img.fsq import FSQ
from tokenizers_img.usage import CodebookUsage, codebook_usage
from tokenizers_img.vq import VectorQuantizer

__all__ = ["FSQ", "CodebookUsage", "VectorQuantizer", "codebook_usage"]
