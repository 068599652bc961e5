"""ReFlow pairs: accurate ODE couplings, shard layout, determinism across process counts, resume, corrupt shards."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from launching import launch_on_two_ranks
from safetensors import safe_open
from safetensors.torch import load_file

import samplers
from genkit.errors import GenkitError
from genkit.gaussian_mixture import GaussianMixture
from genkit.train.pairs import PairDataset, generate_pairs

MIXTURE = GaussianMixture.random(3, (2,), seed=0)
# 50 pairs in shards of 16: three full shards and a short last one; batches of 8 split every shard.
SETTINGS = {"num_pairs": 50, "shard_size": 16, "seed": 3}
BATCH_SIZE = 8
SHARDS = [f"pairs_{index:05d}.safetensors" for index in range(4)]


@pytest.fixture(scope="module")
def accelerator():
    """One CPU process on one thread; accelerate's shared state is cleared afterwards so later tests start fresh."""
    # The mixture's tensors are tiny: on a busy machine, waking a second thread costs milliseconds a field call.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clean(accelerator, tmp_path_factory) -> Path:
    """A pairs folder written in one uninterrupted run; tests copy it before changing anything."""
    folder = tmp_path_factory.mktemp("clean") / "pairs"
    generate_pairs(MIXTURE.rectified, (2,), folder, **SETTINGS, accelerator=accelerator, batch_size=BATCH_SIZE)
    return folder


def generate(folder: Path, accelerator: Accelerator, field=MIXTURE.rectified, **changes) -> list[Path]:
    return generate_pairs(
        field, (2,), folder, **{**SETTINGS, **changes}, accelerator=accelerator, batch_size=BATCH_SIZE
    )


def shards(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: load_file(folder / name) for name in SHARDS}


def assert_same_pairs(folder: Path, other: Path) -> None:
    for name, tensors in shards(folder).items():
        other_tensors = load_file(other / name)
        assert torch.equal(tensors["z"], other_tensors["z"]) and torch.equal(tensors["x"], other_tensors["x"]), name


def never_called(x, t):
    raise AssertionError("the field was evaluated although every shard was complete")


def test_pairs_are_accurate_ode_solutions_in_the_promised_layout(clean):
    assert sorted(path.name for path in clean.iterdir()) == sorted([*SHARDS, "pairs.json"])
    manifest = json.loads((clean / "pairs.json").read_text())
    assert manifest == {
        "seed": 3,
        "solver": "reference",
        "nfe": 0,
        "num_pairs": 50,
        "shard_size": 16,
        "shape": [2],
        "shards": SHARDS,
    }
    for index, (name, tensors) in enumerate(shards(clean).items()):
        size = 16 if index < 3 else 2
        assert {key: (value.dtype, value.shape) for key, value in tensors.items()} == {
            "z": (torch.float32, (size, 2)),
            "x": (torch.float32, (size, 2)),
        }
        with safe_open(clean / name, "pt") as handle:
            assert handle.metadata() == {
                "seed": "3",
                "solver": "reference",
                "nfe": "0",
                "num_pairs": "50",
                "shard_size": "16",
                "shape": "[2]",
                "shard": str(index),
            }

    pairs = PairDataset(clean)
    assert len(pairs) == 50
    z, x = pairs.z, pairs.x
    assert torch.equal(pairs[17][0], z[17]) and torch.equal(pairs[17][1], x[17])
    assert len(torch.unique(z, dim=0)) == 50, "every shard draws its own noise"
    # An independent solve of the same noise, in float64 at tight tolerance.
    exact = samplers.reference(MIXTURE.rectified, z.double(), 0.0, 1.0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x.double(), exact, rtol=0, atol=1e-4)
    # Not vacuous: one Euler step, the coupling a coarse solve would give, misses by far more.
    assert (z + MIXTURE.rectified(z, torch.zeros(len(z))) - x).abs().max() > 0.1


def test_regenerating_into_another_folder_gives_identical_pairs(clean, accelerator, tmp_path):
    generate(tmp_path / "again", accelerator)
    assert_same_pairs(clean, tmp_path / "again")


