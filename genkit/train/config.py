"""What the training loop is configured by: the optimizer of each model and the loop's own settings."""

from dataclasses import dataclass

import torch

from genkit.config import check_choice, ranged
from genkit.errors import GenkitError
from genkit.tracking import TRACKERS

MIXED_PRECISION = ("no", "bf16", "fp16")
LR_SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}


@dataclass
class OptimizerConfig:
    """AdamW settings for one model."""

    lr: float = ranged(2e-4, above=0)
    betas: list[float] = ranged(lambda: [0.9, 0.99], minimum=0, below=1)
    weight_decay: float = ranged(0.0, minimum=0)

    def build(self, parameters) -> torch.optim.Optimizer:
        # torch 2.14 refuses betas mixing ints and floats, e.g. (0, 0.9).
        return torch.optim.AdamW(
            parameters, lr=self.lr, betas=tuple(float(b) for b in self.betas), weight_decay=self.weight_decay
        )


@dataclass
class TrainConfig:
    """What the loop owns; `batch_size` is the global batch, split across processes and accumulation steps."""

    steps: int = ranged(1000, minimum=1)
    batch_size: int = ranged(64, minimum=1)
    grad_accum_steps: int = ranged(1, minimum=1)
    warmup_steps: int = ranged(0, minimum=0)
    lr_schedule: str = "constant"
    max_grad_norm: float = ranged(1.0, minimum=0)  # 0: no clipping
    # None: the launcher's choice (`accelerate launch --mixed_precision`, `accelerate config`), else "no".
    mixed_precision: str | None = None
    # Models, batches and draws in float64: runs that must agree across process counts to round-off, reference runs.
    float64: bool = False
    ema_decay: float = ranged(0.999, minimum=0, below=1)  # 0: no EMA
    log_every: int = ranged(10, minimum=1)
    eval_every: int = ranged(200, minimum=1)
    checkpoint_every: int = ranged(200, minimum=1)
    keep_last: int = ranged(2, minimum=1)
    resume: str | None = None
    tracker: str = "wandb"
    num_workers: int = ranged(0, minimum=0)
    seed: int = ranged(0, minimum=0)

    def __post_init__(self):
        if self.mixed_precision is not None:
            check_choice("train.mixed_precision", self.mixed_precision, MIXED_PRECISION)
        if self.float64 and self.mixed_precision not in (None, "no"):
            raise GenkitError(f"train.float64 computes in float64; drop train.mixed_precision={self.mixed_precision}")
        check_choice("train.lr_schedule", self.lr_schedule, tuple(LR_SCHEDULES))
        check_choice("train.tracker", self.tracker, TRACKERS)
