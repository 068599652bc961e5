"""Conditional models end to end: a class-conditional digit flow trained with label dropout, sampled by class and
guidance; AMED, GITS and compare on a mixture conditioned on its component; one line for each bad input."""

import json
from types import SimpleNamespace

import pytest
import torch
import yaml
from launching import genkit, genkit_on_two_ranks
from safetensors.torch import load_file

from genkit.config import load_config
from genkit.data import DataConfig, label_frequencies
from genkit.errors import GenkitError
from genkit.fields import FieldConfig, load_flow_run
from genkit.guidance import Guidance
from genkit.models import load_velocity_model
from genkit.noise import initial_noise
from genkit.predictors import load_distilled
from genkit.runs import Run
from genkit.schedules.file import load_schedule, save_schedule
from genkit.schedules.gits import search_schedule
from genkit.schedules.ld3 import learn_schedule
from genkit.train import flow
from genkit.train.flow import FlowConfig, FlowTrainer, drop_labels
from genkit.train.pairs import PairDataset
from samplers import euler, reference, uniform

TRAIN = {"steps": 3, "batch_size": 8, "tracker": "none", "log_every": 3, "eval_every": 100, "ema_decay": 0.0}
DIGITS = {
    "task": "flow",
    "name": "digits",
    "eval_samples": 8,
    "data": {"source": "mnist5k", "image_size": 8},
    "model": {"kind": "unet", "block_channels": [8, 16], "norm_groups": 4},
    "flow": {"conditional": True, "label_dropout": 0.2},
    "train": TRAIN,
}
POINTS = {
    "task": "flow",
    "name": "points",
    "eval_samples": 8,
    "data": {"source": "moons", "num_train": 64, "num_val": 16},
    "model": {"kind": "mlp", "hidden": 16, "depth": 1},
    "train": TRAIN,
}
MIXTURE = {"kind": "mixture", "components": 4, "shape": [8], "seed": 1, "conditional": True}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A three-step class-conditional flow on 8x8 digits and an unconditional one on points."""
    folder = tmp_path_factory.mktemp("conditional")
    for config in (DIGITS, POINTS):
        path = folder / f"{config['name']}.yaml"
        path.write_text(yaml.safe_dump({**config, "output_dir": str(folder / "runs")}))
        flow.train(load_config(path))
    return folder


def test_snap_on_a_flow_on_images_is_one_line(runs):
    with pytest.raises(GenkitError, match="holds a flow on images, not on a tokenizer's latents"):
        FieldConfig(kind="flow_run", path=str(runs / "runs" / "digits"), snap=True).load()


def test_label_dropout_replaces_the_configured_share_by_the_null_class():
    """Over 200 micro-batches of 100 of the trainer's own draws, keyed by the stream position."""
    trainer = SimpleNamespace(seed=0, flow=FlowConfig(conditional=True, label_dropout=0.2))
    labels, nulls = torch.arange(10).repeat(10), 0
    for position in range(200):
        context = SimpleNamespace(process_index=0, num_processes=1, position=position, to_device=lambda x: x)
        _, _, uniforms = FlowTrainer.draws(trainer, context, torch.zeros(100, 2))
        dropped = drop_labels(labels, 0.2, null=10, uniforms=uniforms)
        kept = dropped != 10
        assert torch.equal(dropped[kept], labels[kept])
        nulls += int((~kept).sum())
    # 20000 Bernoulli(0.2) draws: standard error 0.0028; the margin is 5 of them.
    assert nulls / 20_000 == pytest.approx(0.2, abs=0.014)
    assert torch.equal(drop_labels(labels, 0.0, null=10, uniforms=uniforms), labels)


def test_a_conditional_flow_keeps_its_class_shares_and_samples_each_class_as_its_bound_field(runs):
    run = Run(runs / "runs" / "digits")
    shares = torch.tensor(json.loads(run.classes.read_text())["frequencies"], dtype=torch.float64)
    torch.testing.assert_close(shares, label_frequencies(DataConfig(source="mnist5k", image_size=8)))
    assert shares.sum().item() == pytest.approx(1.0)
    model = load_flow_run(run.folder)
    assert model.conditioning.num_classes == 10
    z = initial_noise(list(range(6)), (1, 8, 8), 0)
    for arguments, classes, name in [
        (["--class", "3"], torch.full((6,), 3), "euler_nfe2_uniform_class3_w2"),
        (["--classes", "all"], torch.arange(6) % 10, "euler_nfe2_uniform_classes_all_w2"),
    ]:
        result = genkit(runs, "sample", str(run.folder), "--nfe", "2", "--num", "6", "--guidance", "2", *arguments)
        assert result.returncode == 0, result.stderr[-2000:]
        samples = load_file(run.samples / f"{name}_seed0.safetensors")["samples"]
        expected = model.bind(classes, Guidance(2.0)).solve(z, "euler", 2, "uniform")
        torch.testing.assert_close(samples, expected)
    # Classes drawn as in the data, per sample: the same draws whatever the batch.
    result = genkit(runs, "sample", str(run.folder), "--nfe", "2", "--num", "6", "--batch-size", "4")
    assert result.returncode == 0, result.stderr[-2000:]
    samples = load_file(run.samples / "euler_nfe2_uniform_classes_data_w1_seed0.safetensors")["samples"]
    expected = model.bind(model.draw_conditions(list(range(6)), 0)).solve(z, "euler", 2, "uniform")
    torch.testing.assert_close(samples, expected, rtol=1e-5, atol=1e-5)


