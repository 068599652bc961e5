"""Rotating training checkpoints: `step_<N>` folders under a run's checkpoints/, oldest first, the newest resumed.

Each is written completely before it appears (genkit.files); temporary folders start with a dot and are skipped.
"""

import shutil
from pathlib import Path

from genkit.errors import GenkitError

CHECKPOINT_PREFIX = "step_"


def checkpoint_step(folder: Path) -> int:
    """The training step a checkpoint folder was written at."""
    return int(folder.name.removeprefix(CHECKPOINT_PREFIX))


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (temporary folders start with a dot and are skipped)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    return sorted(found, key=checkpoint_step)


def resolve_resume(root: Path, resume: str) -> Path | None:
    """The checkpoint to resume from: `latest` (None when there is none yet) or an explicit folder."""
    if resume == "latest":
        checkpoints = list_checkpoints(root)
        return checkpoints[-1] if checkpoints else None
    folder = Path(resume)
    if not folder.is_dir():
        raise GenkitError(
            f"train.resume={resume}: no such checkpoint folder; use train.resume=latest or a step_* folder"
        )
    return folder


def rotate(root: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints."""
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old)
