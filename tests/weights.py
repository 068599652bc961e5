"""Comparing trained weights: bit-identical replays, and one process against two to float64 round-off."""

import torch

ADAM_EPS = 1e-8


def float64_training_atol(lr: float, updates: int) -> float:
    """How far two float64 trainings that differ only in reduction order may drift after `updates` Adam steps.

    The order in which two ranks' gradients are summed changes a gradient entry by about 1e-16 of the gradient scale
    (1e-12 allowed for sums of up to 1e4 terms). Adam's step lr m / (sqrt(v) + eps) changes by at most lr / eps times
    that, 1e-7 for lr 1e-3, and the drifts add up over the updates. A wrong batch split, noise draw or reduction moves
    weights by about lr an update, four orders of magnitude more.
    """
    return updates * lr / ADAM_EPS * 1e-12


def assert_same_weights(first: dict, second: dict, atol: float = 0.0) -> None:
    """Equal state dicts: bit for bit when atol is 0, else within atol."""
    assert first.keys() == second.keys()
    for key in first:
        if atol == 0:
            assert torch.equal(first[key], second[key]), key
        else:
            torch.testing.assert_close(first[key], second[key], rtol=0, atol=atol, msg=key)
