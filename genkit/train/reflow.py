"""The ReFlow pipeline: 1-rectified flow -> pairs (z, Z1(z)) -> retrain -> ... -> optional one-step distillation.

Every stage has its own folder under `runs/<name>/` and counts as done once it has written its output
(`model/` for a training stage, `pairs.json` for a pair stage): rerunning the pipeline skips finished
stages and resumes an unfinished one from its last checkpoint.

With `conditional: true` every stage is a class-conditional flow (with `label_dropout`, genkit.train.flow) and the
pairs keep a class each, drawn as in the data, so that Z1(z) solves the previous stage at that class
(genkit.train.pairs): the ReFlow of a conditional flow stays conditional.
"""

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from genkit.config import RunConfig, config_dict, flat_config, ranged, register_task
from genkit.data import DataConfig, data_shape, label_frequencies, validation_samples
from genkit.errors import GenkitError
from genkit.files import write_json
from genkit.models import load_velocity_model
from genkit.processes import process_state
from genkit.runs import Run
from genkit.train import flow
from genkit.train.config import OptimizerConfig, TrainConfig
from genkit.train.flow import FlowConfig, FlowRunConfig, VelocityNetConfig, evaluate_flow
from genkit.train.pairs import at_classes, check_solver, generate_pairs


@dataclass
class PairsConfig:
    """How the couplings are generated: count, shard size, ODE solver (`reference` = adaptive, accurate)."""

    num_pairs: int = ranged(10_000, minimum=1)
    shard_size: int = ranged(2_000, minimum=1)
    solver: str = "reference"
    nfe: int = ranged(0, minimum=0)  # the reference solver picks its own steps: 0
    batch_size: int = ranged(1_000, minimum=1)
    seed: int = ranged(1, minimum=0)

    def __post_init__(self):
        check_solver(self.solver, self.nfe)


@register_task("reflow")
@dataclass
class ReflowRunConfig(RunConfig):
    """1-RF for `train.steps`, then `rounds` reflows of `reflow_steps` each, then `distill_steps` at t = 0."""

    task: str = "reflow"
    name: str = "reflow"
    eval_samples: int = ranged(512, minimum=1)
    rounds: int = ranged(1, minimum=0)
    reflow_steps: int = ranged(1000, minimum=1)
    distill_steps: int = ranged(0, minimum=0)
    time_sampling: str = "uniform"
    conditional: bool = False
    label_dropout: float = ranged(0.0, minimum=0, maximum=1)
    data: DataConfig = field(default_factory=lambda: DataConfig(source="gmm"))
    model: VelocityNetConfig = field(default_factory=VelocityNetConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        self.model.check_data(self.data)


def stage_names(config: ReflowRunConfig) -> list[str]:
    """Stages in order: 1-rf, pairs-1, 2-rf, ..., and pairs-(k+1), distill when distillation is asked for."""
    names = ["1-rf"]
    for k in range(1, config.rounds + 1):
        names += [f"pairs-{k}", f"{k + 1}-rf"]
    if config.distill_steps:
        names += [f"pairs-{config.rounds + 1}", "distill"]
    return names


def training_stage(config: ReflowRunConfig, stage: str, pairs: Path | None, init_from: Path | None) -> FlowRunConfig:
    """The flow run of one training stage, in `runs/<name>/<stage>/`."""
    train = copy.deepcopy(config.train)
    train.resume = "latest"
    if stage != "1-rf":
        train.steps = config.distill_steps if stage == "distill" else config.reflow_steps
        train.warmup_steps = min(train.warmup_steps, train.steps // 10)
    time_sampling = "zero" if stage == "distill" else config.time_sampling
    return FlowRunConfig(
        name=stage,
        output_dir=str(config.run_dir),
        eval_samples=config.eval_samples,
        data=config.data,
        model=config.model,
        flow=FlowConfig(
            time_sampling=time_sampling,
            pairs=str(pairs) if pairs else None,
            init_from=str(init_from) if init_from else None,
            conditional=config.conditional,
            label_dropout=config.label_dropout,
        ),
        optimizer=config.optimizer,
        train=train,
    )


def check_stage_settings(stage: Run, expected: FlowRunConfig) -> None:
    """A stage already started must continue with the settings it started with, or be retrained on purpose."""
    if not stage.config_file.is_file():
        return
    saved = flat_config(stage.resolved())
    wanted = flat_config(config_dict(expected))
    changed = [key for key in wanted if key != "train.resume" and saved.get(key) != wanted[key]]
    if changed:
        details = ", ".join(f"{key}: {saved.get(key)} -> {wanted[key]}" for key in changed[:3])
        raise GenkitError(
            f"stage {stage.folder} was started with other settings ({details}); delete that folder to retrain it, "
            "or give the run another name=..."
        )


def run(config: ReflowRunConfig) -> dict[str, dict[str, float]]:
    """Run every unfinished stage; returns each training stage's evaluation (summary.json, redone when a stage ran)."""
    root = config.run_dir
    shape = data_shape(config.data)
    state = process_state()
    model, pairs, ran = None, None, False
    for stage in stage_names(config):
        folder = root / stage
        if stage.startswith("pairs"):
            if not (folder / "pairs.json").exists():
                settings = config.pairs
                generate_pairs(
                    load_velocity_model(model.model).to(state.device),
                    shape,
                    folder,
                    settings.num_pairs,
                    settings.shard_size,
                    settings.seed,
                    state,
                    solver=settings.solver,
                    nfe=settings.nfe,
                    batch_size=settings.batch_size,
                    frequencies=label_frequencies(config.data) if config.conditional else None,
                )
                ran = True
            pairs = folder
        else:
            stage_config = training_stage(config, stage, pairs, model.model if model else None)
            model = Run(folder)
            check_stage_settings(model, stage_config)
            if not model.finished:
                flow.train(stage_config)
                ran = True
    if not ran and (root / "summary.json").exists():
        return json.loads((root / "summary.json").read_text())["stages"]
    summary = summarize(config, root)
    if state.is_main_process:
        write_json(root / "summary.json", {"config": config_dict(config), "stages": summary})
    return summary


@torch.no_grad()
def summarize(config: ReflowRunConfig, root: Path) -> dict[str, dict[str, float]]:
    """Straightness and 1/4/32-step distances to held-out data of every trained stage, on the same noise (a
    conditional flow at the held-out images' classes)."""
    if config.conditional:
        reference_data, labels = validation_samples(config.data, config.eval_samples, labels=True)
    else:
        reference_data, labels = validation_samples(config.data, config.eval_samples), None
    generator = torch.Generator().manual_seed(config.train.seed)
    noise = torch.randn((len(reference_data), *data_shape(config.data)), generator=generator)
    summary = {}
    for stage in stage_names(config):
        if not stage.startswith("pairs"):
            model = load_velocity_model(Run(root / stage).model)
            velocity = model if labels is None else at_classes(model, labels)
            summary[stage] = evaluate_flow(velocity, noise, reference_data)
    return summary


def format_summary(summary: dict[str, dict[str, float]]) -> str:
    """The summary as a table: a row a stage."""
    columns = {"straightness": 14, "sliced_wasserstein_1step": 12, "sliced_wasserstein_4step": 12}
    columns["sliced_wasserstein_32step"] = 13
    lines = [f"{'stage':<10}{'straightness':>14}{'SW 1 step':>12}{'SW 4 steps':>12}{'SW 32 steps':>13}"]
    for stage, metrics in summary.items():
        lines.append(f"{stage:<10}" + "".join(f"{metrics[key]:>{width}.4f}" for key, width in columns.items()))
    return "\n".join(lines)
