"""The adversarial terms of a VQGAN-style tokenizer (docs/tokenizer_losses.md): discriminator and generator losses on
patch logits, and VQGAN's adaptive weight (Esser et al. 2021, eq. 7)."""

import torch
import torch.nn.functional as F
from torch import Tensor

from tokenizers_img.precision import at_least_float32

ADVERSARIAL_LOSSES = ("hinge", "non_saturating")
# Keeps the adaptive weight finite when the generator's gradient vanishes (taming's value; the paper writes 1e-6).
ADAPTIVE_EPS = 1e-4


def discriminator_loss(real: Tensor, fake: Tensor, kind: str) -> Tensor:
    """hinge: (E relu(1 - D(x)) + E relu(1 + D(x_rec))) / 2; non_saturating: the same with softplus(-D), softplus(D).

    Means over every patch logit; softplus(-d) = -log sigmoid(d) is the cross-entropy of calling x real.
    """
    if kind == "hinge":
        return (F.relu(1 - real).mean() + F.relu(1 + fake).mean()) / 2
    return (F.softplus(-real).mean() + F.softplus(fake).mean()) / 2


def generator_loss(fake: Tensor, kind: str) -> Tensor:
    """hinge: -E D(x_rec); non_saturating: E softplus(-D(x_rec)) = -E log sigmoid D(x_rec)."""
    if kind == "hinge":
        return -fake.mean()
    return F.softplus(-fake).mean()


def adaptive_weight(
    reconstruction_loss: Tensor, adversarial_loss: Tensor, last_layer: Tensor, maximum: float
) -> Tensor:
    """lambda = ||grad_W L_rec|| / (||grad_W L_G|| + 1e-4) at the decoder's last weight W, clamped to [0, maximum].

    Detached: it scales the adversarial term so that its gradient at the output layer is as large as the
    reconstruction's, and is not itself trained. Both graphs are kept for the backward that follows.
    """
    (reconstruction_grad,) = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)
    (adversarial_grad,) = torch.autograd.grad(adversarial_loss, last_layer, retain_graph=True)
    weight = at_least_float32(reconstruction_grad).norm() / (at_least_float32(adversarial_grad).norm() + ADAPTIVE_EPS)
    return weight.clamp(0, maximum).detach()
