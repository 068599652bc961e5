"""ReFlow step 1 (docs/rectified_flow.md §3): couplings (z, x = Z1(z)) from an ODE solve, stored as safetensors shards.

Shard k holds pairs [k * shard_size, min((k + 1) * shard_size, num_pairs)); its noise comes from a generator
seeded by (seed, k) alone, so a folder's content does not depend on how many processes wrote it or on how
often generation was resumed. Process r of P writes the shards k with k % P == r, each under a dot-prefixed
temporary name renamed into place, so a shard file that exists is complete.

A class-conditional model's pairs (`frequencies` given) carry a class each: c ~ Categorical(frequencies), drawn
as in its training data from a generator seeded by (seed, k, 1), and x = Z1(z) solves the model at class c (guidance
weight 1), so a ReFlow of a conditional flow stays conditional.

Folder layout:
    pairs_00000.safetensors ...   tensors "z" and "x", float32 [n, *shape] (and "c", int64 [n]: the classes); metadata:
                                  the settings and "shard"
    pairs.json                    the settings and the shard names, written last: the folder is complete
"""

import json
import math
from collections.abc import Callable
from pathlib import Path

import accelerate
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import Dataset

import samplers
from genkit.errors import GenkitError
from genkit.files import atomic, write_json
from genkit.noise import CONDITION_KEY, generator
from genkit.progress import progress
from samplers.velocity import Velocity

# As the RectifiedFlow code generates its pairs: scipy RK45 at rtol = atol = 1e-5. Reflow needs an accurate
# solve; a coarse one bakes solver error into the coupling (docs/rectified_flow.md §8).
REFERENCE_METHOD = "RK45"
REFERENCE_TOLERANCE = 1e-5
MANIFEST_NAME = "pairs.json"
SETTINGS = ("seed", "solver", "nfe", "num_pairs", "shard_size", "shape")
CLASSES = "classes"  # a setting of conditional pairs only: K, the number of classes (absent: unconditional pairs)


def shard_names(num_pairs: int, shard_size: int) -> list[str]:
    """File names of the ceil(num_pairs / shard_size) shards, in pair order."""
    return [f"pairs_{index:05d}.safetensors" for index in range(math.ceil(num_pairs / shard_size))]


def _shard_noise(seed: int, index: int, count: int, shape: tuple[int, ...]) -> Tensor:
    """z ~ N(0, I) of shard `index`, [count, *shape] on the CPU: a function of (seed, index, count, shape) only."""
    return torch.randn((count, *shape), generator=generator(seed, index))


def _shard_classes(seed: int, index: int, count: int, frequencies: Tensor) -> Tensor:
    """The classes c [count] of shard `index`, drawn as in the data: a function of (seed, index, count) only."""
    return torch.multinomial(frequencies, count, replacement=True, generator=generator(seed, index, CONDITION_KEY))


def at_classes(field: Callable[[Tensor, Tensor, Tensor], Tensor], c: Tensor) -> Velocity:
    """The conditional field(x, t, c) at the fixed classes c of a batch: a plain velocity."""
    return lambda x, t: field(x, t, c)


def _solve(field: Velocity, z: Tensor, solver: str, nfe: int) -> Tensor:
    """x(1) of dx/dt = field(x, t) from x(0) = z."""
    if solver == "reference":
        return samplers.reference(
            field, z, 0.0, 1.0, rtol=REFERENCE_TOLERANCE, atol=REFERENCE_TOLERANCE, method=REFERENCE_METHOD
        )
    return samplers.solve(field, z, solver, nfe, schedule="uniform")


def _read_manifest(folder: Path) -> dict | None:
    """The manifest of a pairs folder, None when there is none yet."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise GenkitError(f"{path} is corrupt ({error}): delete it and rerun the pair generation") from None
    if not isinstance(manifest, dict) or any(key not in manifest for key in SETTINGS):
        raise GenkitError(f"{path} lacks the generation settings: delete it and rerun the pair generation")
    return manifest


def _check_settings(found: dict, settings: dict, source: Path) -> None:
    """GenkitError naming the first setting in which `found` (manifest or shard metadata) differs from `settings`."""
    for key in (*SETTINGS, CLASSES):
        # Shard metadata holds strings; str() of the manifest's and the requested values gives the same spelling.
        if str(found.get(key, 0)) != str(settings.get(key, 0)):
            raise GenkitError(
                f"{source} was generated with {key}={found.get(key, 0)}, not {key}={settings.get(key, 0)}: "
                "use another folder, or the settings it was generated with"
            )


def _check_shard(path: Path, settings: dict, index: int) -> None:
    """GenkitError unless `path` opens and is the complete shard `index` of a generation with `settings`."""

    def corrupt(reason: str) -> GenkitError:
        return GenkitError(f"pairs shard {path} is corrupt ({reason}): delete it and rerun to regenerate it")

    try:
        with safe_open(path, "pt") as handle:
            metadata = handle.metadata() or {}
            names = handle.keys()  # a safe_open handle is not iterable
            tensors = {name: (handle.get_slice(name).get_dtype(), handle.get_slice(name).get_shape()) for name in names}
    except (SafetensorError, OSError) as error:
        raise corrupt(str(error)) from None
    if any(key not in metadata for key in (*SETTINGS, "shard")):
        raise corrupt("its metadata lacks the generation settings")
    _check_settings(metadata, settings, path)
    if metadata["shard"] != str(index):
        raise corrupt(f"it holds shard {metadata['shard']}, not {index}")
    count = min(settings["shard_size"], settings["num_pairs"] - index * settings["shard_size"])
    expected = {"z": ("F32", [count, *settings["shape"]]), "x": ("F32", [count, *settings["shape"]])}
    expected |= {"c": ("I64", [count])} if settings.get(CLASSES) else {}
    if tensors != expected:
        raise corrupt(f"it holds {tensors}, expected {expected}")


def _write_shard(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Write one shard atomically: a killed write leaves only the dot-prefixed temporary, which a rerun overwrites."""
    with atomic(path) as temporary:
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, temporary, metadata=metadata)


