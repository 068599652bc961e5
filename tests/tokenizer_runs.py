"""A tiny tokenizer config in a test folder (the `workdir` fixture, shared through conftest) and its runs' weights."""

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

# The columns `genkit eval-tokenizer` prints, in order.
EVAL_HEADER = [
    *("model", "codebook_size", "psnr", "ssim", "lpips", "rfd"),
    *("codebook_usage", "perplexity", "images_per_second"),
]

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


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder holding the tiny config, with every cache and tracker file kept inside it."""
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({**TINY, "output_dir": str(tmp_path / "runs")}))
    for key, sub in (("HF_HOME", "hf"), ("WANDB_DIR", "wandb"), ("WANDB_CONFIG_DIR", "wandb"), ("MPLCONFIGDIR", "mpl")):
        monkeypatch.setenv(key, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


WEIGHTS = "diffusion_pytorch_model.safetensors"  # what save_pretrained writes


def model_state(workdir: Path, name: str, checkpoint: str | None = None) -> dict[str, torch.Tensor]:
    """The exported EMA weights of a run, or the raw weights of one of its checkpoints."""
    run = workdir / "runs" / name
    folder = run / "checkpoints" / checkpoint / "tokenizer" if checkpoint else run / "model"
    return load_file(folder / WEIGHTS)
