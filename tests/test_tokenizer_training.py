"""The tokenizer trainer end to end through the CLI: run folder, two ranks = one, resume = uninterrupted, errors."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from genkit.train.tokenizer import load_tokenizer

TINY = {
    "task": "tokenizer",
    "name": "tiny",
    "eval_images": 16,
    "data": {"source": "crops", "num_train": 256, "num_val": 16},
    "model": {
        "channels": [8, 16],
        "latent_dim": 4,
        "norm_groups": 4,
        "quantizer": {"kind": "fsq", "levels": [5, 5, 5, 5]},
    },
    "optimizer": {"lr": 1.0e-3},
    "train": {
        "steps": 6,
        "batch_size": 8,
        "log_every": 1,
        "eval_every": 6,
        "checkpoint_every": 3,
        "tracker": "none",
        "ema_decay": 0.9,
    },
}
TWO_RANKS = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
TWO_RANKS += ["--mixed_precision", "no", "--dynamo_backend", "no"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder holding the tiny config, with every cache and tracker file kept inside it."""
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({**TINY, "output_dir": str(tmp_path / "runs")}))
    for key, sub in (("HF_HOME", "hf"), ("WANDB_DIR", "wandb"), ("WANDB_CONFIG_DIR", "wandb"), ("MPLCONFIGDIR", "mpl")):
        monkeypatch.setenv(key, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def genkit(workdir: Path, *args: str, launch: list[str] = (), **popen) -> subprocess.CompletedProcess:
    """Run the genkit CLI in `workdir` (under accelerate's launcher when `launch` is given)."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1"} if launch else os.environ
    command = [sys.executable, *launch, "-m", "genkit", *args]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300, **popen)


def model_state(workdir: Path, name: str, checkpoint: str | None = None) -> dict[str, torch.Tensor]:
    """The exported EMA weights of a run, or the raw weights of one of its checkpoints."""
    run = workdir / "runs" / name
    return load_file(
        run / "checkpoints" / checkpoint / "model.safetensors" if checkpoint else run / "model" / "model.safetensors"
    )


def assert_same_weights(first: dict, second: dict, atol: float) -> None:
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=atol, msg=key)


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
    tokenizer = load_tokenizer(run / "model")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert tokenizer.encode(images).shape == (2, 16, 16)
    assert tokenizer.decode(tokenizer.encode(images)).shape == images.shape

    evaluation = genkit(workdir, "eval-tokenizer", "runs/tiny")
    assert evaluation.returncode == 0, evaluation.stderr
    assert evaluation.stdout.splitlines()[0].split() == ["model", "PSNR", "dB", "usage", "perplexity", "images/s"]
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
    one = genkit(workdir, "train", "tiny.yaml", "name=one", *quantizer)
    two = genkit(workdir, "train", "tiny.yaml", "name=two", *quantizer, launch=TWO_RANKS)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert yaml.safe_load((workdir / "runs" / "two" / "runtime.json").read_text())["num_processes"] == 2
    assert yaml.safe_load((workdir / "runs" / "one" / "runtime.json").read_text())["num_processes"] == 1
    # DDP averages the two half-batch gradients, one process the full-batch one: equal up to float round-off.
    assert_same_weights(
        model_state(workdir, "one", "step_00000006"), model_state(workdir, "two", "step_00000006"), 1e-5
    )
    assert_same_weights(model_state(workdir, "one"), model_state(workdir, "two"), 1e-5)


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
    assert process.returncode == 0, stderr
    assert "stopped by signal" in stdout + stderr
    (checkpoint,) = (workdir / "runs" / "cut" / "checkpoints").iterdir()
    assert 3 <= int(checkpoint.name.removeprefix("step_")) < 40
    assert not (workdir / "runs" / "cut" / "model").exists()

    resumed = genkit(workdir, "train", "tiny.yaml", "name=cut", *steps, "train.resume=latest")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step" in resumed.stdout
    assert_same_weights(
        model_state(workdir, "whole", "step_00000040"), model_state(workdir, "cut", "step_00000040"), 1e-6
    )
    assert_same_weights(model_state(workdir, "whole"), model_state(workdir, "cut"), 1e-6)
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
    weights = workdir / "runs" / "tiny" / "checkpoints" / "step_00000006" / "model.safetensors"
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
        (["data.source=folder", "data.path=/no/such/folder"], "/no/such/folder"),
        (["steps"], "must look like key=value"),
    ],
)
def test_config_mistakes_fail_at_start_with_one_line(workdir, overrides, expected):
    assert expected in one_line_error(genkit(workdir, "train", "tiny.yaml", *overrides))


def test_a_missing_config_file_is_one_line(workdir):
    assert "does not exist" in one_line_error(genkit(workdir, "train", "nope.yaml"))
