"""genkit: train and compare generative models of images behind one velocity-field interface."""

import importlib

__version__ = "0.1.0"

# Public names, imported on first use: `genkit --help` must not wait for torch.
_EXPORTS = {
    "DenoiserVelocity": "genkit.velocity",
    "DiffusersVelocity": "genkit.velocity",
    "EDMPath": "genkit.paths",
    "GaussianMixture": "genkit.gaussian_mixture",
    "GenkitError": "genkit.errors",
    "GradientVelocity": "genkit.velocity",
    "RectifiedAsEDM": "genkit.velocity",
    "RectifiedPath": "genkit.paths",
    "Velocity": "genkit.velocity",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'genkit' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
