"""The shared loop: what W&B holds after a resume, each optimizer's LR schedule, whose mixed precision applies."""

import json
import math
import struct
import time
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.state import AcceleratorState
from wandb.proto import wandb_internal_pb2

from genkit.config import load_config
from genkit.nets import TimeMLP
from genkit.train import amed, gan
from genkit.train.config import TrainConfig
from genkit.train.loop import Loop

WANDB_BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of chunks with 7-byte headers
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path):
    """The protobuf records of one offline run's .wandb file."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    position, pending = 7, b""
    while position + 7 <= len(data):
        left = WANDB_BLOCK - position % WANDB_BLOCK
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if left < 7 or (kind == 0 and length == 0):  # block padding
            position += left
            continue
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def wandb_history(run_dir: Path, rows_expected: int, seconds: float = 30.0) -> list[tuple[int, dict]]:
    """(step, metrics) of every history row in the run's offline W&B files, oldest file first.

    W&B's service may write a finished run's last records to its offline file shortly after `finish` returns
    (measured: once in eight runs here, complete half a second later), so the files are read again until they hold
    `rows_expected` rows or `seconds` have passed.
    """
    deadline = time.monotonic() + seconds
    while True:
        rows = []
        for run_file in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
            for record in wandb_records(run_file):
                if record.HasField("history"):
                    items = {
                        item.key or ".".join(item.nested_key): json.loads(item.value_json)
                        for item in record.history.item
                    }
                    rows.append((record.history.step.num, {k: v for k, v in items.items() if not k.startswith("_")}))
        if len(rows) >= rows_expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


class LineTrainer:
    """Fits y = 2 x with a tiny MLP; logs its loss plus `offset`, and fails at loop step `fail_at`."""

    ema_model = None

    def __init__(self, offset: float = 0.0, fail_at: int | None = None):
        torch.manual_seed(0)
        self.models = {"line": TimeMLP(1, hidden=4, depth=1)}
        self.optimizers = {"line": torch.optim.SGD(self.models["line"].parameters(), lr=0.1)}
        self.offset, self.fail_at = offset, fail_at

    def optimizer_steps(self, steps: int) -> dict[str, int]:
        return {"line": steps}

    def train_step(self, batch, context):
        if context.position + 1 == self.fail_at:
            raise RuntimeError("killed")
        x = batch[:, None]
        loss = (self.models["line"](x, torch.zeros(len(x))) - 2 * x).pow(2).mean()
        context.update("line", loss)
        return {"loss": loss + self.offset}

    def evaluate(self, context, step):
        return {}

    def export(self, context, folder):
        pass


def train_line(run_dir: Path, trainer: LineTrainer, **train) -> Loop:
    config = TrainConfig(**{"steps": 10, "batch_size": 4, "log_every": 1, "eval_every": 100, **train})
    loop = Loop(config, run_dir, {"train": {}})
    loop.run(trainer, torch.linspace(-1, 1, 16))
    return loop


def test_after_a_resume_wandb_and_metrics_jsonl_hold_each_step_once_with_the_same_values(tmp_path):
    run = tmp_path / "line"
    settings = {"tracker": "wandb", "checkpoint_every": 5}
    with pytest.raises(RuntimeError, match="killed"):
        train_line(run, LineTrainer(fail_at=8), **settings)  # logged steps 1-7, checkpointed at 5
    # The resumed run replays 6 and 7 (logging values 100 higher) and goes on to 10.
    train_line(run, LineTrainer(offset=100.0), resume="latest", **settings)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    jsonl = [(record["step"], record["loss"]) for record in records if "loss" in record]
    wandb = [(step, metrics["loss"]) for step, metrics in wandb_history(run, 10) if "loss" in metrics]
    assert len(list(run.glob("wandb/offline-run-*"))) == 2
    assert [step for step, _ in jsonl] == [step for step, _ in wandb] == list(range(1, 11))
    assert [loss for _, loss in wandb] == pytest.approx([loss for _, loss in jsonl], rel=1e-12)
    # The first logging of 6 and 7 stands in both; only steps the killed run never logged carry the offset.
    assert [loss > 50 for _, loss in jsonl] == [False] * 7 + [True] * 3


def test_a_fresh_run_in_an_old_folder_starts_new_logs(tmp_path):
    run = tmp_path / "line"
    train_line(run, LineTrainer(offset=100.0), tracker="none", checkpoint_every=100, steps=3)
    (run / "checkpoints").rename(tmp_path / "elsewhere")
    train_line(run, LineTrainer(), tracker="none", checkpoint_every=100, steps=2)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"] < 50) for r in records if "loss" in r] == [(1, True), (2, True)]


def logged(run: Path, key: str) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {record["step"]: record[key] for record in records if key in record}


def test_each_gan_optimizer_schedule_spans_its_own_updates(tmp_path):
    """Linear decay to 0: the critic steps every loop step, the generator at loop steps 2, 4, 6 (n_critic 2)."""
    config = {
        "task": "gan",
        "name": "gan",
        "output_dir": str(tmp_path / "runs"),
        "data": {"source": "8gaussians", "num_train": 256, "num_val": 64},
        "model": {"hidden": 16, "depth": 1},
        "gan": {"method": "wgan_gp", "n_critic": 2},
        "eval_samples": 64,
        "train": {"steps": 8, "batch_size": 32, "lr_schedule": "linear", "log_every": 1, "tracker": "none"},
    }
    (tmp_path / "gan.yaml").write_text(yaml.safe_dump(config))
    gan.train(load_config(tmp_path / "gan.yaml"))
    run, lr = tmp_path / "runs" / "gan", 1e-4
    # After loop step s the critic made s of its 8 updates, the generator (s - 1) // 2 of its 3.
    assert logged(run, "lr/critic") == pytest.approx({s: lr * (1 - s / 8) for s in range(1, 9)})
    assert logged(run, "lr/generator") == pytest.approx({s: lr * (1 - (s - 1) // 2 / 3) for s in range(1, 9)})


def test_the_amed_predictor_schedule_spans_one_update_per_interval(tmp_path):
    config = {
        "task": "amed",
        "name": "amed",
        "output_dir": str(tmp_path / "runs"),
        "num_samples": 64,
        "field": {"kind": "mixture", "components": 2, "shape": [4]},
        "amed": {"num_steps": 4},
        "train": {"steps": 4, "batch_size": 16, "lr_schedule": "cosine", "log_every": 1, "tracker": "none"},
    }
    (tmp_path / "amed.yaml").write_text(yaml.safe_dump(config))
    amed.train(load_config(tmp_path / "amed.yaml"))
    # Three updates a loop step, twelve in all: the cosine reaches 0 at the last step, not after the first third.
    lrs = logged(tmp_path / "runs" / "amed", "lr/predictor")
    expected = {s: 5e-3 * 0.5 * (1 + math.cos(math.pi * 3 * s / 12)) for s in range(1, 5)}
    assert lrs == pytest.approx(expected, abs=1e-12)


@pytest.fixture
def fresh_accelerator_state():
    """The accelerator state is process-wide: start from none, and leave none for later in-process training."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize(
    ("launcher", "config", "expected"),
    [
        ("bf16", None, ("bf16", "launcher")),
        ("bf16", "no", ("no", "config")),
        (None, None, ("no", "default")),
    ],
)
def test_the_launchers_mixed_precision_holds_unless_the_config_sets_one(
    tmp_path, monkeypatch, fresh_accelerator_state, launcher, config, expected
):
    if launcher is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    train_line(tmp_path / "line", LineTrainer(), steps=1, tracker="none", mixed_precision=config)
    runtime = json.loads((tmp_path / "line" / "runtime.json").read_text())
    assert (runtime["mixed_precision"], runtime["mixed_precision_from"]) == expected
