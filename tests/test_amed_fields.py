"""AMED on network fields: a genkit flow run and a diffusers UNet, bottleneck features, `genkit sample --predictor`."""

import pytest
import torch
import yaml
from diffusers import UNet2DModel
from launching import genkit
from safetensors.torch import load_file
from tiny_models import save_tiny_ddpm

from genkit.config import load_config
from genkit.errors import GenkitError
from genkit.fields import FieldConfig, flow_run_id
from genkit.files import save_pretrained
from genkit.models import load_velocity_model
from genkit.nets import UNetVelocity
from genkit.predictors import load_predictor
from genkit.train import flow
from genkit.train.amed import AmedSettings
from samplers import AMEDPredictor, CountingVelocity, SamplerError, amed, amed_plugin
from samplers.velocity import pooled_features

FLOW = {
    "task": "flow",
    "name": "digits",
    "eval_samples": 8,
    "data": {"source": "mnist5k", "image_size": 8},
    "model": {"kind": "unet", "block_channels": [8, 16], "norm_groups": 4},
    "train": {"steps": 4, "batch_size": 16, "tracker": "none", "log_every": 2, "eval_every": 100, "ema_decay": 0.0},
}
DISTIL = {
    "task": "amed",
    "name": "plugin",
    "num_samples": 64,
    "amed": {
        "solver": "amed_plugin",
        "base": "ipndm",
        "num_steps": 4,
        "schedule": "karras",
        "features": "bottleneck",
        "teacher": "ipndm",
        "teacher_steps": 2,
        "scale_time": 0.2,
    },
    "train": {"steps": 3, "batch_size": 16, "tracker": "none", "log_every": 1, "eval_every": 3, "ema_decay": 0.0},
}


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """A 4-step flow on 8x8 digits, and an iPNDM-plugin predictor on its bottleneck distilled through the CLI."""
    folder = tmp_path_factory.mktemp("amed_flow")
    (folder / "flow.yaml").write_text(yaml.safe_dump({**FLOW, "output_dir": str(folder / "runs")}))
    flow.train(load_config(folder / "flow.yaml"))
    run = folder / "runs" / "digits"
    config = {**DISTIL, "output_dir": str(folder / "runs"), "field": {"kind": "flow_run", "path": str(run)}}
    (folder / "amed.yaml").write_text(yaml.safe_dump(config))
    result = genkit(folder, "train", "amed.yaml")
    assert result.returncode == 0, result.stderr[-2000:]
    return folder, run, folder / "runs" / "plugin" / "model"


def test_the_flow_run_distillation_logs_its_progress_and_saves_its_settings(distilled):
    folder, run, predictor_dir = distilled
    lines = [yaml.safe_load(line) for line in (folder / "runs" / "plugin" / "metrics.jsonl").read_text().splitlines()]
    evaluated = [line for line in lines if "rmse_to_teacher" in line]
    assert evaluated and {"r_0", "r_1", "r_2", "rmse_midpoint_to_teacher"} <= evaluated[-1].keys()
    predictor = load_predictor(predictor_dir, flow_run_id(run))
    settings = predictor.tied_settings
    assert (settings.solver, settings.base, settings.features, settings.nfe) == (
        "amed_plugin",
        "ipndm",
        "bottleneck",
        5,
    )
    assert predictor.features == "bottleneck" and settings.scale_time == 0.2


def test_a_flow_runs_unet_loads_as_a_plain_diffusers_unet(distilled):
    """The exported model and a checkpoint's are diffusers UNet2DModel folders; genkit feeds them 999 t."""
    _, run, _ = distilled
    for folder in (run / "model", run / "checkpoints" / "step_00000004" / "velocity"):
        unet = UNet2DModel.from_pretrained(folder)
        velocity = load_velocity_model(folder)
        x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 0.7])
        with torch.no_grad():
            torch.testing.assert_close(unet(x, 999 * t).sample, velocity(x, t))


