"""Schedules as data: timesteps saved with the field they were made for (the file GITS, LD3 and AMED write).

A saved schedule holds the N + 1 float64 timesteps a solver runs on, in the time of the field form it is solved in
(`time`: sigma for the EDM form, rectified for rectified time), from the start of integration to its end; the base
solver it was made for (none: any solver); the id of the field (its weights' digest, genkit.fields), a name, and
the settings it was made with. `load_schedule` refuses it for another field, as `load_predictor` refuses a
predictor. `genkit schedule search` writes one, a `genkit compare` schedule entry and AMED's `amed.schedule_file`
read one (docs/samplers.md §8).

A learned solver (`genkit schedule learn --corrections`, docs/samplers.md §8.5) is a saved schedule with a correction
table (samplers.corrections) for its base solver: the field, NFE, solver, guidance and timesteps are recorded as for
any schedule, and a solve on it runs that solver with the table (only that solver; Field.solve checks).

The file is one JSON document (Python writes each float64 as its shortest round-trip repr, so timesteps come back
bit-equal), written atomically:

    {"format": "genkit-schedule", "version": 1, "field_id": "...", "time": "sigma", "solver": "euler",
     "name": "gits_euler_nfe5_karras", "timesteps": [80.0, ..., 0.002], "settings": {"method": "gits", ...}}

and a learned solver's (version 2) adds "corrections": {"velocity": [[...], ...], "state": [[...], ...]}.
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

import samplers
from genkit.errors import GenkitError
from genkit.files import write_json
from genkit.guidance import guidance_mismatch
from genkit.paths import EDMPath, ProbabilityPath, RectifiedPath
from samplers.corrections import Corrections

if TYPE_CHECKING:  # genkit.fields solves on a SavedSchedule, so it imports this module
    from genkit.fields import Field

FORMAT, VERSIONS = "genkit-schedule", (1, 2)  # 2: with a correction table
TIMES = {"sigma": EDMPath, "rectified": RectifiedPath}


@dataclass
class SavedSchedule:
    """Timesteps in a field's `time` (sigma or rectified), the solver they were made for (None: any), the field's id;
    a learned solver's `corrections` for that solver."""

    field_id: str
    time: str
    timesteps: Tensor
    solver: str | None = None
    name: str = "schedule"
    settings: dict = dataclasses.field(default_factory=dict)
    corrections: Corrections | None = None

    def nfe(self, solver: str | None = None, **options) -> int:
        """Field evaluations of `solver` (default: the one it was made for) on these timesteps."""
        return samplers.solver_spec(solver or self.solver or "euler").nfe(self.timesteps, **options)


def schedule_name(schedule: "str | SavedSchedule | None") -> str | None:
    """A schedule's name, or a saved schedule's (what a table's schedule column and a samples file name show)."""
    return schedule.name if isinstance(schedule, SavedSchedule) else schedule


def save_schedule(schedule: SavedSchedule, path: Path) -> None:
    """Write `schedule` to `path` as JSON, atomically (all of it or the previous file)."""
    learned = schedule.corrections is not None
    document = {"format": FORMAT, "version": VERSIONS[learned], "field_id": schedule.field_id, "time": schedule.time}
    document |= {"solver": schedule.solver, "name": schedule.name, "timesteps": schedule.timesteps.double().tolist()}
    document |= {"corrections": schedule.corrections.tolist()} if learned else {}
    write_json(Path(path), document | {"settings": schedule.settings})


def read_schedule(path: Path) -> SavedSchedule:
    """The schedule saved at `path`, for whichever field it was made (load_schedule checks that it fits one)."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise GenkitError(f"cannot read a saved schedule from {path} ({error}); pass a file genkit wrote") from None
    keys = ("field_id", "time", "timesteps", "solver", "name", "settings")
    if (
        not isinstance(document, dict)
        or document.get("format") != FORMAT
        or document.get("version") not in VERSIONS
        or not all(key in document for key in keys)
    ):
        raise GenkitError(f"{path} is not a saved schedule ({FORMAT} version 1 or 2); pass a file genkit wrote")
    field_id, time_name, timesteps, solver, name, settings = (document[key] for key in keys)
    try:
        timesteps = torch.tensor(timesteps, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        timesteps = torch.empty(0, dtype=torch.float64)
    one_way = (
        timesteps.ndim == 1 and len(timesteps) >= 2 and bool(abs(timesteps.diff().sign().sum()) == len(timesteps) - 1)
    )
    if time_name not in TIMES or not one_way:
        raise GenkitError(
            f"{path} holds no valid schedule: time {time_name!r} (sigma or rectified) and timesteps that run one way "
            f"from start to end, got {timesteps.tolist()}"
        )
    if solver is not None:
        samplers.solver_spec(solver)
    corrections = None
    if "corrections" in document:
        try:
            corrections = samplers.Corrections.fromlist(document["corrections"])
            corrections.check(len(timesteps) - 1)
        except samplers.SamplerError as error:
            raise GenkitError(f"{path} holds no valid learned solver: {error}") from None
        if solver not in samplers.CORRECTED:
            raise GenkitError(
                f"{path} holds a correction table for {solver}, which takes none ({samplers.CORRECTED} do)"
            )
    return SavedSchedule(field_id, time_name, timesteps, solver, name, settings, corrections)


def load_schedule(path: Path, field: "Field") -> SavedSchedule:
    """The schedule saved at `path`, refused (one line naming both ids) unless it was made for this field."""
    schedule = read_schedule(path)
    if schedule.field_id != field.field_id:
        mismatch = guidance_mismatch(schedule.field_id, field.field_id)
        if mismatch:
            raise GenkitError(f"the schedule in {path} does not fit: {mismatch}")
        raise GenkitError(
            f"the schedule in {path} was made for field {schedule.field_id}, not for this field {field.field_id}; "
            "search one for it (genkit schedule search)"
        )
    field.form(schedule, schedule.solver or "euler")  # timesteps that fit no form of the field fail here
    return schedule


def time_of(path: ProbabilityPath) -> str:
    """The name of a path's time convention in a saved schedule."""
    return next(name for name, kind in TIMES.items() if isinstance(path, kind))
