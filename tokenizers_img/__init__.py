"""Image tokenizers: quantizers (VQ, FSQ) inside a convolutional autoencoder."""
