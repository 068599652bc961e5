"""Typed configs: a YAML file naming its `task`, merged onto that task's dataclass, then `key=value` overrides.

Unknown keys, values of the wrong type, invalid choices and numbers outside their declared range fail at load time
with the key's name, before anything is built. Every numeric field declares its range with `ranged`.
"""

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from genkit.configs import shipped
from genkit.errors import GenkitError

# Filled by each trainer module: task name -> its top-level config dataclass.
TASKS: dict[str, type] = {}


@dataclasses.dataclass
class RunConfig:
    """What every run's config starts with: its task, its name, and the folder its run folder is made in."""

    task: str = ""
    name: str = "run"
    output_dir: str = "runs"

    @property
    def run_dir(self) -> Path:
        """<output_dir>/<name>: where the run writes everything."""
        return Path(self.output_dir) / self.name

    def resolved(self) -> "RunConfig":
        """The config with every default that depends on other keys filled in: what a run records and trains with."""
        return self


def register_task(name: str):
    """Class decorator: make a config dataclass loadable as `task: name`."""

    def register(cls: type) -> type:
        TASKS[name] = cls
        return cls

    return register


@dataclasses.dataclass(frozen=True)
class Range:
    """Valid numbers: `minimum`/`maximum` inclusive, `above`/`below` exclusive bounds; none set means any number."""

    minimum: float | None = None
    above: float | None = None
    maximum: float | None = None
    below: float | None = None

    def holds(self, value: float) -> bool:
        return not (
            (self.minimum is not None and value < self.minimum)
            or (self.above is not None and value <= self.above)
            or (self.maximum is not None and value > self.maximum)
            or (self.below is not None and value >= self.below)
        )

    def __str__(self) -> str:
        bounds = [
            f"{word} {bound:g}"
            for word, bound in (
                ("at least", self.minimum),
                ("above", self.above),
                ("at most", self.maximum),
                ("below", self.below),
            )
            if bound is not None
        ]
        return " and ".join(bounds) or "any number"

    def check(self, key: str, value: Any) -> None:
        """GenkitError naming `key` unless the number (or every number of a list) is in range."""
        values = list(value) if isinstance(value, list | tuple) else [value]
        if not all(item is None or self.holds(item) for item in values):
            what = "every entry" if isinstance(value, list | tuple) else "it"
            raise GenkitError(f"config key {key}={value} is out of range: {what} must be {self}")

    def argument(self, kind: Callable[[str], float]) -> Callable[[str], float]:
        """An argparse type: text parsed by `kind`, refused unless in range."""

        def parse(text: str) -> float:
            value = kind(text)
            if not self.holds(value):
                raise argparse.ArgumentTypeError(f"must be {self}, got {text}")
            return value

        parse.__name__ = kind.__name__
        return parse


def ranged(default: Any, minimum=None, above=None, maximum=None, below=None) -> Any:
    """A dataclass field whose numbers lie in Range(minimum, above, maximum, below); a callable default is a factory."""
    metadata = {"range": Range(minimum, above, maximum, below)}
    if callable(default):
        return dataclasses.field(default_factory=default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def check_ranges(node: DictConfig, prefix: str = "") -> None:
    """Every `ranged` field of a structured config, nested ones included, within its range (None is unset)."""
    for field in dataclasses.fields(OmegaConf.get_type(node)):
        value = node[field.name]
        key = f"{prefix}{field.name}"
        if isinstance(value, DictConfig):
            check_ranges(value, f"{key}.")
        elif "range" in field.metadata and value is not None:
            field.metadata["range"].check(key, list(value) if isinstance(value, ListConfig) else value)


def check_choice(key: str, value: Any, choices: tuple) -> None:
    """A config value must be one of `choices`."""
    if value not in choices:
        raise GenkitError(f"config key {key}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}")


def config_path(name: str | Path) -> Path:
    """A config file: `name` itself when it exists, else the shipped config of that name (tokenizer/fsq, or fsq)."""
    path = Path(name)
    if path.is_file():
        return path
    configs = shipped()
    key = str(name).removesuffix(".yaml")
    matches = [configs[key]] if key in configs else [p for k, p in configs.items() if k.split("/")[-1] == key]
    if len(matches) == 1:
        return matches[0]
    raise GenkitError(
        f"config file {name} does not exist and names no single shipped config; pass the path of a YAML file or the "
        "name of a shipped config (genkit train --help lists them)"
    )


def _read_yaml(path: Path) -> dict:
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise GenkitError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(content, dict):
        raise GenkitError(f"config file {path} must hold a mapping of keys to values")
    return content


def _explain(error: OmegaConfBaseException, source: str) -> GenkitError:
    key = getattr(error, "full_key", None) or "?"
    if isinstance(error, ConfigKeyError):
        parent = key.rsplit(".", 1)[0] if "." in key else None
        return GenkitError(f"unknown config key {key!r} in {source}{f' (under {parent})' if parent else ''}")
    message = str(error).splitlines()[0]
    return GenkitError(f"bad value for config key {key!r} in {source}: {message}")


def tasks() -> dict[str, type]:
    """Every task's config class by name (TASKS, once the modules that register them are imported)."""
    # Imported here, not at the top: those modules import this one (and torch, which `genkit --help` avoids).
    import genkit.compare  # noqa: F401
    import genkit.train  # noqa: F401

    return TASKS


def load_config(path: str | Path, overrides: list[str] = ()) -> Any:
    """The dataclass instance for the YAML at `path` (or of a shipped config's name) with `key=value` overrides."""
    tasks()
    path = config_path(path)
    content = _read_yaml(path)
    for override in overrides:
        if "=" not in override:
            raise GenkitError(f"override {override!r} must look like key=value, e.g. train.steps=100")
    task = content.get("task")
    task_overrides = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == "task"]
    task = task_overrides[-1] if task_overrides else task
    if task not in TASKS:
        raise GenkitError(f"config {path} must name its task; task={task!r} is not one of: {', '.join(TASKS)}")
    merged = OmegaConf.structured(TASKS[task])
    for source, layer in (
        (str(path), lambda: OmegaConf.create(content)),
        ("overrides", lambda: OmegaConf.from_dotlist(list(overrides))),
    ):
        try:
            merged = OmegaConf.merge(merged, layer())
        except OmegaConfBaseException as error:
            raise _explain(error, source) from None
        except TypeError as error:  # e.g. a list indexed like a mapping: samplers.distill.0.nfe=...
            raise GenkitError(f"{source} do not fit the config's structure ({error}); set whole lists") from None
    check_ranges(merged)
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise _explain(error, str(path)) from None


def config_dict(config: Any) -> dict:
    """A config dataclass as plain nested dicts (for YAML, trackers and run folders)."""
    return dataclasses.asdict(config)


def flat_config(config: dict) -> dict:
    """Nested config dicts as one level of dotted keys (trackers show flat hyper-parameters)."""
    flat = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        else:
            flat[prefix] = value if isinstance(value, int | float | str | bool) or value is None else str(value)

    walk("", config)
    return flat
