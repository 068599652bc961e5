"""`genkit sample`: draw samples from a trained velocity model with any solver at an exact NFE.

Sample i always starts from the noise of generator seed (seed, i), so a sample count split over any
number of processes gives the same samples, gathered back in order.
"""

from pathlib import Path

import matplotlib.pyplot as plt
import torch
from accelerate.utils import gather_object
from safetensors.torch import save_file
from torch import Tensor, nn
from torchvision.utils import save_image

import samplers
from genkit.config import load_config
from genkit.data import data_shape
from genkit.errors import GenkitError
from genkit.fields import flow_run_id, model_folder
from genkit.processes import process_state
from genkit.tracking import image_grid
from genkit.train.amed import load_predictor
from genkit.train.flow import load_velocity_model
from genkit.train.gan import load_gan, potential_field
from genkit.velocity import GradientField, RectifiedAsEDM
from samplers.schedules import SIGMA_MAX, SIGMA_MIN

SIGMA_SPACE_SOLVERS = ("dpm_solver_2", "dpmpp_2m")


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
    return edm / (1 + SIGMA_MIN)


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


def refine(field: GradientField, x: Tensor, steps: int, step_size: float) -> Tensor:
    """`steps` Euler steps of size `step_size` along a critic's field: x <- x + step_size grad h(d(x))."""
    if steps == 0:
        return x
    return samplers.euler(field, x, torch.linspace(0, steps * step_size, steps + 1, dtype=x.dtype))


def gan_sampler(folder: Path, device: torch.device, seed: int, refine_steps: int, refine_step_size: float):
    """indices -> generator samples G(z_i), refined along the critic's field when refine_steps > 0."""
    generator, critic, settings = load_gan(folder / "model")
    generator, critic = generator.to(device), critic.to(device)
    field = potential_field(critic, settings)
    latent = (generator.config["latent_dim"],)

    def draw(indices: list[int]) -> Tensor:
        fake = generator(initial_noise(indices, latent, seed).to(device))
        return refine(field, fake, refine_steps, refine_step_size)

    return draw


@torch.no_grad()
def sample_run(
    run: Path,
    solver: str | None,
    nfe: int | None,
    schedule: str | None,
    num: int,
    seed: int,
    predictor: Path | None = None,
    refine_steps: int = 0,
    refine_step_size: float = 0.01,
) -> tuple[Tensor, Path]:
    """`num` samples of the run's model, identical for any process count; written under <model run>/samples/.

    Flow runs: AMED solvers need the `predictor` distilled for this run, which fixes the NFE and schedule; the
    others default to Euler at NFE 4 on the rectified `uniform` schedule. GAN runs: the generator, optionally
    refined by `refine_steps` Euler steps along its critic's field.
    """
    if num < 1:
        raise GenkitError(f"the number of samples must be at least 1, got {num}")
    state = process_state()
    folder = model_folder(run)
    config = load_config(folder / "config.yaml")
    if config.task == "gan":
        if (solver, nfe, schedule, predictor) != (None, None, None, None):
            raise GenkitError("a GAN run samples with its generator: drop --solver, --nfe, --schedule, --predictor")
        draw = gan_sampler(folder, state.device, seed, refine_steps, refine_step_size)
        name = f"gan_refine{refine_steps}x{refine_step_size:g}"
    else:
        if refine_steps:
            raise GenkitError("--refine-steps follows a GAN critic; this run holds a velocity model")
        draw, name = flow_sampler(folder, config, state.device, seed, solver or "euler", nfe, schedule, predictor)
    with state.split_between_processes(list(range(num))) as indices:
        local = draw(indices).cpu() if indices else torch.empty(0)
    samples = torch.cat(gather_object([local]))
    stem = folder / "samples" / f"{name}_seed{seed}"
    if state.is_main_process:
        stem.parent.mkdir(parents=True, exist_ok=True)
        save_file({"samples": samples.contiguous()}, f"{stem}.safetensors")
        save_picture(samples, Path(f"{stem}.png"))
    state.wait_for_everyone()
    return samples, stem


def flow_sampler(
    folder: Path,
    config,
    device: torch.device,
    seed: int,
    solver: str,
    nfe: int | None,
    schedule: str | None,
    predictor: Path | None,
):
    """(indices -> samples of the run's velocity model with `solver`, the name of the setting)."""
    solver_opts = None
    if solver in samplers.BASELINES:
        if predictor is not None:
            raise GenkitError(f"--predictor is for the AMED solvers (amed, amed_plugin), not {solver}")
        nfe, schedule = 4 if nfe is None else nfe, schedule or "uniform"
    elif predictor is None:
        raise GenkitError(f"--solver {solver} needs --predictor PATH, a predictor distilled for this run")
    else:
        nfe, schedule, solver_opts = amed_options(folder, solver, nfe, schedule, predictor)
        solver_opts["predictor"].to(device)
    shape = data_shape(config.data)
    model = load_velocity_model(folder / "model").to(device)

    def draw(indices: list[int]) -> Tensor:
        return solve(model, initial_noise(indices, shape, seed).to(device), solver, nfe, schedule, solver_opts)

    return draw, f"{solver}_nfe{nfe}_{schedule}"


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
