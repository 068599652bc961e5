"""The configs genkit ships, one YAML file a recipe: installed with the package as `genkit.configs`."""

from importlib.resources import files
from pathlib import Path


def shipped() -> dict[str, Path]:
    """Every shipped config by its name, the path below configs/ without .yaml (e.g. tokenizer/fsq)."""
    root = Path(str(files(__name__)))
    return {str(path.relative_to(root).with_suffix("")): path for path in sorted(root.glob("*/*.yaml"))}
