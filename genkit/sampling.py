"""`genkit sample`: samples of a trained run, written for FID tools and as a picture, the same for any process count.

Sample i always starts from the noise of generator seed (seed, i), so a sample count split over any number of
processes gives the same samples, gathered back in order. They are drawn in batches of at most `batch_size` a
process, and batch k always holds samples [k batch_size, (k + 1) batch_size), so a sample is computed by the same
operations for any process count; with another batch size it differs at most by round-off, as matrix kernels are
picked by row count. A flow run is solved through its Field (genkit.fields): any solver at an exact NFE, on its
rectified `uniform` schedule or on a sigma schedule. A GAN run samples its generator, optionally refined by Euler
steps along its critic's field.

Outputs under <model run>/samples/<setting>_seed<seed>, always with a picture `<stem>.png` (a grid of the first 64
images, or a scatter plot of the points), by `output`:
- safetensors: `<stem>.safetensors`, float `samples` [N, *shape] as the model gives them, points or images (all
  held in memory until written);
- png: `<stem>/000000.png`, ...: one uint8 PNG per image, named by sample index, written batch by batch;
- npz: `<stem>.npz` with `arr_0` uint8 [N, H, W, C], streamed batch by batch: the layout of the ADM (guided-diffusion)
  evaluation suite and of clean-fid.
png and npz hold round((x + 1) 127.5) clamped to [0, 255] of images x in [-1, 1], and refuse points; with them the
memory of a run grows with its batch size, not with its sample count.
"""

import zipfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from PIL import Image
from safetensors.torch import save_file
from torch import Tensor
from torchvision.utils import save_image

import samplers
from genkit.data import data_shape
from genkit.errors import GenkitError
from genkit.fields import Field, load_flow_run
from genkit.files import atomic
from genkit.guidance import Guidance
from genkit.metrics import as_uint8
from genkit.models import load_gan
from genkit.noise import initial_noise
from genkit.predictors import load_distilled
from genkit.processes import process_state
from genkit.progress import progress
from genkit.runs import Run
from genkit.schedules.file import SavedSchedule, load_schedule, schedule_name
from genkit.tracking import image_grid
from genkit.velocity import GradientVelocity

DEFAULT_SOLVER, DEFAULT_NFE = "euler", 4
DEFAULT_BATCH_SIZE = 256
OUTPUTS = {"safetensors": ".safetensors", "png": "", "npz": ".npz"}  # --format: the suffix of <stem> it writes
PICTURE_SAMPLES = 64


def refine(field: GradientVelocity, x: Tensor, steps: int, step_size: float) -> Tensor:
    """`steps` Euler steps of size `step_size` along a critic's field: x <- x + step_size grad h(d(x))."""
    if steps == 0:
        return x
    return samplers.euler(field, x, torch.linspace(0, steps * step_size, steps + 1, dtype=x.dtype))


def conditions(field: Field, classes: int | str | None, seed: int) -> Callable[[list[int]], Tensor]:
    """indices -> their classes: all `classes` (an int), i mod K ("all"), or drawn as in the data (None)."""
    if classes is None:
        return lambda indices: field.draw_conditions(indices, seed)
    if classes == "all":
        return lambda indices: torch.tensor(indices) % field.conditioning.num_classes
    return lambda indices: torch.full((len(indices),), int(classes), dtype=torch.long)


