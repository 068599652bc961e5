"""`genkit sample`: samples of a trained run, written as safetensors and a picture, the same for any process count.

Sample i always starts from the noise of generator seed (seed, i), so a sample count split over any number of
processes gives the same samples, gathered back in order. A flow run is solved through its Field (genkit.fields):
any solver at an exact NFE, on its rectified `uniform` schedule or on a sigma schedule. A GAN run samples its
generator, optionally refined by Euler steps along its critic's field.
"""

from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from accelerate.utils import gather_object
from safetensors.torch import save_file
from torch import Tensor
from torchvision.utils import save_image

import samplers
from genkit.errors import GenkitError
from genkit.fields import load_flow_run
from genkit.models import load_gan
from genkit.predictors import load_predictor
from genkit.processes import process_state
from genkit.runs import model_folder, read_run_config
from genkit.tracking import image_grid
from genkit.velocity import GradientField

DEFAULT_SOLVER, DEFAULT_NFE = "euler", 4


def initial_noise(indices: list[int], shape: tuple[int, ...], seed: int) -> Tensor:
    """z_i ~ N(0, I) from generator seed * 1_000_003 + i: each sample's noise depends on (seed, i) only."""
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + i)) for i in indices]
    return torch.stack(noise) if noise else torch.empty(0, *shape)


def refine(field: GradientField, x: Tensor, steps: int, step_size: float) -> Tensor:
    """`steps` Euler steps of size `step_size` along a critic's field: x <- x + step_size grad h(d(x))."""
    if steps == 0:
        return x
    return samplers.euler(field, x, torch.linspace(0, steps * step_size, steps + 1, dtype=x.dtype))


def flow_sampler(
    folder: Path, device: torch.device, seed: int, solver: str, nfe: int | None, schedule: str | None, predictor
) -> tuple[Callable[[list[int]], Tensor], str]:
    """(indices -> samples of the run's velocity model with `solver`, the name of the setting)."""
    field = load_flow_run(folder, device)
    spec, solver_opts = samplers.solver_spec(solver), None
    if not spec.predictor:
        if predictor is not None:
            raise GenkitError(f"--predictor is for the AMED solvers (amed, amed_plugin), not {solver}")
        nfe, schedule = DEFAULT_NFE if nfe is None else nfe, schedule or field.default_schedule(solver)
    elif predictor is None:
        raise GenkitError(f"--solver {solver} needs --predictor PATH, a predictor distilled for this run")
    else:
        model = load_predictor(predictor, field.field_id).to(device)
        settings = model.tied_settings
        wanted = {
            "solver": (solver, settings.solver),
            "nfe": (nfe, settings.nfe),
            "schedule": (schedule, settings.schedule),
        }
        changed = [
            f"--{key} {asked} (it needs {needed})"
            for key, (asked, needed) in wanted.items()
            if asked not in (None, needed)
        ]
        if changed:
            raise GenkitError(
                f"the AMED predictor in {predictor} was distilled for {settings.solver} at NFE {settings.nfe} on the "
                f"{settings.schedule} schedule; drop or change {', '.join(changed)}"
            )
        nfe, schedule, solver_opts = settings.nfe, settings.schedule, settings.solver_options(model)
    field.form(schedule, solver)  # a schedule or solver that does not fit the field fails before any sampling

    def draw(indices: list[int]) -> Tensor:
        return field.solve(initial_noise(indices, field.shape, seed).to(device), solver, nfe, schedule, solver_opts)

    return draw, f"{solver}_nfe{nfe}_{schedule}"


def gan_sampler(
    folder: Path, device: torch.device, seed: int, refine_steps: int, refine_step_size: float
) -> Callable[[list[int]], Tensor]:
    """indices -> generator samples G(z_i), refined along the critic's field when refine_steps > 0."""
    gan = load_gan(folder / "model").to(device)
    field, latent = gan.critic_field(), (gan.generator.config.latent_dim,)

    def draw(indices: list[int]) -> Tensor:
        fake = gan.generator(initial_noise(indices, latent, seed).to(device))
        return refine(field, fake, refine_steps, refine_step_size)

    return draw


@torch.no_grad()
def draw_samples(
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
    others default to Euler at NFE 4 on the field's native schedule. GAN runs: the generator, optionally
    refined by `refine_steps` Euler steps along its critic's field.
    """
    if num < 1:
        raise GenkitError(f"the number of samples must be at least 1, got {num}")
    state = process_state()
    folder = model_folder(run)
    if read_run_config(folder)["task"] == "gan":
        if (solver, nfe, schedule, predictor) != (None, None, None, None):
            raise GenkitError("a GAN run samples with its generator: drop --solver, --nfe, --schedule, --predictor")
        draw = gan_sampler(folder, state.device, seed, refine_steps, refine_step_size)
        name = f"gan_refine{refine_steps}x{refine_step_size:g}"
    else:
        if refine_steps:
            raise GenkitError("--refine-steps follows a GAN critic; this run holds a velocity model")
        draw, name = flow_sampler(folder, state.device, seed, solver or DEFAULT_SOLVER, nfe, schedule, predictor)
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
