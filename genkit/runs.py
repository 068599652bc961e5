"""Run folders: the one place that knows their layout. Everything else asks a `Run`.

A run folder `<output_dir>/<name>/` holds:

    config.yaml      the resolved config (its `task` is the run's kind), written when the training loop starts
    runtime.json     processes, device, precision and batch split of the last start
    metrics.jsonl    the logged metrics
    checkpoints/     step_<N>/ folders, the newest resumed by train.resume=latest (genkit.checkpoint)
    model/           the trained model, written last (so a run with model/ is finished): a velocity model (flow),
                     generator/ and critic/ (gan), a tokenizer, or an AMED predictor (+ schedule.json); a
                     class-conditional flow's also holds classes.json (the share of each class in its data), a latent
                     flow's latents.json (its tokenizer run and the shift and scale of its latents, genkit.latents)
    samples/         what `genkit sample` writes
    schedules/       what `genkit schedule search` and `genkit schedule learn` write

A ReFlow run holds one such folder a training stage (1-rf/, 2-rf/, ..., distill/), pair folders (pairs-1/, ...:
pairs.json and shards) and summary.json; its model is its last finished stage's. A diffusers model folder
(`unet/` and `scheduler/`, as DDPMPipeline.save_pretrained writes it) is a run of kind `diffusers` without a
config: it is its own model, and its schedules go in its schedules/.
"""

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import yaml

from genkit.data import DataConfig
from genkit.errors import GenkitError
from genkit.files import CONFIG_NAME

CONFIG_FILE = "config.yaml"
MODEL, SAMPLES, SCHEDULES = "model", "samples", "schedules"
UNET, SCHEDULER = "unet", "scheduler"  # the parts of a diffusers model folder


@dataclass(frozen=True, eq=True)
class Run:
    """A run folder (module docstring): its config, kind, model, stages and the folders it writes to."""

    folder: Path
    CLASSES = "classes.json"  # in model/: {"frequencies": [share of class k in the training data, ...]}
    LATENTS = "latents.json"  # in model/: {"tokenizer", "tokenizer_id", "shape", "mean", "std"} (genkit.latents)

    def __post_init__(self):
        object.__setattr__(self, "folder", Path(self.folder))

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def config_file(self) -> Path:
        return self.folder / CONFIG_FILE

    @property
    def model(self) -> Path:
        """The trained model's folder (a diffusers model folder is its own)."""
        return self.folder if self.is_diffusers else self.folder / MODEL

    @property
    def classes(self) -> Path:
        """A class-conditional model's class shares (genkit.train.flow)."""
        return self.model / self.CLASSES

    @property
    def latents(self) -> Path:
        """A latent flow's record of the tokenizer whose latents it generates (genkit.latents)."""
        return self.model / self.LATENTS

    @property
    def samples(self) -> Path:
        return self.folder / SAMPLES

    @property
    def schedules(self) -> Path:
        return self.folder / SCHEDULES

    @property
    def unet(self) -> Path:
        return self.folder / UNET

    @property
    def scheduler(self) -> Path:
        return self.folder / SCHEDULER

    @property
    def is_diffusers(self) -> bool:
        """Whether this is a diffusers model folder (unet/ and scheduler/, no config.yaml)."""
        return self.unet.is_dir() and not self.config_file.is_file()

    def resolved(self) -> dict:
        """The resolved config this run was trained with, as nested dicts, as written in its config.yaml."""
        if not self.config_file.is_file():
            raise GenkitError(f"{self.folder} is not a run folder (no {CONFIG_FILE}); train it first or fix the path")
        return yaml.safe_load(self.config_file.read_text())

    @cached_property
    def config(self):
        """The run's config, typed: its task's config dataclass (genkit.config.load_config)."""
        from genkit.config import load_config  # imported here: genkit.config's tasks import this module

        self.resolved()  # one clear error when there is no config
        return load_config(self.config_file)

    @property
    def kind(self) -> str:
        """flow, reflow, gan, tokenizer or amed (the config's task), or diffusers for a diffusers model folder."""
        return "diffusers" if self.is_diffusers else self.resolved()["task"]

    @property
    def data(self) -> DataConfig:
        """The data config the run was trained on."""
        return DataConfig(**self.resolved()["data"])

    @property
    def finished(self) -> bool:
        """Whether the run holds its trained model (written last)."""
        return self.model.is_dir()

    def trained_with(self, config: dict) -> bool:
        """Whether this run's config.yaml, read by this genkit, equals the resolved `config` in what was trained: a
        setting added since the run was trained counts at its default, so a newer genkit still reuses the run (a raw
        comparison refused it), and `train.resume` (how it was started) does not count."""
        from genkit.config import config_dict  # imported here: genkit.config's tasks import this module

        return self.config_file.is_file() and trained_settings(config_dict(self.config.resolved())) == trained_settings(
            config
        )

    def finished_with(self, config: dict) -> bool:
        """Whether the run holds a model trained with exactly this resolved config (reused, not retrained)."""
        return self.finished and self.trained_with(config)

    @property
    def stages(self) -> list["Run"]:
        """A ReFlow run's training stages that have started, in the order they started (empty for other runs)."""
        started = [Run(path.parent) for path in self.folder.glob(f"*/{CONFIG_FILE}")]
        return sorted(started, key=lambda stage: stage.config_file.stat().st_mtime)

    @property
    def last_stage(self) -> "Run":
        """The run holding the model: this one, or the last finished stage of a ReFlow run."""
        if self.finished:
            return self
        finished = [stage for stage in self.stages if stage.finished]
        if not finished:
            raise GenkitError(f"{self.folder} holds no trained model (no {MODEL}/ folder); train it first")
        return max(finished, key=lambda stage: stage.model.stat().st_mtime)

    @property
    def training_seconds(self) -> float:
        """Wall time of a finished run: from its config.yaml (written when the loop starts) to its exported model."""
        written = [path.stat().st_mtime for path in self.model.rglob(CONFIG_NAME)]
        if not written:
            raise GenkitError(f"{self.folder} is not finished (no {MODEL}/{CONFIG_NAME})")
        return max(written) - self.config_file.stat().st_mtime


def trained_settings(config: dict) -> dict:
    """A resolved config without `train.resume`, which says how a run was started, not what it trained."""
    train = {key: value for key, value in config.get("train", {}).items() if key != "resume"}
    return config | ({"train": train} if "train" in config else {})
