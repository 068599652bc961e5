"""ODE samplers over any velocity field `field(x, t) -> dx/dt`, in the style of k-diffusion."""

from samplers.amed import AMEDPredictor, amed, amed_plugin
from samplers.corrections import Corrections
from samplers.errors import SamplerError
from samplers.reference import reference
from samplers.registry import BASELINES, CORRECTED, SOLVERS, SolverSpec, solver_spec
from samplers.schedules import SCHEDULES, ds_respaced, karras, logsnr, time_uniform, uniform
from samplers.solve import CountingVelocity, schedule_length, solve
from samplers.solvers import dpm_solver_2, dpmpp_2m, euler, heun, ipndm

__all__ = [
    "BASELINES",
    "AMEDPredictor",
    "CORRECTED",
    "Corrections",
    "SCHEDULES",
    "SOLVERS",
    "CountingVelocity",
    "SamplerError",
    "SolverSpec",
    "amed",
    "amed_plugin",
    "dpm_solver_2",
    "ds_respaced",
    "dpmpp_2m",
    "euler",
    "heun",
    "ipndm",
    "karras",
    "logsnr",
    "reference",
    "schedule_length",
    "solve",
    "solver_spec",
    "time_uniform",
    "uniform",
]