def flow_sampler(
    run: Run,
    device: torch.device,
    seed: int,
    solver: str | None,
    nfe: int | None,
    schedule: str | None,
    predictor,
    classes: int | str | None = None,
    guidance: Guidance | None = None,
    snap: bool = False,
) -> tuple[Callable[[list[int]], Tensor], str]:
    """(indices -> samples of the run's velocity model with `solver`, the name of the setting).

    `schedule` is a schedule's name or the path of a schedule saved for this run's field (genkit.schedules.file),
    whose timesteps fix the NFE (a learned solver's also the solver, by default); a predictor brings its own
    schedule (genkit.predictors.load_distilled). A
    class-conditional model solves sample i at its class (`conditions`) with `guidance` (default w = 1). A latent
    flow's samples are decoded images (`snap`: its latents snapped to the nearest code first).
    """
    model = load_flow_run(run.folder, device, snap=snap)
    if model.conditioning is None:
        if classes is not None or guidance is not None:
            raise GenkitError(f"{run.folder} holds an unconditional model: drop --class, --classes and --guidance")
        field, bind = model, None
    else:
        bind = conditions(model, classes, seed)
        # Checked on sample 0's class, so a class out of range fails before any sampling.
        field = model.bind(bind([0]), guidance)
    if schedule is not None and schedule not in samplers.SCHEDULES:
        schedule = load_schedule(Path(schedule), field)
    # A learned solver runs its own base solver (Field.solve refuses another).
    learned = isinstance(schedule, SavedSchedule) and schedule.corrections is not None
    solver = solver or (schedule.solver if learned else DEFAULT_SOLVER)
    spec, solver_opts = samplers.solver_spec(solver), None
    if not spec.predictor:
        if predictor is not None:
            raise GenkitError(f"--predictor is for the AMED solvers (amed, amed_plugin), not {solver}")
        if isinstance(schedule, SavedSchedule) and nfe not in (None, schedule.nfe(solver)):
            raise GenkitError(
                f"the schedule {schedule.name} gives {solver} {schedule.nfe(solver)} evaluations, not --nfe {nfe}; "
                "drop --nfe"
            )
        schedule = schedule or field.default_schedule(solver)
        nfe = schedule.nfe(solver) if isinstance(schedule, SavedSchedule) else nfe or DEFAULT_NFE
    elif predictor is None:
        raise GenkitError(f"--solver {solver} needs --predictor PATH, a predictor distilled for this run")
    else:
        distilled = load_distilled(Path(predictor), field, device)
        settings = distilled.settings
        wanted = {"solver": (solver, settings.solver), "nfe": (nfe, distilled.nfe)}
        wanted["schedule"] = (schedule_name(schedule), schedule_name(distilled.schedule))
        changed = [
            f"--{key} {asked} (it needs {needed})"
            for key, (asked, needed) in wanted.items()
            if asked not in (None, needed)
        ]
        if changed:
            raise GenkitError(
                f"the AMED predictor in {predictor} was distilled for {settings.solver} at NFE {distilled.nfe} on the "
                f"{schedule_name(distilled.schedule)} schedule; drop or change {', '.join(changed)}"
            )
        nfe, schedule, solver_opts = distilled.nfe, distilled.schedule, distilled.solver_options
    field.form(schedule, solver)  # a schedule or solver that does not fit the field fails before any sampling

    def draw(indices: list[int]) -> Tensor:
        bound = field if bind is None else model.bind(bind(indices), guidance)
        return bound.solve(initial_noise(indices, field.shape, seed).to(device), solver, nfe, schedule, solver_opts)

    name = f"{solver}_nfe{nfe}_{schedule_name(schedule)}"
    if bind is not None:
        name += {None: "_classes_data", "all": "_classes_all"}.get(classes, f"_class{classes}")
        name += f"_w{field.guidance.weight:g}" + ("" if field.guidance.interval is None else "_interval")
    return draw, name


def gan_sampler(
    run: Run, device: torch.device, seed: int, refine_steps: int, refine_step_size: float
) -> Callable[[list[int]], Tensor]:
    """indices -> generator samples G(z_i), refined along the critic's field when refine_steps > 0."""
    gan = load_gan(run.model).to(device)
    field, latent = gan.critic_field(), (gan.generator.config.latent_dim,)

    def draw(indices: list[int]) -> Tensor:
        fake = gan.generator(initial_noise(indices, latent, seed).to(device))
        return refine(field, fake, refine_steps, refine_step_size)

    return draw


def sample_batches(
    draw: Callable[[list[int]], Tensor], num: int, batch_size: int, state: PartialState
) -> Iterator[Tensor]:
    """Samples 0..num-1 in batches of `batch_size`, yielded in order on every process.

    Batch k holds samples [k batch_size, (k + 1) batch_size) and process p draws batches p, p + P, ...: a sample is
    computed in the same batch, at the same row, whatever the process count.
    """
    batches = [list(range(start, min(start + batch_size, num))) for start in range(0, num, batch_size)]
    for first in range(0, len(batches), state.num_processes):
        mine = first + state.process_index
        local = draw(batches[mine]).cpu() if mine < len(batches) else torch.empty(0)
        yield from (part for part in gather_object([local]) if len(part))


def channels_last_uint8(images: Tensor) -> Tensor:
    """Images in [-1, 1] (N, C, H, W) as uint8 (N, H, W, C) (genkit.metrics.as_uint8)."""
    return as_uint8(images).permute(0, 2, 3, 1).contiguous()


@contextmanager
def safetensors_writer(path: Path) -> Iterator[Callable[[Tensor], None]]:
    """Batches kept in memory, then written as one float tensor `samples` [N, *shape]."""
    batches = []
    yield batches.append
    save_file({"samples": torch.cat(batches).contiguous()}, path)


@contextmanager
def png_writer(folder: Path, num: int) -> Iterator[Callable[[Tensor], None]]:
    """Image batches in sample order, each image written at once as <folder>/<index, zero-padded>.png (uint8)."""
    folder.mkdir(exist_ok=True)
    for stale in folder.glob("*.png"):  # FID tools read every image in the folder, a larger earlier run's too
        stale.unlink()
    width = max(6, len(str(num - 1)))
    names = (folder / f"{index:0{width}d}.png" for index in range(num))

    def write(batch: Tensor) -> None:
        for image in channels_last_uint8(batch).numpy():
            Image.fromarray(image.squeeze(2) if image.shape[2] == 1 else image).save(next(names))

    yield write


