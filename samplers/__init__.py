"""ODE samplers over any velocity field `field(x, t) -> dx/dt`, in the style of k-diffusion."""

from samplers.amed import AMEDPredictor, amed, amed_plugin
from samplers.errors import SamplerError
from samplers.reference import reference
from samplers.sample import BASELINES, EVALUATIONS_PER_STEP, SOLVERS, CountingField, sample, solver_nfe
from samplers.schedules import SCHEDULES, karras, logsnr, time_uniform, uniform
from samplers.solvers import dpm_solver_2, dpmpp_2m, euler, heun, ipndm

__all__ = [
    "BASELINES",
    "AMEDPredictor",
    "EVALUATIONS_PER_STEP",
    "SCHEDULES",
    "SOLVERS",
    "CountingField",
    "amed",
    "amed_plugin",
    "SamplerError",
    "dpm_solver_2",
    "dpmpp_2m",
    "euler",
    "heun",
    "ipndm",
    "karras",
    "logsnr",
    "reference",
    "sample",
    "solver_nfe",
    "time_uniform",
    "uniform",
]
