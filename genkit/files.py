"""Files that must survive a killed run, and genkit's cache folder: the bottom layer every other module may use.

Everything is written under a temporary name next to its destination (`.<name>.partial`) and moved into place, so a
reader (or a resumed run) sees either the previous complete file or folder or the new complete one, never half of
one. One process writes a given path; readers skip dot-prefixed names, and a rerun overwrites a killed write's
temporary.
"""

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn

CONFIG_NAME = "config.json"  # what diffusers' save_pretrained writes into a model folder


def weights_digest(*paths: Path) -> str:
    """The first 16 hex digits of the SHA-256 of these files' bytes, in order: the id of a model's weights."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    """`$GENKIT_CACHE`, else ~/.cache/genkit: cached feature extractors and folder indexes."""
    return Path(os.environ.get("GENKIT_CACHE", Path.home() / ".cache" / "genkit"))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def move_into_place(temporary: Path, path: Path) -> None:
    """Move a completely written file or folder `temporary` to `path`, replacing an older one."""
    if path.is_dir() and not path.is_symlink():
        old = path.with_name(f".{path.name}.old")
        _remove(old)
        os.replace(path, old)
        os.replace(temporary, path)
        shutil.rmtree(old)
    else:
        os.replace(temporary, path)


@contextmanager
def atomic(path: Path) -> Iterator[Path]:
    """The temporary path to write the file or folder `path` under; moved into place only if the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    _remove(temporary)
    try:
        yield temporary
    except BaseException:
        _remove(temporary)
        raise
    move_into_place(temporary, path)


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic(path) as temporary:
        temporary.write_text(text)


def write_json(path: Path, data: dict) -> None:
    """Write `data` as indented JSON to `path` atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def save_pretrained(model: nn.Module, folder: Path) -> None:
    """`model.save_pretrained` (config.json + safetensors) into `folder`, atomically: all of it or the old folder."""
    with atomic(folder) as temporary:
        model.save_pretrained(temporary)


def saved_class(folder: Path) -> str | None:
    """The `_class_name` a saved model folder's config.json names; None when there is no readable one."""
    try:
        return json.loads((Path(folder) / CONFIG_NAME).read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None
