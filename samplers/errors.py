"""The error a caller of the samplers can cause (a bad name, an impossible NFE, a field of the wrong form)."""


class SamplerError(ValueError):
    """A sampler was asked for something it cannot do; the message names the cause and the fix."""
