"""AMED predictors as saved models: the settings a predictor is tied to, and its refusal for anything else.

A predictor is distilled for one field, one student solver (and plugin base), one schedule of N timestamps, AFS on
or off and one kind of input features (docs/amed.md §10-11); `PredictorModel` saves it with the id of that field and
those settings, and `load_predictor` refuses it, naming each mismatch, for any other use. A predictor distilled with
the data-aware first step (amed.afs_from: data) also keeps the data's per-dimension mean and variance, as buffers
saved with its weights, and its solver options pass them on (samplers.amed.gaussian_first_slope).
"""

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor

from genkit.config import check_choice, ranged
from genkit.errors import GenkitError
from genkit.files import saved_class
from genkit.guidance import guidance_mismatch
from genkit.paths import EDMPath
from genkit.schedules.file import SavedSchedule, load_schedule
from samplers import SOLVERS, AMEDPredictor
from samplers.amed import FEATURES, PLUGIN_BASES
from samplers.ld3 import initial_logits, monotone_timesteps

if TYPE_CHECKING:  # genkit.fields imports this module's users; only the type is needed here
    from genkit.fields import Field

PREDICTOR_SCHEDULE = "schedule.json"  # in the model folder of a predictor distilled on a saved schedule
STUDENTS = tuple(name for name, spec in SOLVERS.items() if spec.predictor)


@dataclass
class PredictorSettings:
    """What a predictor is valid for: student solver (and plugin base), N timestamps, schedule, AFS, features."""

    solver: str = "amed"
    base: str = "ipndm"
    max_order: int = ranged(4, minimum=1, maximum=4)
    num_steps: int = ranged(4, minimum=2)
    schedule: str = "time_uniform"
    afs: bool = True
    features: str = "slope"
    scale_dir: float = ranged(0.01, minimum=0, below=1)
    scale_time: float = ranged(0.0, minimum=0, below=1)

    def __post_init__(self):
        check_choice("amed.solver", self.solver, STUDENTS)
        check_choice("amed.base", self.base, PLUGIN_BASES)
        check_choice("amed.schedule", self.schedule, EDMPath.schedules)
        check_choice("amed.features", self.features, FEATURES)

    def timesteps(self, path: EDMPath | None = None) -> Tensor:
        """The student's N sigmas on `path` (EDM's default range)."""
        return (path or EDMPath()).timesteps(self.schedule, self.num_steps)

    @property
    def nfe(self) -> int:
        """Field evaluations of one sample: 2(N - 1) - [AFS]."""
        return SOLVERS[self.solver].nfe(self.timesteps(), afs=self.afs)

    @property
    def multistep(self) -> bool:
        """Whether the student carries a slope history from interval to interval (the iPNDM and DPM++ plugins)."""
        return self.solver == "amed_plugin" and SOLVERS[self.base].multistep

    def solver_options(self, predictor: "PredictorModel") -> dict:
        """Keyword arguments of samplers.amed / amed_plugin for this predictor."""
        options = {"predictor": predictor, "afs": self.afs} | predictor.afs_options()
        if self.solver == "amed_plugin":
            options |= {"base": self.base, "max_order": self.max_order}
        return options

    def tied(self) -> dict:
        """These settings as a plain dict (what a saved predictor records and must match)."""
        return {field.name: getattr(self, field.name) for field in fields(PredictorSettings)}


