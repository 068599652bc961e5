"""genkit: train and compare generative models of images behind one velocity-field interface."""

from genkit.errors import GenkitError
from genkit.gaussian_mixture import GaussianMixtureField
from genkit.paths import EDMPath, RectifiedPath
from genkit.velocity import DenoiserField, DiffusersField, GradientField, RectifiedAsEDM, VelocityModel

__version__ = "0.1.0"

__all__ = [
    "DenoiserField",
    "DiffusersField",
    "EDMPath",
    "GaussianMixtureField",
    "GenkitError",
    "GradientField",
    "RectifiedAsEDM",
    "RectifiedPath",
    "VelocityModel",
]