@contextmanager
def npz_writer(path: Path, num: int, shape: tuple[int, ...]) -> Iterator[Callable[[Tensor], None]]:
    """Image batches in sample order, streamed into an .npz whose arr_0 is uint8 [num, H, W, C] (as np.savez).

    The file appears only once complete.
    """
    channels, height, width = shape
    header = {"descr": "|u1", "fortran_order": False, "shape": (num, height, width, channels)}
    with (
        atomic(path) as partial,
        zipfile.ZipFile(partial, "w") as archive,
        archive.open("arr_0.npy", "w", force_zip64=True) as entry,
    ):
        np.lib.format.write_array_header_1_0(entry, header)
        yield lambda batch: entry.write(channels_last_uint8(batch).numpy().tobytes())


def sample_writer(
    output: str, path: Path, num: int, shape: tuple[int, ...]
) -> AbstractContextManager[Callable[[Tensor], None]]:
    """The writer of `output` (one of OUTPUTS) at `path`: a context giving a function that takes each batch."""
    if output == "png":
        return png_writer(path, num)
    if output == "npz":
        return npz_writer(path, num, shape)
    return safetensors_writer(path)


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
    batch_size: int = DEFAULT_BATCH_SIZE,
    output: str = "safetensors",
    classes: int | str | None = None,
    guidance: float | None = None,
    guidance_interval: list[float] | None = None,
    snap: bool = False,
) -> list[Path]:
    """`num` samples of the run's model, identical for any process count, written under <model run>/samples/.

    Flow runs: AMED solvers need the `predictor` distilled for this run, which fixes the NFE and schedule; the
    others default to Euler at NFE 4 on the field's native schedule. GAN runs: the generator, optionally
    refined by `refine_steps` Euler steps along its critic's field. Each process draws `batch_size` samples at a
    time; the main process writes them as `output` (see OUTPUTS) and a picture. Returns [samples path, picture].
    A class-conditional flow samples `classes` (class K, "all": i mod K, None: drawn as in its data) guided at
    weight `guidance` (default 1) in `guidance_interval` (sigmas; default all). A latent flow writes decoded images
    (`snap`: each generated latent snapped to its tokenizer's nearest code first).
    """
    if num < 1:
        raise GenkitError(f"the number of samples must be at least 1, got {num}")
    state = process_state()
    run = Run(run).last_stage
    shape = data_shape(run.data)
    if output != "safetensors" and len(shape) != 3:
        raise GenkitError(
            f"--format {output} writes uint8 images for FID tools; this run samples points of shape {shape}: "
            "use --format safetensors"
        )
    if run.kind == "gan":
        if (classes, guidance, guidance_interval, snap) != (None, None, None, False):
            raise GenkitError(
                "a GAN run is unconditional and samples images: drop --class, --classes, --guidance, --snap"
            )
        if (solver, nfe, schedule, predictor) != (None, None, None, None):
            raise GenkitError("a GAN run samples with its generator: drop --solver, --nfe, --schedule, --predictor")
        draw = gan_sampler(run, state.device, seed, refine_steps, refine_step_size)
        name = f"gan_refine{refine_steps}x{refine_step_size:g}"
    else:
        if refine_steps:
            raise GenkitError("--refine-steps follows a GAN critic; this run holds a velocity model")
        guided = None
        if guidance is not None or guidance_interval is not None:
            interval = None if guidance_interval is None else tuple(guidance_interval)
            guided = Guidance(1.0 if guidance is None else guidance, interval)
        draw, name = flow_sampler(run, state.device, seed, solver, nfe, schedule, predictor, classes, guided, snap)
        name += "_snap" if snap else ""
    stem = run.samples / f"{name}_seed{seed}"
    path, picture = Path(f"{stem}{OUTPUTS[output]}"), Path(f"{stem}.png")
    if state.is_main_process:
        stem.parent.mkdir(parents=True, exist_ok=True)
    writer = sample_writer(output, path, num, shape) if state.is_main_process else nullcontext(lambda batch: None)
    bar = progress(total=num, desc="sampling", unit="sample", disable=not state.is_main_process)
    shown = []  # the picture's samples: the first PICTURE_SAMPLES images, or every point
    with writer as write, bar:
        for batch in sample_batches(draw, num, batch_size, state):
            write(batch)
            if len(shape) != 3 or sum(map(len, shown)) < PICTURE_SAMPLES:
                shown.append(batch)
            bar.update(len(batch))
    if state.is_main_process:
        save_picture(torch.cat(shown), picture)
    state.wait_for_everyone()
    return [path, picture]


def save_picture(samples: Tensor, path: Path) -> None:
    """Images as a grid of the first PICTURE_SAMPLES, 2-D points as a scatter plot."""
    if samples.ndim == 4:
        save_image(image_grid(samples[:PICTURE_SAMPLES]).float() / 255, path)
        return
    figure, axes = plt.subplots(figsize=(4, 4))
    axes.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.5)
    axes.set_aspect("equal")
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
