"""docs/architecture.md stays true: it names every module, and its layers table says who may import whom."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "architecture.md").read_text()
PACKAGES = ("genkit", "samplers", "tokenizers_img")


def modules() -> list[str]:
    """Every module file of the three packages, as a repository path (genkit/configs is the configs/ folder)."""
    return sorted(str(path.relative_to(ROOT)) for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def layers() -> list[list[str]]:
    """The module paths of each row of the layers table, top (may import anything below) to bottom."""
    section = DOC.split("## Layers inside `genkit/`")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| layer")]
    return [re.findall(r"`(genkit/[\w/]+(?:\.py|/))`", row) for row in rows]


def module_name(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def top_level_imports(path: str) -> set[str]:
    """The genkit modules `path` imports at import time (imports inside functions are lazy and left out)."""
    names = set()
    for node in ast.parse((ROOT / path).read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("genkit"):
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("genkit")}
    return names


def test_every_module_is_named_in_the_architecture_doc():
    missing = [path for path in modules() if f"`{path}`" not in DOC]
    assert not missing, f"docs/architecture.md does not name {missing}"


def test_every_genkit_module_imports_only_its_own_layer_or_lower():
    layer_of, path_of = {}, {}
    for index, row in enumerate(layers()):
        for entry in row:
            for path in [p for p in modules() if p.startswith(entry)] if entry.endswith("/") else [entry]:
                layer_of[module_name(path)], path_of[module_name(path)] = index, path
    placed = {module_name(path) for path in modules() if path.startswith("genkit/")}
    assert placed <= set(layer_of), f"not in the layers table: {sorted(placed - set(layer_of))}"
    upward = [
        (name, imported)
        for name, index in layer_of.items()
        for imported in top_level_imports(path_of[name])
        if imported in layer_of and layer_of[imported] < index
    ]
    assert not upward, f"modules that import a higher layer: {upward}"
