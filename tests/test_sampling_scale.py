"""`genkit sample` at scale: batches, the PNG folder and npz that FID tools read, and their refusals."""

import json

import numpy as np
import pytest
import torch
import yaml
from launching import genkit
from PIL import Image
from safetensors.torch import load_file

from genkit.config import load_config
from genkit.fields import load_flow_run
from genkit.noise import initial_noise
from genkit.schedules.file import read_schedule
from genkit.train import flow

TRAIN = {"steps": 2, "batch_size": 8, "tracker": "none", "log_every": 2, "eval_every": 100, "ema_decay": 0.0}
DIGITS = {
    "task": "flow",
    "name": "digits",
    "eval_samples": 8,
    "data": {"source": "mnist5k", "image_size": 8},
    "model": {"kind": "unet", "block_channels": [8, 16], "norm_groups": 4},
    "train": TRAIN,
}
POINTS = {
    "task": "flow",
    "name": "points",
    "eval_samples": 8,
    "data": {"source": "gmm", "num_train": 64, "num_val": 16},
    "model": {"kind": "mlp", "hidden": 16, "depth": 1},
    "train": TRAIN,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two-step flows, one on 8x8 digits and one on 2-D points, in one folder."""
    folder = tmp_path_factory.mktemp("sampling")
    for config in (DIGITS, POINTS):
        path = folder / f"{config['name']}.yaml"
        path.write_text(yaml.safe_dump({**config, "output_dir": str(folder / "runs")}))
        flow.train(load_config(path))
    return folder


def sample(folder, *args: str, num: int = 37):
    """`genkit sample` of the digits run with Heun at NFE 4, succeeded."""
    result = genkit(folder, "sample", "runs/digits", "--solver", "heun", "--nfe", "4", "--num", str(num), *args)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def samples(folder) -> torch.Tensor:
    return load_file(folder / "runs" / "digits" / "samples" / "heun_nfe4_uniform_seed0.safetensors")["samples"]


def test_batches_give_the_samples_of_one_batch(runs):
    sample(runs)
    whole = samples(runs)
    sample(runs, "--batch-size", "3")
    in_threes = samples(runs)
    sample(runs, "--batch-size", "3", num=8)
    # Batch k holds samples 3k..3k+2 for any sample count: a prefix is computed by exactly the same operations.
    assert torch.equal(samples(runs), in_threes[:8])
    # One batch runs the same float32 operations per sample in convolutions and GEMMs of another row count, whose
    # kernels may round differently (measured: up to 6e-7 here); a wrong noise index or sample order moves ~1.
    assert in_threes.shape == whole.shape == (37, 1, 8, 8)
    torch.testing.assert_close(in_threes, whole, rtol=0, atol=1e-5)


def test_png_folder_and_npz_hold_the_quantised_samples(runs):
    stem = runs / "runs" / "digits" / "samples" / "heun_nfe4_uniform_seed0"
    sample(runs, "--batch-size", "5")
    expected = ((samples(runs) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    result = sample(runs, "--batch-size", "5", "--format", "png")
    assert result.stdout == f"37 samples on 1 process(es): {stem.relative_to(runs)}, {stem.relative_to(runs)}.png\n"
    names = sorted(path.name for path in stem.iterdir())
    assert names == [f"{index:06d}.png" for index in range(37)]
    images = np.stack([np.asarray(Image.open(stem / name)) for name in names])
    np.testing.assert_array_equal(images[..., None], expected)
    sample(runs, "--batch-size", "5", "--format", "npz")
    with np.load(f"{stem}.npz") as archive:
        assert archive.files == ["arr_0"]
        np.testing.assert_array_equal(archive["arr_0"], expected)
    written = {path.name for path in stem.parent.iterdir()}  # the finished npz replaced its .partial
    assert written == {stem.name + end for end in ("", ".npz", ".png", ".safetensors")}
    # A smaller count leaves none of the earlier images behind for an FID tool to read.
    sample(runs, "--format", "png", num=3)
    assert sorted(path.name for path in stem.iterdir()) == ["000000.png", "000001.png", "000002.png"]


def test_a_bad_format_and_points_as_images_are_one_line(runs):
    bad = genkit(runs, "sample", "runs/digits", "--format", "jpg")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and "invalid choice: 'jpg'" in bad.stderr
    points = genkit(runs, "sample", "runs/points", "--format", "npz")
    assert points.returncode == 2 and points.stderr.splitlines() == [
        "genkit: error: --format npz writes uint8 images for FID tools; this run samples points of shape (2,): "
        "use --format safetensors"
    ]


def test_a_saved_schedule_samples_on_its_timesteps_and_another_fields_is_refused(runs):
    search = ["schedule", "search", "runs/digits", "--solver", "euler", "--nfe", "3", "--grid-points", "12"]
    searched = genkit(runs, *search, "--samples", "8", "--out", "gits.json")
    assert searched.returncode == 0, searched.stderr[-2000:]
    result = genkit(runs, "sample", "runs/digits", "--solver", "euler", "--schedule", "gits.json", "--num", "5")
    assert result.returncode == 0, result.stderr[-2000:]
    saved = read_schedule(runs / "gits.json")
    stem = f"euler_nfe3_{saved.name}_seed0"
    drawn = load_file(runs / "runs" / "digits" / "samples" / f"{stem}.safetensors")["samples"]
    field = load_flow_run(runs / "runs" / "digits", torch.device("cpu"))
    # Sample i starts from the generator seeded by SeedSequence([seed, i]) (genkit/noise.py), here seed 0.
    seeds = [int(np.random.SeedSequence([0, i]).generate_state(1, np.uint64)[0]) for i in range(5)]
    noise = torch.stack([torch.randn(field.shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    torch.testing.assert_close(drawn, field.solve(noise, "euler", None, saved), rtol=0, atol=1e-5)
    wrong_nfe = genkit(runs, "sample", "runs/digits", "--schedule", "gits.json", "--nfe", "4", "--num", "2")
    assert wrong_nfe.returncode == 2 and "gives euler 3 evaluations, not --nfe 4" in wrong_nfe.stderr
    other = genkit(runs, "sample", "runs/points", "--schedule", "gits.json", "--num", "2")
    assert other.returncode == 2 and "was made for field" in other.stderr.splitlines()[-1]


class MeanColour(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


def test_compare_reports_the_excess_fd_over_the_reference_solve(runs):
    extractor = runs / "mean_colour.pt"
    torch.jit.script(MeanColour()).save(str(extractor))
    grid = {"field": {"kind": "flow_run", "path": "runs/digits"}, "solvers": ["euler", "heun"], "nfe": [4]}
    grid |= {"metrics": ["rmse", "fd"], "extractor": "torchscript", "extractor_path": str(extractor)}
    grid |= {"reference_tolerance": 1e-3, "reference_method": "RK45"}  # cheap: the excess is exact for any reference
    config = {"task": "compare", "name": "excess", "num_samples": 12, "tracker": "none"}
    (runs / "excess.yaml").write_text(yaml.safe_dump({**config, "samplers": grid | {"reference_row": True}}))
    result = genkit(runs, "compare", "excess.yaml", f"output_dir={runs / 'runs'}")
    assert result.returncode == 0, result.stderr[-2000:]
    table = json.loads((runs / "runs" / "excess" / "comparison.json").read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["rows"]]
    reference = rows[-1]
    assert reference["method"].startswith("reference") and reference["excess_fd"] == 0.0
    for row in rows[:-1]:
        assert row["excess_fd"] == pytest.approx(row["fd"] - reference["fd"], rel=1e-12, abs=1e-12)
    assert table["columns"].index("excess_fd") == table["columns"].index("fd") + 1


def test_a_learned_solver_samples_with_its_own_solver_and_another_is_refused(runs):
    learn = ["schedule", "learn", "runs/digits", "--solver", "ipndm", "--nfe", "3", "--corrections", "--steps", "3"]
    learned = genkit(runs, *learn, "--samples", "8", "--teacher-steps", "4", "--out", "learned.json")
    assert learned.returncode == 0, learned.stderr[-2000:]
    result = genkit(runs, "sample", "runs/digits", "--schedule", "learned.json", "--num", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    saved = read_schedule(runs / "learned.json")
    drawn = load_file(runs / "runs" / "digits" / "samples" / f"ipndm_nfe3_{saved.name}_seed0.safetensors")["samples"]
    field = load_flow_run(runs / "runs" / "digits", torch.device("cpu"))
    noise = initial_noise([0, 1, 2], field.shape, 0)
    torch.testing.assert_close(drawn, field.solve(noise, "ipndm", 3, saved), rtol=0, atol=1e-5)
    other = genkit(runs, "sample", "runs/digits", "--solver", "euler", "--schedule", "learned.json", "--num", "2")
    assert other.returncode == 2 and other.stderr.splitlines()[-1].endswith("solve it with ipndm, not euler")
