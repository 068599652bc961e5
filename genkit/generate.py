"""`genkit sample`: draw samples from a trained velocity model with any solver at an exact NFE.

Sample i always starts from the noise of generator seed (seed, i), so a sample count split over any
number of processes gives the same samples, gathered back in order.
"""

from pathlib import Path

import matplotlib.pyplot as plt
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from safetensors.torch import save_file
from torch import Tensor, nn
from torchvision.utils import save_image

import samplers
from genkit.config import load_config
from genkit.data import data_shape
from genkit.errors import GenkitError
from genkit.fields import flow_run_id, model_folder
from genkit.tracking import image_grid
from genkit.train.amed import load_predictor
from genkit.train.flow import load_velocity_model
from genkit.velocity import RectifiedAsEDM

SIGMA_SPACE_SOLVERS = ("dpm_solver_2", "dpmpp_2m")
SIGMA_MAX = 80.0


def initial_noise(indices: list[int], shape: tuple[int, ...], seed: int) -> Tensor:
    """z_i ~ N(0, I) from generator seed * 1_000_003 + i: each sample's noise depends on (seed, i) only."""
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + i)) for i in indices]
    return torch.stack(noise) if noise else torch.empty(0, *shape)


def solve(
    model: nn.Module, noise: Tensor, solver: str, nfe: int, schedule: str, solver_opts: dict | None = None
) -> Tensor:
    """x1 from z: in rectified time on the `uniform` schedule, else in EDM form from sigma_max (x~ = sigma_max z)."""
    if schedule == "uniform":
        if solver in SIGMA_SPACE_SOLVERS:
            raise GenkitError(f"{solver} works in sigma space; pick --schedule karras, logsnr or time_uniform")
        return samplers.sample(model, noise, solver, nfe, schedule="uniform")
    # x~ = x_t / t = x1 + sigma z with sigma = (1 - t) / t: at sigma_max the data term is negligible.
    edm = samplers.sample(RectifiedAsEDM(model), SIGMA_MAX * noise, solver, nfe, schedule, solver_opts=solver_opts)
    return edm / (1 + samplers.schedules.SIGMA_MIN)


def amed_options(run: Path, solver: str, nfe: int | None, schedule: str | None, predictor: Path) -> tuple:
    """(nfe, schedule, solver options) of an AMED predictor distilled for this run, checked against the request."""
    model, settings = load_predictor(predictor, flow_run_id(run))
    wanted = {
        "solver": (solver, settings.solver),
        "nfe": (nfe, settings.nfe),
        "schedule": (schedule, settings.schedule),
    }
    changed = [
        f"--{key} {asked} (it needs {needed})" for key, (asked, needed) in wanted.items() if asked not in (None, needed)
    ]
    if changed:
        raise GenkitError(
            f"the AMED predictor in {predictor} was distilled for {settings.solver} at NFE {settings.nfe} on the "
            f"{settings.schedule} schedule; drop or change {', '.join(changed)}"
        )
    return settings.nfe, settings.schedule, settings.solver_options(model)


@torch.no_grad()
def sample_run(
    run: Path, solver: str, nfe: int | None, schedule: str | None, num: int, seed: int, predictor: Path | None = None
) -> tuple[Tensor, Path]:
    """`num` samples of the run's model, identical for any process count; written under <model run>/samples/.

    AMED solvers need the `predictor` distilled for this run, which fixes the NFE and schedule; the others default
    to NFE 4 on the rectified `uniform` schedule.
    """
    state = PartialState()
    folder = model_folder(run)
    solver_opts = None
    if solver in samplers.BASELINES:
        if predictor is not None:
            raise GenkitError(f"--predictor is for the AMED solvers (amed, amed_plugin), not {solver}")
        nfe, schedule = nfe or 4, schedule or "uniform"
    elif predictor is None:
        raise GenkitError(f"--solver {solver} needs --predictor PATH, a predictor distilled for this run")
    else:
        nfe, schedule, solver_opts = amed_options(folder, solver, nfe, schedule, predictor)
        solver_opts["predictor"].to(state.device)
    shape = data_shape(load_config(folder / "config.yaml").data)
    model = load_velocity_model(folder / "model").to(state.device)
    with state.split_between_processes(list(range(num))) as indices:
        noise = initial_noise(indices, shape, seed).to(state.device)
        local = solve(model, noise, solver, nfe, schedule, solver_opts).cpu() if len(noise) else noise
    samples = torch.cat(gather_object([local]))
    stem = folder / "samples" / f"{solver}_nfe{nfe}_{schedule}_seed{seed}"
    if state.is_main_process:
        stem.parent.mkdir(parents=True, exist_ok=True)
        save_file({"samples": samples.contiguous()}, f"{stem}.safetensors")
        save_picture(samples, Path(f"{stem}.png"))
    state.wait_for_everyone()
    return samples, stem


def save_picture(samples: Tensor, path: Path) -> None:
    """Images as a grid, 2-D points as a scatter plot."""
    if samples.ndim == 4:
        save_image(image_grid(samples[:64]).float() / 255, path)
        return
    figure, axes = plt.subplots(figsize=(4, 4))
    axes.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.5)
    axes.set_aspect("equal")
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
