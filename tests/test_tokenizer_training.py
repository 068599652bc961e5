"""The tokenizer trainer end to end through the CLI: run folder, two ranks = one, resume = uninterrupted, errors."""

import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from launching import genkit, genkit_on_two_ranks
from PIL import Image
from tokenizer_runs import EVAL_HEADER, TINY, WEIGHTS, model_state
from weights import assert_same_weights, float64_training_atol

from tokenizers_img.model import Tokenizer


def test_a_run_folder_holds_everything_and_the_model_reloads(workdir):
    result = genkit(workdir, "train", "tiny.yaml", "train.tracker=wandb")
    assert result.returncode == 0, result.stderr
    run = workdir / "runs" / "tiny"
    (offline_run,) = (run / "wandb").glob("offline-run-*")
    assert list(offline_run.glob("run-*.wandb")) and (offline_run / "files" / "media" / "images").is_dir()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000003", "step_00000006"]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"] == 6
    records = [yaml.safe_load(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "total" in r] == [1, 2, 3, 4, 5, 6]
    assert {"psnr", "codebook_usage", "perplexity"} <= set(records[-1])
    assert (run / "grids" / "reconstruction_00000006.png").stat().st_size > 0
    # The exported model and every checkpoint's models load with diffusers' from_pretrained.
    tokenizer = Tokenizer.from_pretrained(run / "model")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert tokenizer.encode(images).shape == (2, 16, 16)
    assert tokenizer.decode(tokenizer.encode(images)).shape == images.shape
    checkpoint = run / "checkpoints" / "step_00000006"
    exported = tokenizer.state_dict()
    averaged = Tokenizer.from_pretrained(checkpoint / "tokenizer_ema").state_dict()
    assert all(torch.equal(averaged[key], exported[key]) for key in exported)  # the export is the EMA
    raw = Tokenizer.from_pretrained(checkpoint / "tokenizer").state_dict()
    assert not all(torch.equal(raw[key], exported[key]) for key in exported)

    evaluation = genkit(workdir, "eval-tokenizer", "runs/tiny", "--extractor", "digits")
    assert evaluation.returncode == 0, evaluation.stderr
    assert evaluation.stdout.splitlines()[0].split() == EVAL_HEADER
    assert (run / "eval.json").exists()
    assert f"W&B offline run: runs/tiny/wandb/{offline_run.name}" in evaluation.stdout


@pytest.mark.parametrize(
    "quantizer",
    [
        ["model.quantizer.kind=fsq"],
        ["model.quantizer.kind=vq", "model.quantizer.codebook_size=64", "model.quantizer.ema=true"],
    ],
    ids=["fsq", "vq-ema"],
)
def test_two_processes_train_exactly_like_one_with_the_same_global_batch(workdir, quantizer):
    # In float64, so that round-off cannot flip a VQ assignment or reach Adam's eps (see float64_training_atol).
    one = genkit(workdir, "train", "tiny.yaml", "name=one", "train.float64=true", *quantizer)
    two = genkit_on_two_ranks(workdir, "train", "tiny.yaml", "name=two", "train.float64=true", *quantizer)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert yaml.safe_load((workdir / "runs" / "two" / "runtime.json").read_text())["num_processes"] == 2
    assert yaml.safe_load((workdir / "runs" / "one" / "runtime.json").read_text())["num_processes"] == 1
    # DDP averages the two half-batch gradients, one process the full-batch one: equal up to float64 round-off.
    atol = float64_training_atol(lr=TINY["optimizer"]["lr"], updates=TINY["train"]["steps"])
    first, second = model_state(workdir, "one", "step_00000006"), model_state(workdir, "two", "step_00000006")
    assert first["encoder.conv_in.weight"].dtype == torch.float64
    assert_same_weights(first, second, atol)
    assert_same_weights(model_state(workdir, "one"), model_state(workdir, "two"), atol)


def test_two_processes_train_on_a_folder_with_broken_files_and_report_the_skips(workdir, genkit_cache):
    images = workdir / "images"
    (images / "a" / "deep").mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for index in range(30):
        pixels = torch.randint(0, 256, (20 + index, 24, 3), generator=generator, dtype=torch.uint8).numpy()
        folder = images / "a" / ("deep" if index % 3 else "")
        Image.fromarray(pixels).save(folder / f"image_{index:02d}.{'jpg' if index % 2 else 'png'}")
    # Sorted after a/: train positions (every 20th file from the first is val).
    (images / "c").mkdir()
    jpeg = (images / "a" / "deep" / "image_01.jpg").read_bytes()
    (images / "c" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (images / "c" / "empty.png").write_bytes(b"")
    (images / "c" / "notes.jpg").write_text("not an image")
    folder_data = ["data.source=folder", f"data.path={images}", "data.image_size=16", "train.steps=2"]
    result = genkit_on_two_ranks(workdir, "train", "tiny.yaml", "name=folder", *folder_data)
    assert result.returncode == 0, result.stderr[-3000:]
    run = workdir / "runs" / "folder"
    assert yaml.safe_load((run / "runtime.json").read_text())["num_processes"] == 2
    assert (run / "model" / WEIGHTS).is_file()
    assert result.stderr.count("unreadable image(s)") == 1, result.stderr
    assert "skipped 3 unreadable image(s) of 31 in the train split" in result.stderr


def test_sigterm_saves_and_the_resumed_run_matches_an_uninterrupted_one(workdir):
    steps = ["train.steps=40", "train.batch_size=32", "train.checkpoint_every=1000", "train.eval_every=1000"]
    assert genkit(workdir, "train", "tiny.yaml", "name=whole", *steps).returncode == 0

    command = [sys.executable, "-m", "genkit", "train", "tiny.yaml", "name=cut", *steps]
    process = subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "runs" / "cut" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3) and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "genkit: stopped by signal at step" in stderr.splitlines()[-1]
    (checkpoint,) = (workdir / "runs" / "cut" / "checkpoints").iterdir()
    assert 3 <= int(checkpoint.name.removeprefix("step_")) < 40
    assert not (workdir / "runs" / "cut" / "model").exists()

    resumed = genkit(workdir, "train", "tiny.yaml", "name=cut", *steps, "train.resume=latest")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step" in resumed.stdout
    # The same operations in the same order on the same machine: bit for bit.
    assert_same_weights(model_state(workdir, "whole", "step_00000040"), model_state(workdir, "cut", "step_00000040"))
    assert_same_weights(model_state(workdir, "whole"), model_state(workdir, "cut"))
    records = [yaml.safe_load(line) for line in (workdir / "runs" / "cut" / "metrics.jsonl").read_text().splitlines()]
    # The steps the killed run logged after its checkpoint were dropped, then logged again once.
    assert [r["step"] for r in records if "total" in r] == list(range(1, 41))


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """A user error: exit code 2, no traceback, and the message as the last line (after any progress bar)."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("genkit: error:"), result.stderr
    return last


def test_a_corrupt_checkpoint_is_a_clear_error(workdir):
    assert genkit(workdir, "train", "tiny.yaml").returncode == 0
    weights = workdir / "runs" / "tiny" / "checkpoints" / "step_00000006" / "tokenizer" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    message = one_line_error(genkit(workdir, "train", "tiny.yaml", "train.steps=9", "train.resume=latest"))
    assert "step_00000006 is unreadable" in message
    message = one_line_error(genkit(workdir, "train", "tiny.yaml", "train.steps=9"))
    assert "train.resume=latest" in message


def test_a_non_finite_loss_stops_without_saving(workdir):
    result = genkit(workdir, "train", "tiny.yaml", "optimizer.lr=1e15", "train.max_grad_norm=0", "train.steps=30")
    message = one_line_error(result)
    assert "loss is not finite" in message and "Lower the learning rate" in message
    checkpoints = list((workdir / "runs" / "tiny" / "checkpoints").glob("step_*"))
    assert all(int(c.name.removeprefix("step_")) <= 3 for c in checkpoints)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.stepz=3"], "unknown config key 'train.stepz'"),
        (["train.steps=many"], "bad value for config key 'train.steps'"),
        (["train.mixed_precision=fp8"], "choose one of: no, bf16, fp16"),
        (["model.quantizer.kind=lfq"], "choose one of: fsq, vq"),
        (["perceptual.weight=1", "perceptual.network=torchscript"], "needs perceptual.weights_path"),
        (["data.source=folder", "data.path=/no/such/folder"], "/no/such/folder"),
        (["steps"], "must look like key=value"),
    ],
)
def test_config_mistakes_fail_at_start_with_one_line(workdir, overrides, expected):
    assert expected in one_line_error(genkit(workdir, "train", "tiny.yaml", *overrides))


def test_a_missing_config_file_is_one_line(workdir):
    assert "does not exist" in one_line_error(genkit(workdir, "train", "nope.yaml"))