class PredictorModel(ModelMixin, ConfigMixin):
    """An AMEDPredictor (docs/amed.md §5) saved with the id of the field it was distilled for and its settings.

    `afs_shape`, the shape of one sample, when it keeps the data's mean and variance for the data-aware first step
    (buffers `afs_mean`, `afs_var`, set by `set_afs_statistics`); None for the zero-mean one. `made_for`: a conditional
    field's guidance and how its conditions were drawn (`Field.made_for`), recorded; the guidance is also in field_id.
    """

    @register_to_config
    def __init__(
        self,
        field_id: str = "",
        settings: dict | None = None,
        afs_shape: list[int] | None = None,
        made_for: dict | None = None,
    ):
        super().__init__()
        self.tied_settings = PredictorSettings(**(settings or {}))
        self.register_to_config(settings=self.tied_settings.tied())
        self.net = AMEDPredictor(
            features=self.tied_settings.features,
            scale_dir=self.tied_settings.scale_dir,
            scale_time=self.tied_settings.scale_time,
        )
        if afs_shape is not None:
            if not self.tied_settings.afs:
                raise GenkitError("a predictor without AFS (afs: false) has no first step to keep data statistics for")
            self.register_buffer("afs_mean", torch.zeros(afs_shape))
            self.register_buffer("afs_var", torch.zeros(afs_shape))

    def set_afs_statistics(self, mean: Tensor, variance: Tensor) -> None:
        """Keep the data's per-dimension mean and variance (shape afs_shape) for the data-aware first step."""
        if self.config.afs_shape is None:
            raise GenkitError("this predictor keeps no AFS statistics; build it with afs_shape, the sample shape")
        self.afs_mean.copy_(mean)
        self.afs_var.copy_(variance)

    def afs_options(self) -> dict:
        """{"afs_mean", "afs_var"} of samplers.amed when it keeps them, else {} (the zero-mean first step)."""
        return {} if self.config.afs_shape is None else {"afs_mean": self.afs_mean, "afs_var": self.afs_var}

    @property
    def features(self) -> str:
        """What the 64 inputs are: "slope" or "bottleneck" (the solvers read it)."""
        return self.net.features

    def forward(self, features: Tensor, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.net(features, t, t_next)


class LearnedTimesteps(ModelMixin, ConfigMixin):
    """A predictor's sigma timesteps learned with it (amed.learn_timesteps): t_0 and t_{N-1} fixed, the steps between
    them in log sigma the softmax of N - 1 logits (samplers.ld3.monotone_timesteps), so they stay ordered."""

    @register_to_config
    def __init__(self, initial: list[float]):
        super().__init__()
        self.logits = torch.nn.Parameter(initial_logits(torch.tensor(initial), log_time=True).float())

    def forward(self) -> Tensor:
        """The current timesteps, float64, differentiable in the logits."""
        ends = self.config.initial[0], self.config.initial[-1]
        return monotone_timesteps(self.logits.double(), *ends, log_time=True)


def load_predictor(folder: Path, field_id: str, settings: PredictorSettings | None = None) -> PredictorModel:
    """The predictor saved in `folder`, refused (one clear error) unless distilled for this field (and settings)."""
    folder = Path(folder)
    if saved_class(folder) != PredictorModel.__name__:
        raise GenkitError(f"{folder} does not hold an AMED predictor; pass the model/ folder of an AMED distillation")
    predictor = PredictorModel.from_pretrained(folder)
    mismatch = guidance_mismatch(predictor.config.field_id, field_id)
    if mismatch:
        raise GenkitError(f"the AMED predictor in {folder} does not fit: {mismatch}")
    wanted = {"field": field_id} | ({} if settings is None else asdict(settings))
    have = {"field": predictor.config.field_id} | predictor.tied_settings.tied()
    changed = [
        f"{key}: trained for {have[key]!r}, asked for {value!r}"
        for key, value in wanted.items()
        if key in have and have[key] != value
    ]
    if changed:
        raise GenkitError(
            f"the AMED predictor in {folder} does not fit this use ({'; '.join(changed)}); distil one for it"
        )
    return predictor.eval()


@dataclass
class Distilled:
    """A predictor loaded for its field with what it must be solved with: solver, NFE, schedule, solver options."""

    predictor: PredictorModel
    nfe: int
    schedule: str | SavedSchedule  # the named schedule, or the saved one it was distilled on (model/schedule.json)

    @property
    def settings(self) -> PredictorSettings:
        return self.predictor.tied_settings

    @property
    def solver_options(self) -> dict:
        return self.settings.solver_options(self.predictor)


def load_distilled(folder: Path, field: "Field", device: torch.device | str = "cpu") -> Distilled:
    """The predictor in `folder` for `field` (refused for another), with its own schedule: the saved one it was
    distilled on when the folder keeps one, else its named schedule."""
    predictor = load_predictor(folder, field.field_id).to(device)
    settings = predictor.tied_settings
    own = Path(folder) / PREDICTOR_SCHEDULE
    if not own.is_file():
        return Distilled(predictor, settings.nfe, settings.schedule)
    saved = load_schedule(own, field)
    return Distilled(predictor, saved.nfe(settings.solver, afs=settings.afs), saved)
