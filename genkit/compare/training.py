"""Runs a comparison trains for itself: a config file and overrides, trained unless a finished run matches it."""

from dataclasses import dataclass, field

from genkit.config import config_dict, load_config
from genkit.errors import GenkitError
from genkit.runs import Run
from genkit.train import train


@dataclass
class RunSpec:
    """A run to compare: `config` (a YAML file) with `key=value` overrides, trained when no finished run matches."""

    config: str = ""
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.config:
            raise GenkitError("a run to train needs config: the path of its YAML file")


def train_or_reuse(spec: RunSpec, extra: list[str] = ()) -> Run:
    """The run of `spec` (with `extra` overrides), trained or resumed now unless it already holds its model.

    A finished run whose config.yaml equals the resolved config is reused as it is; an unfinished one with the same
    config resumes from its last checkpoint; a folder trained with other settings is an error, never overwritten.
    """
    config = load_config(spec.config, [*spec.overrides, *extra, "train.resume=latest"]).resolved()
    run = Run(config.run_dir)
    if config.task == "reflow":  # a pipeline skips its finished stages and resumes an unfinished one by itself
        train(config)
        return run
    wanted = config_dict(config)
    if not run.finished_with(wanted):
        if run.finished or (run.config_file.is_file() and not run.trained_with(wanted)):
            raise GenkitError(
                f"{run.folder} holds a run trained with other settings than {spec.config} {' '.join(spec.overrides)}; "
                "delete that folder to retrain it, or give this run another name=..."
            )
        train(config)
    return run