def test_guided_samples_are_the_same_on_one_or_two_processes(runs):
    arguments = ["sample", "runs/digits", "--nfe", "3", "--num", "7", "--batch-size", "3", "--guidance", "2"]
    one = genkit(runs, *arguments)
    assert one.returncode == 0, one.stderr[-2000:]
    path = runs / "runs" / "digits" / "samples" / "euler_nfe3_uniform_classes_data_w2_seed0.safetensors"
    single = load_file(path)["samples"]
    path.unlink()
    two = genkit_on_two_ranks(runs, *arguments)
    assert two.returncode == 0 and "on 2 process(es)" in two.stdout, two.stderr[-2000:]
    # Batch k holds samples 3k..3k+2 at their own classes on any number of processes: the same operations, up to the
    # float32 round-off of convolutions that a launched process (one thread) sums in another order than this one; a
    # wrong class or noise index moves samples by ~1.
    torch.testing.assert_close(load_file(path)["samples"], single, rtol=0, atol=1e-4)


def test_a_reflow_of_a_conditional_flow_stays_conditional(tmp_path):
    config = {
        "task": "reflow",
        "name": "reflow",
        "output_dir": str(tmp_path / "runs"),
        "eval_samples": 8,
        "reflow_steps": 3,
        "conditional": True,
        "label_dropout": 0.2,
        "data": DIGITS["data"],
        "model": DIGITS["model"],
        "pairs": {"num_pairs": 12, "shard_size": 8, "solver": "euler", "nfe": 2, "batch_size": 4},
        "train": TRAIN,
    }
    (tmp_path / "reflow.yaml").write_text(yaml.safe_dump(config))
    result = genkit(tmp_path, "train", "reflow.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    root = tmp_path / "runs" / "reflow"
    pairs = PairDataset(root / "pairs-1")
    assert pairs.num_classes == 10 and pairs.c.shape == (12,)
    # x_i is the first flow's Euler solve at pair i's class.
    first = load_velocity_model(Run(root / "1-rf").model)
    with torch.no_grad():
        expected = euler(lambda x, t: first(x, t, pairs.c), pairs.z, uniform(3))
    torch.testing.assert_close(pairs.x, expected, rtol=1e-5, atol=1e-5)
    second = load_flow_run(root)
    assert Run(root).last_stage.folder.name == "2-rf" and second.conditioning.num_classes == 10


@pytest.mark.parametrize(
    ("run", "arguments", "expected"),
    [
        ("digits", ["--class", "10"], "class 10 is out of range: the model has classes 0..9"),
        ("points", ["--guidance", "2"], "holds an unconditional model: drop --class, --classes and --guidance"),
        ("digits", ["--guidance", "-1"], "the guidance weight must be >= 0"),
    ],
)
def test_bad_classes_and_guidance_are_one_line(runs, run, arguments, expected):
    result = genkit(runs, "sample", f"runs/{run}", "--nfe", "2", "--num", "2", *arguments)
    assert result.returncode == 2 and expected in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_guidance_for_an_unconditional_field_is_one_line(tmp_path):
    config = amed_config(tmp_path, 2.0)
    config["field"] = {**MIXTURE, "conditional": False, "guidance": 2.0}
    (tmp_path / "amed.yaml").write_text(yaml.safe_dump(config))
    result = genkit(tmp_path, "train", "amed.yaml")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "field.guidance and field.guidance_interval apply to conditional models" in result.stderr


def amed_config(folder, guidance: float) -> dict:
    return {
        "task": "amed",
        "name": f"w{guidance:g}",
        "output_dir": str(folder / "runs"),
        "num_samples": 256,
        "field": {**MIXTURE, "guidance": guidance},
        "amed": {"num_steps": 4, "schedule": "time_uniform", "afs": True, "teacher_steps": 1},
        "train": {"steps": 10, "batch_size": 64, "tracker": "none", "log_every": 10, "eval_every": 1000},
    }


def test_amed_distils_on_the_guided_field_and_refuses_another_guidance(tmp_path):
    (tmp_path / "amed.yaml").write_text(yaml.safe_dump(amed_config(tmp_path, 2.0)))
    result = genkit(tmp_path, "train", "amed.yaml")
    assert result.returncode == 0, result.stderr[-2000:]
    model = FieldConfig(**MIXTURE).load()
    labels = model.draw_conditions(list(range(64)), 5)
    guided = model.bind(labels, Guidance(2.0))
    distilled = load_distilled(tmp_path / "runs" / "w2" / "model", guided)
    assert distilled.predictor.config.field_id == guided.field_id and guided.field_id.endswith("guided(w=2)")
    made_for = {"guidance": "guided(w=2)", "conditions": "classes drawn as in the training data"}
    assert distilled.predictor.config.made_for == made_for
    with pytest.raises(GenkitError, match=r"made for guided\(w=2\), not guided\(w=4\)"):
        load_distilled(tmp_path / "runs" / "w2" / "model", model.bind(labels, Guidance(4.0)))


def test_a_searched_schedule_is_made_for_its_guidance(tmp_path):
    model = FieldConfig(**MIXTURE).load()
    found = search_schedule(model.for_draws(32, 0, Guidance(3.0)), "euler", 4, grid_points=16, num_samples=32)
    assert found.field_id.endswith("guided(w=3)")
    assert found.settings["guidance"] == "guided(w=3)" and found.settings["conditions"].startswith("classes drawn as")
    save_schedule(found, tmp_path / "s.json")
    load_schedule(tmp_path / "s.json", model.for_draws(8, 1, Guidance(3.0)))
    with pytest.raises(GenkitError, match=r"made for guided\(w=3\), not guided\(w=1\)"):
        load_schedule(tmp_path / "s.json", model.for_draws(8, 1))
    with pytest.raises(GenkitError, match="class-conditional"):
        search_schedule(model, "euler", 4, grid_points=16, num_samples=32)


def test_a_learned_solver_is_made_for_its_guidance(tmp_path):
    """Fitted on the guided field (all draws in one batch: each has its class), and refused at another guidance."""
    model = FieldConfig(**MIXTURE).load()
    guided = model.for_draws(32, 0, Guidance(3.0))
    learned = learn_schedule(guided, "ipndm", 3, iterations=20, num_samples=32, teacher_steps=8, corrections=True)
    assert learned.field_id.endswith("guided(w=3)") and learned.settings["guidance"] == "guided(w=3)"
    assert learned.settings["rmse_to_teacher"] < learned.settings["rmse_to_teacher_init"]
    save_schedule(learned, tmp_path / "learned.json")
    loaded = load_schedule(tmp_path / "learned.json", model.for_draws(8, 1, Guidance(3.0)))
    assert loaded.corrections is not None
    with pytest.raises(GenkitError, match=r"made for guided\(w=3\), not guided\(w=1\)"):
        load_schedule(tmp_path / "learned.json", model.for_draws(8, 1))


def test_compare_runs_each_guidance_weight_at_the_same_evaluations(tmp_path):
    config = {
        "task": "compare",
        "name": "guided",
        "num_samples": 24,
        "seed": 2,
        "output_dir": str(tmp_path / "runs"),
        "samplers": {
            "field": MIXTURE,
            "guidance": [0.0, 1.0, 3.0],
            "solvers": ["euler"],
            "nfe": [4],
            "schedules": ["karras"],
            "metrics": ["rmse"],
            "reference_tolerance": 1e-9,
        },
    }
    (tmp_path / "compare.yaml").write_text(yaml.safe_dump(config))
    result = genkit(tmp_path, "compare", "compare.yaml", "tracker=none")
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads((tmp_path / "runs" / "guided" / "comparison.json").read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["rows"]]
    assert [row["field"] for row in rows] == ["w=0", "w=1", "w=3"]
    assert all(row["nfe_counted"] == 4 for row in rows) and "twice the batch" in rows[0]["nfe_counts"]
    assert [row["evaluations"] for row in rows] == [4, 4, 8]  # w = 3 runs both branches at each of the 4 calls
    model = FieldConfig(**MIXTURE).load()
    labels = model.draw_conditions(list(range(24)), 2)
    z = initial_noise(list(range(24)), (8,), 2).double()
    for row, w in zip(rows, (0.0, 1.0, 3.0), strict=True):
        field = model.bind(labels, Guidance(w))
        target = reference(field.edm, 80 * z, 80.0, 0.002, 1e-9, 1e-9)
        rmse = (field.solve(z, "euler", 4, "karras") - target).pow(2).mean().sqrt().item()
        assert row["rmse"] == pytest.approx(rmse, rel=1e-9)
