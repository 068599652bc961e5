"""`genkit compare` on an analytic field: the table's rows and values, plots, grids, W&B files; mistakes fail early."""

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from launching import genkit, genkit_on_two_ranks, launch_on_two_ranks

from genkit.gaussian_mixture import GaussianMixtureField
from genkit.generate import initial_noise
from genkit.metrics import FeatureStatistics
from samplers import reference, sample

HERE = Path(__file__).resolve().parent
CONFIG = {
    "task": "compare",
    "name": "three",
    "subject": "samplers",
    "field": {"kind": "mixture", "components": 4, "shape": [8], "seed": 1},
    "solvers": ["euler", "heun", "dpmpp_2m"],
    "nfe": [3, 6],
    "schedules": ["karras"],
    "num_samples": 40,
    "seed": 2,
    "metrics": ["rmse"],
    "reference_tolerance": 1e-9,
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
    assert [(r[0], r[3]) for r in rows] == [(s, n) for s in ("euler", "heun", "dpmpp_2m") for n in (3, 6)]
    field = GaussianMixtureField.random(4, (8,), seed=1, diagonal=True)
    noise = 80 * initial_noise(list(range(40)), (8,), 2).double()
    target = reference(field.edm, noise, 80.0, 0.002, rtol=1e-9, atol=1e-9)
    for row in rows:
        cell = dict(zip(columns, row, strict=True))
        if cell["method"] == "heun" and cell["nfe"] == 3:
            assert cell["rmse"] is None and cell["nfe_counted"] == 0  # two evaluations a step: 3 is out of reach
            continue
        out = sample(field.edm, noise, cell["solver"], cell["nfe"], schedule="karras")
        assert cell["rmse"] == pytest.approx((out - target).pow(2).mean().sqrt().item(), rel=1e-9)
        assert cell["nfe_counted"] == cell["nfe"] and cell["num_samples"] == 40 and cell["seed"] == 2
        assert cell["field"].startswith("gmm(") and cell["reference"] == "DOP853 rtol=atol=1e-09"
    assert (run / "comparison.csv").read_text().splitlines()[0].startswith("method,solver,schedule,nfe,rmse")
    assert (run / "plots" / "rmse_vs_nfe.png").stat().st_size > 0
    assert len(list((run / "grids").glob("*.png"))) == 5
    media = [p.relative_to(run) for p in (run / "wandb").rglob("media/*/*") if p.is_file()]
    assert any("table/comparison" in str(p) for p in media) and any("rmse_vs_nfe" in str(p) for p in media)
    assert "dpmpp_2m" in result.stdout and "rmse" in result.stdout


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["solvers=[euler,unipc]"], "solvers='unipc' is not valid"),
        (["field.kind=flow_run", "field.path=runs/missing"], "holds no trained velocity model"),
        (["metrics=[rmse,fd]"], "metric fd needs image samples"),
        (["metrics=[fd]", "extractor=torchscript"], "extractor: torchscript needs extractor_path"),
        (["metrics=[fd]", "extractor=inception"], "genkit does not download Inception weights"),
        (["predictors=[runs/none]"], "is not a saved model folder"),
    ],
)
def test_mistakes_fail_at_start_with_one_line(tmp_path, overrides, expected):
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


def train_runs(folder: Path, base: dict, variants: dict[str, dict]) -> list[str]:
    """Train tiny runs in-process, one per variant (dotted keys merged into `base`); their folders."""
    from genkit.config import load_config
    from genkit.train import gan
    from genkit.train import tokenizer as tokenizer_training

    runs = []
    for name, changes in variants.items():
        config = {**base, "name": name, "output_dir": str(folder / "runs")}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(config))
        overrides = [f"{key}={value}" for key, value in changes.items()]
        loaded = load_config(folder / f"{name}.yaml", overrides)
        (gan.train if loaded.task == "gan" else tokenizer_training.train)(loaded)
        runs.append(str(folder / "runs" / name))
    return runs


def test_tokenizer_and_gan_runs_are_compared_on_the_same_inputs(tmp_path):
    tokenizers = train_runs(
        tmp_path,
        TOKENIZER,
        {
            "fsq": {"model.quantizer.kind": "fsq", "model.quantizer.levels": "[5,5,5,5]"},
            "vq": {"model.quantizer.kind": "vq"},
        },
    )
    config = {"task": "compare", "name": "tok", "subject": "tokenizers", "runs": tokenizers, "num_samples": 8}
    result = compare(tmp_path, config, "tracker=none")
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads((tmp_path / "runs" / "tok" / "comparison.json").read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["rows"]]
    assert [(r["method"], r["codebook_size"]) for r in rows] == [("fsq", 625), ("vq", 1024)]
    assert all(r["psnr"] > 0 and -1 < r["ssim"] < 1 and 0 < r["codebook_usage"] <= 1 for r in rows)
    assert (tmp_path / "runs" / "tok" / "plots" / "psnr_vs_codebook_size.png").exists()

    gans = train_runs(tmp_path, GAN, {"mono": {"gan.method": "monoflow"}, "gp": {"gan.method": "wgan_gp"}})
    config = {"task": "compare", "name": "gans", "subject": "gans", "runs": gans, "num_samples": 64}
    result = compare(tmp_path, config, "tracker=none")
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads((tmp_path / "runs" / "gans" / "comparison.json").read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["rows"]]
    assert [r["method"] for r in rows] == ["monoflow(non_saturating)", "wgan_gp"]
    assert all(r["sliced_wasserstein"] > 0 and r["energy_distance"] > 0 for r in rows)
    assert len(list((tmp_path / "runs" / "gans" / "grids").glob("*.png"))) == 2
    missing = compare(tmp_path, {**config, "runs": [str(tmp_path / "nothing")]}, "tracker=none")
    assert missing.returncode == 2 and "not a finished GAN run" in missing.stderr


def test_an_amed_predictor_is_one_more_cell_at_its_own_nfe_and_two_ranks_agree_with_one(tmp_path):
    from genkit.config import load_config
    from genkit.train import amed as amed_training

    distil = {
        "task": "amed",
        "name": "amed",
        "output_dir": str(tmp_path / "runs"),
        "num_samples": 256,
        "field": CONFIG["field"],
        "train": {"steps": 2, "batch_size": 128, "tracker": "none", "eval_every": 2},
    }
    (tmp_path / "amed.yaml").write_text(yaml.safe_dump(distil))
    amed_training.train(load_config(tmp_path / "amed.yaml"))
    config = {**CONFIG, "solvers": ["euler"], "nfe": [5], "predictors": [str(tmp_path / "runs" / "amed" / "model")]}
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
