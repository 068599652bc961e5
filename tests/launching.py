"""`genkit` in a subprocess on one or two gloo CPU ranks, with the launch flags of ENVIRONMENT.md."""

import os
import subprocess
import sys
from pathlib import Path

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no"]
LAUNCH += ["--dynamo_backend", "no"]
RANKS = {"one": ["--num_processes", "1"], "two": ["--multi_gpu", "--num_processes", "2"]}


def genkit_on_ranks(folder: Path, ranks: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m genkit *args` in `folder` under accelerate launch on RANKS[ranks], offline."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    command = [*LAUNCH, *RANKS[ranks], "-m", "genkit", *args]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
