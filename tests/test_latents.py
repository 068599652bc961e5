"""Latent flows (docs/latents.md): a tokenizer's latents as cached data, a flow on them, its samples decoded."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.state import AcceleratorState
from launching import genkit, genkit_on_two_ranks, launch_on_two_ranks
from safetensors.torch import load_file, save_file
from weights import assert_same_weights, float64_training_atol

import samplers
from genkit import latents
from genkit.config import load_config
from genkit.data import DataConfig, build_dataset, image_channels, validation_samples
from genkit.errors import GenkitError
from genkit.fields import load_flow_run
from genkit.latents import LatentCodec, decoder_input, encoded, latent_shape, tokenizer_run
from genkit.models import load_tokenizer
from genkit.noise import initial_noise
from genkit.runs import Run
from genkit.train.tokenizer import build_tokenizer

TRAIN = {"batch_size": 8, "tracker": "none", "log_every": 3, "eval_every": 100, "ema_decay": 0.0}
DATA = {"source": "mnist5k", "image_size": 16}
TOKENIZER = {
    "task": "tokenizer",
    "name": "fsq",
    "eval_images": 8,
    "data": DATA,
    "model": {
        "channels": [8, 8, 8],
        "latent_dim": 3,
        "norm_groups": 4,
        "quantizer": {"kind": "fsq", "levels": [5, 5, 5]},
    },
    "train": {**TRAIN, "steps": 3},
}
FLOW = {
    "task": "flow",
    "name": "latent",
    "eval_samples": 8,
    "data": DATA,
    "model": {"kind": "unet", "block_channels": [8, 16], "norm_groups": 4},
    "flow": {"tokenizer": "runs/fsq", "conditional": True, "label_dropout": 0.2},
    "train": {**TRAIN, "steps": 3},
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny FSQ tokenizer on 8x8 digits and a conditional latent flow on it, with a cache of their own."""
    folder = tmp_path_factory.mktemp("latents")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GENKIT_CACHE", str(folder / "cache"))
        for config in (TOKENIZER, FLOW):
            (folder / f"{config['name']}.yaml").write_text(yaml.safe_dump({**config, "output_dir": "runs"}))
            result = genkit(folder, "train", f"{config['name']}.yaml")
            assert result.returncode == 0, result.stderr[-3000:]
        yield folder
    AcceleratorState._reset_state(reset_partial_state=True)


def cache_folders(folder) -> list:
    return sorted(path for path in (folder / "cache" / "latents").iterdir() if path.is_dir())


def test_the_latents_are_the_decoder_inputs_and_the_flow_records_their_scale(folder, monkeypatch):
    monkeypatch.setenv("GENKIT_CACHE", str(folder / "cache"))
    run, data = Run(folder / "runs" / "fsq"), DataConfig(**DATA)
    train = encoded(run, data, "train")
    images = torch.stack([build_dataset(data, "train")[i] for i in range(64)])
    # The first 64 images are the cache's first batch: the same operations, the same values.
    assert torch.equal(train.latents[:64], decoder_input(load_tokenizer(run.model), images))
    labelled = build_dataset(data, "train", labels=True)
    assert train.latents.shape == (4500, 3, 4, 4) and torch.equal(train.labels, labelled.labels)
    grid = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])  # FSQ's codes for 5 levels
    assert torch.isin(train.latents, grid).all()
    record = json.loads((folder / "runs" / "latent" / "model" / "latents.json").read_text())
    assert record["shape"] == [3, 4, 4] and record["tokenizer_id"] == latents.tokenizer_id(run)
    values = train.latents.double()
    assert record["mean"] == pytest.approx(values.mean().item()) and record["std"] == pytest.approx(values.std().item())


def test_encoding_is_cached_reused_and_keyed_by_tokenizer_and_data(folder, monkeypatch, tmp_path):
    monkeypatch.setenv("GENKIT_CACHE", str(tmp_path))
    run, data = Run(folder / "runs" / "fsq"), DataConfig(**DATA)
    first = encoded(run, data, "val")
    [cached] = (tmp_path / "latents").iterdir()
    manifest = json.loads((cached / "latents.json").read_text())
    assert manifest["count"] == 500 and manifest["split"] == "val" and manifest["shape"] == [3, 4, 4]

    def never(*args):
        raise AssertionError("a cached latent was encoded again")

    monkeypatch.setattr(latents, "decoder_input", never)
    again = encoded(run, data, "val")
    assert torch.equal(again.latents, first.latents) and torch.equal(again.labels, first.labels)
    # Another data config misses the cache; so does another tokenizer (other weights).
    monkeypatch.undo()
    monkeypatch.setenv("GENKIT_CACHE", str(tmp_path))
    encoded(run, DataConfig(**{**DATA, "image_size": 8}), "val")
    other = tmp_path / "other"
    shutil.copytree(run.folder, other)
    weights = other / "model" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["decoder.conv_out.bias"] += 1
    save_file(state, weights)
    encoded(Run(other), data, "val")
    assert len(list((tmp_path / "latents").iterdir())) == 3


