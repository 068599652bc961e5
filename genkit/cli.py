"""The `genkit` command (also `python -m genkit`, and `accelerate launch -m genkit` for several processes)."""

import argparse
import sys
from pathlib import Path

import torch

import samplers
from genkit import __version__
from genkit import compare as comparison
from genkit.config import Range, load_config
from genkit.errors import GenkitError
from genkit.generate import sample_run
from genkit.processes import process_state
from genkit.train import amed, flow, gan, reflow
from genkit.train import tokenizer as tokenizer_training


def run_reflow(config: reflow.ReflowRunConfig) -> None:
    """Every ReFlow stage, then the table of straightness and distances per stage."""
    print(reflow.format_summary(reflow.run(config)))


RUNNERS = {
    "tokenizer": tokenizer_training.train,
    "flow": flow.train,
    "reflow": run_reflow,
    "amed": amed.train,
    "gan": gan.train,
}


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
    if config.task not in RUNNERS:
        raise GenkitError(f"{args.config} is a {config.task} config, not a training run; use genkit {config.task}")
    RUNNERS[config.task](config)


def compare(args: argparse.Namespace) -> None:
    """Every cell of a comparison config, one table (W&B, CSV, JSON), plots and grids under runs/<name>/."""
    config = load_config(args.config, args.overrides)
    if config.task != "compare":
        raise GenkitError(f"{args.config} is a {config.task} config; genkit compare takes a compare config")
    comparison.run(config)


def eval_tokenizer(args: argparse.Namespace) -> None:
    """Evaluate a trained tokenizer run against its untrained initialisation on the run's validation images."""
    report = tokenizer_training.evaluate_run(Path(args.run_dir), args.images)
    print(report)


def sample(args: argparse.Namespace) -> None:
    """Sample a trained flow (a solver at an exact NFE) or GAN (generator, critic refinement); tensor and picture."""
    predictor = Path(args.predictor) if args.predictor else None
    samples, stem = sample_run(
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


POSITIVE = Range(minimum=1).argument(int)
COUNT = Range(minimum=0).argument(int)
STEP_SIZE = Range(above=0).argument(float)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="genkit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"genkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    commands.add_parser("solvers", help="list the ODE solvers and schedules").set_defaults(handler=list_solvers)
    train_parser = commands.add_parser("train", help="train from a YAML config: genkit train CONFIG [key=value ...]")
    train_parser.add_argument("config", help="a YAML config naming its task, e.g. configs/tokenizer/fsq.yaml")
    train_parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=100 name=try2")
    train_parser.set_defaults(handler=train)
    compare_parser = commands.add_parser("compare", help="compare methods: genkit compare CONFIG [key=value ...]")
    compare_parser.add_argument("config", help="a compare config, e.g. configs/compare/samplers_demo.yaml")
    compare_parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. num_samples=64")
    compare_parser.set_defaults(handler=compare)
    eval_parser = commands.add_parser("eval-tokenizer", help="evaluate a trained tokenizer run")
    eval_parser.add_argument("run_dir", metavar="RUN", help="a tokenizer run folder, e.g. runs/fsq-demo")
    eval_parser.add_argument("--images", type=POSITIVE, default=None, help="validation images (default: the run's)")
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
        help="uniform (default): rectified time; else EDM form",
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
    finally:
        # Ranks that leave without tearing the group down can abort at exit (seen with gloo).
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0
