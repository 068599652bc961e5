"""The `genkit` command (also `python -m genkit`)."""

import argparse
import sys

import samplers
from genkit import __version__
from genkit.errors import GenkitError


def list_solvers(args: argparse.Namespace) -> None:
    """Print each solver with its cost per step and its update rule."""
    print(f"{'solver':<14}{'evals/step':>10}  update")
    for name, solver in samplers.SOLVERS.items():
        rule = solver.__doc__.splitlines()[0]
        print(f"{name:<14}{samplers.EVALUATIONS_PER_STEP[name]:>10}  {rule}")
    print(f"schedules: {', '.join(samplers.SCHEDULES)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genkit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"genkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("solvers", help="list the ODE solvers and schedules").set_defaults(run=list_solvers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (GenkitError, samplers.SamplerError) as error:
        print(f"genkit: error: {error}", file=sys.stderr)
        return 2
    return 0
