"""Running `genkit` from tests: in this process (one rank, no start-up cost) or launched on one or two gloo ranks."""

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

from genkit.cli import main

# Two gloo ranks on the CPU: `--cpu --num_processes 2` would start one process; this with ACCELERATE_USE_CPU starts two.
TWO_RANKS = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
TWO_RANKS += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def launch_on_two_ranks(folder: Path, *arguments: str) -> subprocess.CompletedProcess:
    """`accelerate launch *arguments` (a script, or -m and a module) on two gloo ranks in `folder`, offline."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*TWO_RANKS, *arguments], cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def genkit_on_two_ranks(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """`genkit *args` in `folder` under accelerate launch on two gloo ranks."""
    return launch_on_two_ranks(folder, "-m", "genkit", *args)


def genkit(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """`genkit *args` in `folder`, run by the CLI's own `main` in this process; its exit code, stdout and stderr.

    What a user's process does minus the interpreter's start: user errors come back as exit code 2 and one line on
    stderr, and anything else raises here with its traceback.
    """
    stdout, stderr = io.StringIO(), io.StringIO()
    previous = Path.cwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(list(args))
            except SystemExit as exit_:  # argparse's errors
                code = exit_.code
    finally:
        os.chdir(previous)
    return subprocess.CompletedProcess(["genkit", *args], code, stdout.getvalue(), stderr.getvalue())