def test_genkit_sample_uses_the_predictor_at_its_nfe_and_refuses_mismatches(distilled):
    folder, run, predictor_dir = distilled
    result = genkit(
        folder, "sample", str(run), "--solver", "amed_plugin", "--predictor", str(predictor_dir), "--num", "6"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    samples = load_file(run / "samples" / "amed_plugin_nfe5_karras_seed0.safetensors")["samples"]
    assert samples.shape == (6, 1, 8, 8) and samples.isfinite().all()
    for args, expected in (
        (["--solver", "amed_plugin", "--nfe", "7"], "--nfe 7 (it needs 5)"),
        (["--solver", "amed"], "--solver amed (it needs amed_plugin)"),
    ):
        result = genkit(folder, "sample", str(run), *args, "--predictor", str(predictor_dir))
        assert result.returncode == 2 and expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    result = genkit(folder, "sample", str(run), "--solver", "amed")
    assert result.returncode == 2 and "needs --predictor PATH" in result.stderr


def test_a_predictor_is_refused_for_other_weights(distilled, tmp_path):
    folder, run, predictor_dir = distilled
    other = UNetVelocity.build(1, 8, [8, 16], norm_groups=4)
    assert other.state_dict().keys() == load_velocity_model(run / "model").state_dict().keys()
    save_pretrained(other, tmp_path / "model")
    with pytest.raises(GenkitError, match="field: trained for 'flow_run"):
        load_predictor(predictor_dir, flow_run_id(tmp_path))
    with pytest.raises(GenkitError, match="schedule: trained for 'karras', asked for 'time_uniform'"):
        load_predictor(predictor_dir, flow_run_id(run), AmedSettings(solver="amed_plugin", features="bottleneck"))


def test_unet_bottleneck_is_the_pooled_middle_block_output_and_costs_no_extra_call():
    torch.manual_seed(0)
    model = UNetVelocity.build(1, 8, [8, 16], norm_groups=4).eval()
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0.2, 0.5, 0.9])
    captured = []
    model.unet.mid_block.register_forward_hook(lambda module, inputs, output: captured.append(output))
    with torch.no_grad():
        velocity, features = model.velocity_and_bottleneck(x, t)
        torch.testing.assert_close(velocity, model(x, t))
    assert len(captured) == 2 and captured[0].shape == (3, 16, 4, 4)
    torch.testing.assert_close(
        features, torch.nn.functional.interpolate(captured[0].mean(1, keepdim=True), 8).flatten(1)
    )
    torch.testing.assert_close(features, pooled_features(captured[0]))
    assert len(model.unet.mid_block._forward_hooks) == 1


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddpm")
    save_tiny_ddpm(folder)
    return folder


def test_a_diffusers_folder_is_a_field_with_bottleneck_features(diffusers_folder, tmp_path):
    loaded = FieldConfig(kind="diffusers", path=str(diffusers_folder)).load()
    assert loaded.shape == (1, 8, 8) and loaded.field_id.startswith("diffusers(sha256=")
    x = 80 * torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((4,), 3.0)
    with torch.no_grad():
        velocity, features = loaded.edm.velocity_and_bottleneck(x, sigma)
        torch.testing.assert_close(velocity, loaded.edm(x, sigma))
    assert features.shape == (4, 64) and features.std() > 0
    settings = AmedSettings(features="bottleneck")
    counting = CountingVelocity(loaded.edm)
    with torch.no_grad():
        out = amed(counting, x, settings.timesteps(), AMEDPredictor(features="bottleneck"))
    assert counting.nfe == 5 and out.isfinite().all()
    with pytest.raises(GenkitError, match="is not a diffusers model folder with unet/ and scheduler/"):
        FieldConfig(kind="diffusers", path=str(tmp_path)).load()
    # A Hub id that is not in the local cache: offline (as the tests run), one clear error.
    with pytest.raises(GenkitError, match="could not be fetched from the Hugging Face Hub.*huggingface-cli download"):
        FieldConfig(kind="diffusers", path="google/ddpm-cifar10-32").load()
    with pytest.raises(GenkitError, match="field.kind=flow_run needs field.path"):
        FieldConfig(kind="flow_run")


def test_a_field_without_a_bottleneck_is_a_clear_error_for_a_bottleneck_predictor():
    field = lambda x, t: x  # noqa: E731
    settings = AmedSettings(solver="amed_plugin", features="bottleneck", afs=False)
    with pytest.raises(SamplerError, match="no velocity_and_bottleneck"):
        amed_plugin(field, torch.ones(2, 4), settings.timesteps(), AMEDPredictor(features="bottleneck"))
