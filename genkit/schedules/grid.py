"""A grid of fitted schedules for one field: each method (GITS, LD3, learned solver) x solver x NFE, fitted once and
then reused."""

from collections.abc import Sequence
from functools import partial
from itertools import product
from pathlib import Path

import torch

from genkit.fields import Field
from genkit.schedules.file import save_schedule
from genkit.schedules.gits import search_schedule
from genkit.schedules.ld3 import learn_schedule

FITS = {"gits": search_schedule, "ld3": learn_schedule, "learned": partial(learn_schedule, corrections=True)}


def fitted_grid(
    field: Field,
    folder: Path,
    methods: dict[str, dict],
    solvers: Sequence[str],
    nfes: Sequence[int],
    device: torch.device | str = "cpu",
) -> list[Path]:
    """The saved schedule of each method in `methods` (name -> its options) for each solver at each NFE on `field`
    (whose networks are on `device`): folder/<method>_<solver>_nfe<N>.json, fitted now (torch seeded 0) and saved
    there unless it already exists."""
    paths = []
    for (method, options), solver, nfe in product(methods.items(), solvers, nfes):
        path = Path(folder) / f"{method}_{solver}_nfe{nfe}.json"
        if not path.is_file():
            torch.manual_seed(0)
            schedule = FITS[method](field, solver, nfe, **options, device=device)
            schedule.name = path.stem
            save_schedule(schedule, path)
        paths.append(path)
    return paths