def test_a_corrupt_shard_is_encoded_again_with_a_warning(folder, monkeypatch, tmp_path):
    monkeypatch.setenv("GENKIT_CACHE", str(tmp_path))
    run, data = Run(folder / "runs" / "fsq"), DataConfig(**DATA)
    first = encoded(run, data, "train")
    [cached] = (tmp_path / "latents").iterdir()
    shard = cached / "latents_00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.warns(UserWarning, match="latents_00002.safetensors .* do not read back whole: encoding them again"):
        again = encoded(run, data, "train")
    assert torch.equal(again.latents, first.latents)


def test_two_processes_encode_the_latents_of_one(folder, monkeypatch, tmp_path):
    """Launched ranks run one thread each, so the one process here does too: the same operations, the same bits."""
    worker = tmp_path / "encode.py"
    worker.write_text(
        "import sys\nfrom genkit.data import DataConfig\nfrom genkit.latents import encoded\n"
        "from genkit.runs import Run\n"
        f"encoded(Run(sys.argv[1]), DataConfig(**{DATA!r}), 'train')\n"
    )
    monkeypatch.setenv("GENKIT_CACHE", str(tmp_path / "two"))
    result = launch_on_two_ranks(tmp_path, str(worker), str(folder / "runs" / "fsq"))
    assert result.returncode == 0, result.stderr[-3000:]
    monkeypatch.setenv("GENKIT_CACHE", str(tmp_path / "one"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        encoded(Run(folder / "runs" / "fsq"), DataConfig(**DATA), "train")
    finally:
        torch.set_num_threads(threads)
    [one], [two] = (list((tmp_path / name / "latents").iterdir()) for name in ("one", "two"))
    shards = sorted(path.name for path in one.glob("latents_*"))
    assert len(shards) == 5 and shards == sorted(path.name for path in two.glob("latents_*"))
    for name in shards:
        first, second = load_file(one / name), load_file(two / name)
        assert torch.equal(first["z"], second["z"]) and torch.equal(first["c"], second["c"]), name


def test_a_latent_flow_trained_on_two_ranks_equals_one(folder, monkeypatch):
    """Both read the latents the fixture cached; in float64, so only the reduction order differs."""
    monkeypatch.setenv("GENKIT_CACHE", str(folder / "cache"))
    for name, run in (("one", genkit), ("two", genkit_on_two_ranks)):
        result = run(folder, "train", "latent.yaml", f"name={name}", "train.float64=true")
        assert result.returncode == 0, result.stderr[-3000:]
    assert len(cache_folders(folder)) == 2, "train and val latents, encoded once for every run and rank"
    one, two = (
        load_file(folder / "runs" / name / "model" / "diffusion_pytorch_model.safetensors") for name in ("one", "two")
    )
    assert_same_weights(one, two, float64_training_atol(lr=1e-3, updates=3))


def test_decoding_the_round_trip_of_an_encoded_image_reproduces_its_reconstruction(folder):
    """image -> z_q -> noise by the reverse ODE -> the forward solve -> decoded: the tokenizer's reconstruction, up to
    the reference solver's tolerance (float64 throughout).

    The U-Net's time embedding is zeroed: an untrained one oscillates in t on the scale of 1 / 999 (its time scale),
    which costs DOP853 some 9,000 evaluations at this tolerance; a velocity constant in t costs about 120 and still
    takes every step of the path under test (normalise, the latent field's two directions, denormalise, decode)."""
    field = load_flow_run(folder / "runs" / "latent", dtype=torch.float64)
    for parameter in field.conditioning.model.unet.time_embedding.linear_1.parameters():
        torch.nn.init.zeros_(parameter)
    field = field.bind(torch.arange(4))
    codec, _ = LatentCodec.recorded(Run(folder / "runs" / "latent").latents)
    codec.tokenizer.double()
    images = validation_samples(DataConfig(**DATA), 4).double()
    x1 = codec.normalise(decoder_input(codec.tokenizer, images))
    velocity, path = field.form("uniform")
    noise = samplers.reference(velocity, x1, 1.0, path.t_start, rtol=1e-10, atol=1e-10)
    assert (noise - x1).abs().max() > 0.1, "not vacuous: the solve moves the latents"
    decoded = field.decoded(samplers.reference(velocity, noise, path.t_start, 1.0, rtol=1e-10, atol=1e-10))
    with torch.no_grad():
        reconstruction, _ = codec.tokenizer(images)
    # Here the error is about 2e-11; two orders of margin below allow for the decoder's gain on another CPU.
    torch.testing.assert_close(decoded, reconstruction, rtol=0, atol=1e-8)


def test_genkit_sample_writes_decoded_images_and_snaps_on_request(folder):
    arguments = ["sample", "runs/latent", "--nfe", "2", "--num", "4", "--classes", "all"]
    for snap in ([], ["--snap"]):
        result = genkit(folder, *arguments, *snap)
        assert result.returncode == 0, result.stderr[-2000:]
    samples = folder / "runs" / "latent" / "samples"
    plain = load_file(samples / "euler_nfe2_uniform_classes_all_w1_seed0.safetensors")["samples"]
    snapped = load_file(samples / "euler_nfe2_uniform_classes_all_w1_snap_seed0.safetensors")["samples"]
    assert plain.shape == snapped.shape == (4, 1, 16, 16) and not torch.equal(plain, snapped)
    # Snapped: the decoder's images of the solve's latents moved to FSQ's grid.
    velocity, path = load_flow_run(folder / "runs" / "latent").bind(torch.arange(4)).form("uniform")
    codec, _ = LatentCodec.recorded(Run(folder / "runs" / "latent").latents)
    x = samplers.solve(velocity, path.start(initial_noise(list(range(4)), (3, 4, 4), 0)), "euler", 2, "uniform")
    grid = codec.tokenizer.quantizer.snap((x * codec.std + codec.mean).movedim(1, -1)).movedim(-1, 1)
    with torch.no_grad():
        torch.testing.assert_close(snapped, codec.tokenizer.decoder(grid), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("flow", "message"),
    [
        ({"tokenizer": "runs/nothing"}, "flow.tokenizer=runs/nothing is not a tokenizer run folder"),
        ({"tokenizer": "runs/latent"}, "flow.tokenizer=runs/latent is not a tokenizer run folder"),
    ],
)
def test_a_bad_tokenizer_is_one_line(folder, flow, message):
    result = genkit(folder, "train", "latent.yaml", "name=bad", f"flow.tokenizer={flow['tokenizer']}")
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.flip=true"], "latents are encoded once"),
        (["model.kind=mlp"], "it needs model.kind=unet"),
        (["flow.pairs=runs/pairs"], "a flow on a tokenizer's latents trains on data"),
    ],
)
def test_settings_that_do_not_fit_latents_are_one_line(folder, overrides, message):
    result = genkit(folder, "train", "latent.yaml", "name=bad", *overrides)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_an_unfinished_tokenizer_is_one_line(folder, tmp_path):
    (tmp_path / "config.yaml").write_text((folder / "runs" / "fsq" / "config.yaml").read_text())
    with pytest.raises(GenkitError, match="has not finished"):
        tokenizer_run(tmp_path)


@pytest.mark.parametrize(
    ("flow", "tokenizer"),
    [
        ("flow/latent_digits", "tokenizer/digits"),
        ("flow/latent_crops", "tokenizer/demo"),
        ("flow/latent_folder", "tokenizer/folder_f8_fsq"),
    ],
)
def test_the_latent_recipes_build_on_their_tokenizer_recipes_latents(flow, tokenizer):
    """Each recipe names its tokenizer recipe's run, reads the same data without augmentation, and its U-Net takes that
    tokenizer's latents."""
    flow, tokenizer = load_config(flow), load_config(tokenizer)
    assert Path(flow.flow.tokenizer).name == tokenizer.name
    assert flow.data == dataclasses.replace(tokenizer.data, flip=False, random_resized_crop=False)
    shape = latent_shape(build_tokenizer(tokenizer.model, image_channels(tokenizer.data)), flow.data)
    flow.model.check_size(shape[-1], "the latent size")
    network = flow.model.build(shape, 10 if flow.flow.conditional else 0)
    x, t = torch.zeros(1, *shape), torch.full((1,), 0.5)
    with torch.no_grad():
        assert network(x, t).shape == x.shape
