"""Run folders: where a run's model is, what data it was trained on, whether it is finished, how long it took.

A run folder (`<output_dir>/<name>/`) holds config.yaml (the resolved config, written when the loop starts),
checkpoints/, metrics.jsonl and, once finished, model/ (written last). A ReFlow run holds one such folder a stage.
"""

from pathlib import Path

import yaml

from genkit.checkpoint import CONFIG_NAME
from genkit.data import DataConfig
from genkit.errors import GenkitError

RUN_CONFIG = "config.yaml"
MODEL = "model"


def read_run_config(run: Path) -> dict:
    """The resolved config a run folder holds, as nested dicts."""
    path = Path(run) / RUN_CONFIG
    if not path.is_file():
        raise GenkitError(f"{run} is not a run folder (no {RUN_CONFIG}); train it first or fix the path")
    return yaml.safe_load(path.read_text())


def run_data(run: Path) -> DataConfig:
    """The data config a run was trained on."""
    return DataConfig(**read_run_config(run)["data"])


def model_folder(run: Path) -> Path:
    """The run folder holding the model of a flow run, or of the last trained stage of a ReFlow run."""
    run = Path(run)
    if (run / MODEL).is_dir():
        return run
    stages = sorted((p.parent for p in run.glob(f"*/{MODEL}")), key=lambda p: p.stat().st_mtime)
    if not stages:
        raise GenkitError(f"{run} holds no trained model (no {MODEL}/ folder); train it first")
    return stages[-1]


def finished(run: Path, config: dict) -> bool:
    """Whether `run` holds a model trained with exactly this resolved config (so it can be reused, not retrained)."""
    run = Path(run)
    return (run / MODEL).is_dir() and (run / RUN_CONFIG).is_file() and read_run_config(run) == config


def training_seconds(run: Path) -> float:
    """Wall time of a finished run: from its config.yaml (written when the loop starts) to its exported model."""
    run = Path(run)
    written = [path.stat().st_mtime for path in (run / MODEL).rglob(CONFIG_NAME)]
    if not written:
        raise GenkitError(f"{run} is not finished (no {MODEL}/{CONFIG_NAME})")
    return max(written) - (run / RUN_CONFIG).stat().st_mtime
