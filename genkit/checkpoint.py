"""Files that must survive a killed run: atomic writes, model folders, and rotating training checkpoints.

Everything is written under a temporary name and renamed into place, so a reader (or a resumed run)
sees either the previous complete file or the new complete one, never half of one.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

from torch import nn

from genkit.errors import GenkitError

CHECKPOINT_PREFIX = "step_"
CONFIG_NAME = "config.json"


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        handle.write(text)
        temporary = Path(handle.name)
    os.replace(temporary, path)


def write_json(path: Path, data: dict) -> None:
    """Write `data` as indented JSON to `path` atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def replace_folder(temporary: Path, folder: Path) -> None:
    """Move a completely written `temporary` folder to `folder`, replacing an older one."""
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(temporary, folder)
        shutil.rmtree(old)
    else:
        os.replace(temporary, folder)


def save_pretrained(model: nn.Module, folder: Path) -> None:
    """`model.save_pretrained` (config.json + safetensors) into `folder`, atomically: all of it or the old folder."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    model.save_pretrained(temporary)
    replace_folder(temporary, folder)


def saved_class(folder: Path) -> str | None:
    """The `_class_name` a saved model folder's config.json names; None when there is no readable one."""
    try:
        return json.loads((Path(folder) / CONFIG_NAME).read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


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