def check_solver(solver: str, nfe: int) -> None:
    """`reference` (adaptive, nfe 0) or a fixed-step solver with nfe >= 1 evaluations."""
    if solver != "reference" and solver not in samplers.SOLVERS:
        raise GenkitError(f"unknown pair solver {solver!r}; choose reference or one of: {', '.join(samplers.SOLVERS)}")
    if solver == "reference" and nfe != 0:
        raise GenkitError(f"the reference solver picks its own steps: leave nfe at 0, not {nfe}")
    if solver != "reference" and nfe < 1:
        raise GenkitError(f"solver {solver} needs nfe >= 1 field evaluations, got nfe={nfe}")


def generate_pairs(
    field: Velocity,
    shape: tuple[int, ...],
    folder: Path,
    num_pairs: int,
    shard_size: int,
    seed: int,
    accelerator: accelerate.Accelerator | accelerate.PartialState,
    solver: str = "reference",
    nfe: int = 0,
    batch_size: int = 256,
    frequencies: Tensor | None = None,
) -> list[Path]:
    """Write `num_pairs` pairs (z ~ N(0, I) of `shape`, x = ODE solution at t=1 from z at t=0) to `folder`.

    With `frequencies` (the class shares of a conditional `field(x, t, c)`'s data), pair i also gets its class c_i and
    x_i solves the field at c_i.

    Call it on every process, with an Accelerator or a bare PartialState (only its ranks and device are used).
    It returns the shard paths once the whole folder, manifest included, is written.
    Complete shards already there are kept, so a killed generation resumes at its missing shards.
    """
    check_solver(solver, nfe)
    if min(num_pairs, shard_size, batch_size) < 1 or seed < 0:
        raise GenkitError(
            f"num_pairs, shard_size and batch_size must be positive and seed non-negative, got num_pairs={num_pairs}, "
            f"shard_size={shard_size}, batch_size={batch_size}, seed={seed}"
        )
    folder = Path(folder)
    settings = {
        "seed": seed,
        "solver": solver,
        "nfe": nfe,
        "num_pairs": num_pairs,
        "shard_size": shard_size,
        "shape": list(shape),
    } | ({} if frequencies is None else {CLASSES: len(frequencies)})
    names = shard_names(num_pairs, shard_size)

    # Every process checks the whole folder before any writes, so a bad folder fails on all of them alike
    # instead of leaving one waiting at the barrier.
    manifest = _read_manifest(folder)
    if manifest is not None:
        _check_settings(manifest, settings, folder / MANIFEST_NAME)
    done = set()
    for index, name in enumerate(names):
        if (folder / name).exists():
            _check_shard(folder / name, settings, index)
            done.add(index)

    folder.mkdir(parents=True, exist_ok=True)
    metadata = {key: str(value) for key, value in settings.items()}
    mine = [k for k in range(accelerator.process_index, len(names), accelerator.num_processes) if k not in done]
    with torch.no_grad():
        for index in progress(mine, desc="pairs", unit="shard", disable=not accelerator.is_main_process):
            count = min(shard_size, num_pairs - index * shard_size)
            z = _shard_noise(seed, index, count, tuple(shape))
            tensors = {"z": z}
            if frequencies is not None:
                tensors["c"] = _shard_classes(seed, index, count, frequencies)
            x = []
            for start in range(0, count, batch_size):
                batch = z[start : start + batch_size].to(accelerator.device)
                velocity = field
                if frequencies is not None:
                    velocity = at_classes(field, tensors["c"][start : start + batch_size].to(accelerator.device))
                x.append(_solve(velocity, batch, solver, nfe).to(device="cpu", dtype=torch.float32))
            _write_shard(folder / names[index], tensors | {"x": torch.cat(x)}, {**metadata, "shard": str(index)})

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(folder / MANIFEST_NAME, {**settings, "shards": names})
    # No process returns before the manifest exists: a PairDataset opened right after must find it.
    accelerator.wait_for_everyone()
    return [folder / name for name in names]


class PairDataset(Dataset):
    """All (z, x) pairs (or (z, x, c) triples of conditional pairs) of a complete folder written by `generate_pairs`,
    each shard validated as it is loaded."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        incomplete = GenkitError(f"pairs folder {folder} is incomplete: run the pair generation (stage) first")
        manifest = _read_manifest(folder)
        if manifest is None:
            raise incomplete
        settings = {key: manifest[key] for key in SETTINGS} | {CLASSES: manifest.get(CLASSES, 0)}
        shards = []
        for index, name in enumerate(shard_names(settings["num_pairs"], settings["shard_size"])):
            if not (folder / name).is_file():
                raise incomplete
            _check_shard(folder / name, settings, index)
            shards.append(load_file(folder / name))
        self.z = torch.cat([shard["z"] for shard in shards])
        self.x = torch.cat([shard["x"] for shard in shards])
        self.c = torch.cat([shard["c"] for shard in shards]) if settings[CLASSES] else None
        self.num_classes = settings[CLASSES]

    def __len__(self) -> int:
        return len(self.z)

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        return (self.z[index], self.x[index]) if self.c is None else (self.z[index], self.x[index], self.c[index])
