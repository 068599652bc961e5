"""The `genkit` command (also `python -m genkit`, and `accelerate launch -m genkit` for several processes)."""

import argparse
import sys
from pathlib import Path

import samplers
from genkit import __version__
from genkit.config import load_config
from genkit.errors import GenkitError
from genkit.train import tokenizer as tokenizer_training

RUNNERS = {"tokenizer": tokenizer_training.train}


def list_solvers(args: argparse.Namespace) -> None:
    """Print each solver with its cost per step and its update rule."""
    print(f"{'solver':<14}{'evals/step':>10}  update")
    for name, solver in samplers.SOLVERS.items():
        rule = solver.__doc__.splitlines()[0]
        print(f"{name:<14}{samplers.EVALUATIONS_PER_STEP[name]:>10}  {rule}")
    print(f"schedules: {', '.join(samplers.SCHEDULES)}")


def train(args: argparse.Namespace) -> None:
    """Train what the config's `task` names."""
    config = load_config(args.config, args.overrides)
    RUNNERS[config.task](config)


def eval_tokenizer(args: argparse.Namespace) -> None:
    """Evaluate a trained tokenizer run against its untrained initialisation on the run's validation images."""
    report = tokenizer_training.evaluate_run(Path(args.run_dir), args.images)
    print(report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genkit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"genkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("solvers", help="list the ODE solvers and schedules").set_defaults(handler=list_solvers)
    train_parser = commands.add_parser("train", help="train from a YAML config: genkit train CONFIG [key=value ...]")
    train_parser.add_argument("config", help="a YAML config naming its task, e.g. configs/tokenizer/fsq.yaml")
    train_parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=100 name=try2")
    train_parser.set_defaults(handler=train)
    eval_parser = commands.add_parser("eval-tokenizer", help="evaluate a trained tokenizer run")
    eval_parser.add_argument("run_dir", metavar="RUN", help="a tokenizer run folder, e.g. runs/fsq-demo")
    eval_parser.add_argument("--images", type=int, default=None, help="validation images (default: the run's)")
    eval_parser.set_defaults(handler=eval_tokenizer)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (GenkitError, samplers.SamplerError) as error:
        print(f"genkit: error: {error}", file=sys.stderr)
        return 2
    return 0