def test_two_processes_write_exactly_the_pairs_of_one(clean, tmp_path):
    worker = Path(__file__).with_name("pairs_worker.py")
    arguments = [str(SETTINGS[key]) for key in ("num_pairs", "shard_size", "seed")] + [str(BATCH_SIZE)]
    result = launch_on_two_ranks(tmp_path, str(worker), str(tmp_path / "two"), *arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_pairs(clean, tmp_path / "two")
    assert (tmp_path / "two" / "pairs.json").read_text() == (clean / "pairs.json").read_text()


def test_a_killed_generation_resumes_at_its_missing_shard(clean, accelerator, tmp_path):
    folder = tmp_path / "killed"
    shutil.copytree(clean, folder)
    # Killed while writing shard 2, before the manifest: only a half-written temporary of it remains.
    (folder / SHARDS[2]).unlink()
    (folder / "pairs.json").unlink()
    (folder / f".{SHARDS[2]}.partial").write_bytes(b"half a shard")
    kept = {name: (folder / name).stat().st_mtime_ns for name in SHARDS if name != SHARDS[2]}

    assert generate(folder, accelerator) == [folder / name for name in SHARDS]
    assert {name: (folder / name).stat().st_mtime_ns for name in kept} == kept
    assert sorted(path.name for path in folder.iterdir()) == sorted([*SHARDS, "pairs.json"]), (
        "the temporary was replaced"
    )
    assert_same_pairs(clean, folder)
    assert (folder / "pairs.json").read_text() == (clean / "pairs.json").read_text()

    # A complete folder is only checked: not one field evaluation.
    generate(folder, accelerator, field=never_called)


def test_a_truncated_shard_is_named_with_the_fix(clean, accelerator, tmp_path):
    folder = tmp_path / "corrupt"
    shutil.copytree(clean, folder)
    shard = folder / SHARDS[1]
    shard.write_bytes(shard.read_bytes()[:-8])
    with pytest.raises(GenkitError, match=f"{shard}.*delete it and rerun to regenerate it"):
        generate(folder, accelerator, field=never_called)
    with pytest.raises(GenkitError, match=f"{shard}.*delete it and rerun to regenerate it"):
        PairDataset(folder)


def test_a_shard_with_the_wrong_count_is_corrupt(clean, accelerator, tmp_path):
    folder = tmp_path / "swapped"
    shutil.copytree(clean, folder)
    # The short last shard under the name of a full one: it opens, its settings match, its content does not.
    shutil.copy(folder / SHARDS[3], folder / SHARDS[0])
    with pytest.raises(GenkitError, match=f"{folder / SHARDS[0]} is corrupt .*holds shard 3, not 0"):
        generate(folder, accelerator, field=never_called)


@pytest.mark.parametrize(
    ("changes", "setting"),
    [
        ({"seed": 4}, "seed=3, not seed=4"),
        ({"solver": "euler", "nfe": 4}, "solver=reference, not solver=euler"),
        ({"num_pairs": 60}, "num_pairs=50, not num_pairs=60"),
        ({"shard_size": 10}, "shard_size=16, not shard_size=10"),
    ],
)
@pytest.mark.parametrize("with_manifest", [True, False])
def test_other_settings_for_an_existing_folder_are_named(clean, accelerator, tmp_path, changes, setting, with_manifest):
    folder = tmp_path / "other"
    shutil.copytree(clean, folder)
    if not with_manifest:
        (folder / "pairs.json").unlink()
    with pytest.raises(GenkitError, match=f"generated with {setting}: use another folder"):
        generate(folder, accelerator, field=never_called, **changes)


def test_another_shape_is_named(clean, accelerator):
    with pytest.raises(GenkitError, match=r"generated with shape=\[2\], not shape=\[3\]"):
        generate_pairs(never_called, (3,), clean, **SETTINGS, accelerator=accelerator)


def test_an_incomplete_folder_asks_for_the_generation(clean, tmp_path):
    with pytest.raises(GenkitError, match="pairs folder .* is incomplete: run the pair generation"):
        PairDataset(tmp_path / "missing")
    folder = tmp_path / "partial"
    shutil.copytree(clean, folder)
    (folder / SHARDS[3]).unlink()
    with pytest.raises(GenkitError, match=f"pairs folder {folder} is incomplete"):
        PairDataset(folder)


def test_one_euler_step_of_the_rectified_mixture_lands_on_the_data_mean(accelerator, tmp_path):
    """docs/rectified_flow.md §2: v(z, 0) = E[X1] - z, so x = z + v(z, 0) is the data mean for every z."""
    generate(tmp_path / "euler", accelerator, solver="euler", nfe=1)
    pairs = PairDataset(tmp_path / "euler")
    velocity = MIXTURE.rectified(pairs.z, torch.zeros(len(pairs)))
    assert torch.equal(pairs.x, pairs.z + velocity)
    mean = (MIXTURE.log_weights.exp()[:, None] * MIXTURE.means).sum(0).float()
    torch.testing.assert_close(pairs.x, mean.expand_as(pairs.x), rtol=0, atol=1e-5)


def test_conditional_pairs_solve_each_pair_at_its_class(accelerator, clean, tmp_path):
    """Pair i carries a class c_i drawn as in the data, and x_i is the map of component c_i alone: the rectified flow
    of N(mu, diag(s^2)) has x_t = t mu + sqrt(t^2 s^2 + (1 - t)^2) z, so it carries z to mu + s z."""
    shares = MIXTURE.log_weights.exp()
    generate(tmp_path / "classes", accelerator, field=MIXTURE.conditional_rectified, frequencies=shares)
    pairs = PairDataset(tmp_path / "classes")
    assert pairs.num_classes == 3 and len(pairs[17]) == 3 and pairs[17][2] == pairs.c[17]
    assert set(pairs.c.tolist()) == {0, 1, 2}
    assert torch.equal(pairs.z, PairDataset(clean).z), "the classes are drawn from their own stream"
    exact = MIXTURE.means[pairs.c] + MIXTURE.variances[pairs.c].sqrt() * pairs.z.double()
    torch.testing.assert_close(pairs.x.double(), exact, rtol=0, atol=1e-4)
    # Not vacuous: the unconditional pairs of the same noise land elsewhere.
    assert (PairDataset(clean).x - pairs.x).abs().max() > 0.1
    with pytest.raises(GenkitError, match="was generated with classes=0, not classes=3"):
        generate(clean, accelerator, field=never_called, frequencies=shares)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"solver": "rk4"}, "unknown pair solver 'rk4'"),
        ({"nfe": 10}, "leave nfe at 0"),
        ({"solver": "heun", "nfe": 0}, "needs nfe >= 1"),
        ({"shard_size": 0}, "must be positive"),
    ],
)
def test_bad_arguments_fail_before_anything_is_written(accelerator, tmp_path, changes, message):
    with pytest.raises(GenkitError, match=message):
        generate(tmp_path / "bad", accelerator, field=never_called, **changes)
    assert not (tmp_path / "bad").exists()
