"""The one training loop: accelerate for devices, DDP and mixed precision; EMA, schedules, checkpoints, resume.

A trainer plugs in named models and optimizers and a step function:

    class Trainer(Protocol):
        models: dict[str, nn.Module]          # prepared by the loop, replaced by their wrapped versions
        optimizers: dict[str, Optimizer]      # one per model it updates, same names
        ema_model: str | None                 # name of the model whose EMA weights are kept
        def optimizer_steps(self, steps) -> dict[str, int]       # how often each optimizer steps in `steps` loop steps
        def train_step(self, batch, loop) -> dict[str, Tensor]   # calls loop.update(name, loss) per optimizer
        def evaluate(self, loop, step) -> dict[str, float]       # on every process, under EMA weights
        def export(self, loop, folder) -> None                   # user-facing weights, main process

A GAN passes two models and two optimizers and calls `loop.update("critic", ...)` and
`loop.update("generator", ...)` inside one step; nothing here changes for it.
"""

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import yaml
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import find_batch_size, recursively_apply, send_to_device, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from genkit.checkpoint import list_checkpoints, resolve_resume, rotate, write_json, write_text
from genkit.config import check_choice, flat_config, ranged
from genkit.errors import GenkitError
from genkit.tracking import TRACKERS, RunLog

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


class Trainer(Protocol):
    models: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    ema_model: str | None

    def optimizer_steps(self, steps: int) -> dict[str, int]: ...

    def train_step(self, batch: Tensor | list[Tensor], loop: "Loop") -> dict[str, Tensor]: ...

    def evaluate(self, loop: "Loop", step: int) -> dict[str, float]: ...

    def export(self, loop: "Loop", folder: Path) -> None: ...


class StreamSampler(Sampler[list[int]]):
    """This process's share of every micro-batch of an endless stream of seeded epoch permutations.

    The global batch at a stream position is the same whatever the process count (rank r takes the r-th
    contiguous slice), and resuming at a step is starting the stream at that position: no state to save.
    """

    def __init__(self, size: int, micro_batch: int, rank: int, world: int, seed: int, start: int):
        self.size, self.micro_batch, self.rank, self.world = size, micro_batch, rank, world
        self.seed, self.start = seed, start
        self.local = micro_batch // world

    def _stream(self, position: int) -> Iterator[int]:
        epoch, offset = divmod(position, self.size)
        while True:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            yield from order[offset:].tolist()
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[list[int]]:
        stream = self._stream(self.start * self.micro_batch)
        while True:
            batch = [next(stream) for _ in range(self.micro_batch)]
            yield batch[self.rank * self.local : (self.rank + 1) * self.local]


class Loop:
    """Runs a trainer for `config.steps` optimizer steps in `run_dir`, resumable from its checkpoints."""

    def __init__(self, config: TrainConfig, run_dir: Path, run_config: dict):
        """`run_config` is the whole resolved config as nested dicts: saved as config.yaml and sent to trackers."""
        self.config, self.run_dir, self.run_config = config, run_dir, run_config
        self.checkpoint_dir = run_dir / "checkpoints"
        if config.mixed_precision is not None:
            self.mixed_precision_from = "config"
        else:
            self.mixed_precision_from = "launcher" if "ACCELERATE_MIXED_PRECISION" in os.environ else "default"
        try:
            self.accelerator = Accelerator(
                mixed_precision=config.mixed_precision,
                gradient_accumulation_steps=config.grad_accum_steps,
                log_with=None if config.tracker == "none" else config.tracker,
                project_dir=str(run_dir),
                # One scheduler step per optimizer step, whatever the process count.
                dataloader_config=DataLoaderConfiguration(split_batches=True),
            )
        except ValueError as error:
            raise GenkitError(
                f"mixed precision {config.mixed_precision or os.environ.get('ACCELERATE_MIXED_PRECISION')} cannot run "
                f"here: {error}"
            ) from None
        if config.float64 and self.accelerator.mixed_precision != "no":
            raise GenkitError(
                f"train.float64 computes in float64, but the launcher asks for {self.accelerator.mixed_precision} "
                "mixed precision; launch with --mixed_precision no"
            )
        self.dtype = torch.float64 if config.float64 else None
        self.ema: EMAModel | None = None
        self.log: RunLog | None = None
        # The micro-batch being trained, counted over the run: keys noise that must not depend on the process count.
        self.position = 0
        self.stop_requested = False
        if self.accelerator.is_main_process:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text(run_dir / "config.yaml", yaml.safe_dump(run_config, sort_keys=False))
        set_seed(config.seed)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def to_device(self, data):
        """Tensors (or nests of them) on the training device; floating ones in float64 when train.float64."""
        data = send_to_device(data, self.device)
        if self.dtype is None:
            return data
        return recursively_apply(lambda x: x.to(self.dtype) if x.is_floating_point() else x, data)

    def micro_batch(self) -> int:
        """Global batch per accumulation step; each process gets micro_batch / num_processes of it."""
        config, world = self.config, self.accelerator.num_processes
        if config.batch_size % (config.grad_accum_steps * world):
            raise GenkitError(
                f"train.batch_size={config.batch_size} must divide evenly over grad_accum_steps="
                f"{config.grad_accum_steps} x {world} processes"
            )
        return config.batch_size // config.grad_accum_steps

    def update(self, name: str, loss: Tensor) -> None:
        """Backward `loss`; on a synchronising micro-step clip, step the optimizer and its LR schedule."""
        self.accelerator.backward(loss)
        if self.accelerator.sync_gradients and self.config.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.trainer.models[name].parameters(), self.config.max_grad_norm)
        self.trainer.optimizers[name].step()
        self.schedulers[name].step()
        self.trainer.optimizers[name].zero_grad(set_to_none=True)

    def unwrap(self, name: str) -> nn.Module:
        """The trainer's model without DDP or mixed-precision wrappers."""
        return self.accelerator.unwrap_model(self.trainer.models[name])

    @contextlib.contextmanager
    def ema_weights(self):
        """Temporarily swap the EMA weights into the EMA model (no-op without EMA)."""
        if self.ema is None:
            yield
            return
        parameters = list(self.unwrap(self.trainer.ema_model).parameters())
        self.ema.store(parameters)
        self.ema.copy_to(parameters)
        try:
            yield
        finally:
            self.ema.restore(parameters)

    def _prepare(self, trainer: Trainer) -> None:
        self.trainer = trainer
        names = list(trainer.models)
        if set(trainer.optimizers) - set(names):
            raise ValueError(f"optimizers {sorted(trainer.optimizers)} must be named after models {names}")
        if self.dtype is not None:
            for model in trainer.models.values():
                model.to(self.dtype)
        steps, schedulers = self.config.steps, {}
        updates = trainer.optimizer_steps(steps)
        for name, optimizer in trainer.optimizers.items():
            # Each schedule spans the updates its optimizer takes; warmup keeps its share of the run.
            schedulers[name] = get_scheduler(
                LR_SCHEDULES[self.config.lr_schedule],
                optimizer,
                num_warmup_steps=round(self.config.warmup_steps * updates[name] / steps),
                num_training_steps=max(updates[name], 1),
            )
        opt_names = list(trainer.optimizers)
        prepared = self.accelerator.prepare(
            *[trainer.models[n] for n in names],
            *[trainer.optimizers[n] for n in opt_names],
            *[schedulers[n] for n in opt_names],
        )
        trainer.models = dict(zip(names, prepared[: len(names)], strict=True))
        trainer.optimizers = dict(zip(opt_names, prepared[len(names) : len(names) + len(opt_names)], strict=True))
        self.schedulers = dict(zip(opt_names, prepared[len(names) + len(opt_names) :], strict=True))
        if self.config.ema_decay > 0 and trainer.ema_model is not None:
            self.ema = EMAModel(self.unwrap(trainer.ema_model).parameters(), decay=self.config.ema_decay)
            self.ema.to(self.device)

    def _resume(self) -> int:
        """Load the checkpoint named by `train.resume`; the step to continue from (0 for a fresh run)."""
        existing = list_checkpoints(self.checkpoint_dir)
        if self.config.resume is None:
            if existing:
                raise GenkitError(
                    f"{self.run_dir} already holds checkpoints; continue it with train.resume=latest "
                    "or start a new run with another name=..."
                )
            return 0
        folder = resolve_resume(self.checkpoint_dir, self.config.resume)
        if folder is None:
            return 0
        try:
            self.accelerator.load_state(str(folder))
            state = (folder / "state.json").read_text()
            if self.ema is not None:
                ema = load_file(folder / "ema.safetensors")
                names = [n for n, _ in self.unwrap(self.trainer.ema_model).named_parameters()]
                for shadow, name in zip(self.ema.shadow_params, names, strict=True):
                    shadow.copy_(ema[name])
        except (OSError, RuntimeError, ValueError, KeyError, SafetensorError) as error:
            cause = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise GenkitError(
                f"checkpoint {folder} is unreadable ({cause}); delete it to resume from the one before, "
                "or point train.resume at another step_* folder"
            ) from None
        saved = json.loads(state)
        if self.ema is not None:
            self.ema.optimization_step = saved["ema_step"]
        return saved["step"]

    def save_checkpoint(self, step: int) -> Path:
        """All processes write the state under a temporary name; the main process renames and rotates."""
        final = self.checkpoint_dir / f"step_{step:08d}"
        temporary = self.checkpoint_dir / f".tmp_step_{step:08d}"
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        accelerator.save_state(str(temporary))
        if accelerator.is_main_process:
            if self.ema is not None:
                names = [n for n, _ in self.unwrap(self.trainer.ema_model).named_parameters()]
                ema = {n: p.detach().cpu().contiguous() for n, p in zip(names, self.ema.shadow_params, strict=True)}
                save_file(ema, temporary / "ema.safetensors")
            ema_step = self.ema.optimization_step if self.ema is not None else 0
            write_json(temporary / "state.json", {"step": step, "ema_step": ema_step})
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            temporary.rename(final)
            rotate(self.checkpoint_dir, self.config.keep_last)
        accelerator.wait_for_everyone()
        return final

    def _request_stop(self, signum, frame) -> None:
        self.stop_requested = True

    def _flags(self, losses: dict[str, Tensor]) -> tuple[bool, bool]:
        """(some loss is not finite, a stop was requested) on any process, agreed by all processes."""
        non_finite = any(not torch.isfinite(loss.detach()).all() for loss in losses.values())
        flags = torch.tensor([float(non_finite), float(self.stop_requested)], device=self.device)
        flags = self.accelerator.reduce(flags, reduction="sum")
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def _mean(self, losses: dict[str, Tensor]) -> dict[str, float]:
        return {k: self.accelerator.reduce(v.detach().float(), reduction="mean").item() for k, v in losses.items()}

    def run(self, trainer: Trainer, dataset: Dataset) -> dict[str, float]:
        """Train to `config.steps`; returns the last evaluation's metrics."""
        config, accelerator = self.config, self.accelerator
        micro_batch = self.micro_batch()
        self._prepare(trainer)
        step = self._resume()
        runtime = {
            "num_processes": accelerator.num_processes,
            "per_process_batch": micro_batch // accelerator.num_processes,
            "grad_accum_steps": config.grad_accum_steps,
            "global_batch": config.batch_size,
            "device": str(self.device),
            "mixed_precision": accelerator.mixed_precision,
            "mixed_precision_from": self.mixed_precision_from,
            "float64": config.float64,
            "resumed_from_step": step,
            "torch": torch.__version__,
        }
        if accelerator.is_main_process:
            write_json(self.run_dir / "runtime.json", runtime)
            print(
                f"{self.run_dir.name}: {runtime['num_processes']} process(es) x {runtime['per_process_batch']} images "
                f"x {config.grad_accum_steps} accumulation = global batch {config.batch_size} on {runtime['device']}"
                + (f", resumed at step {step}" if step else "")
            )
        self.log = RunLog(accelerator, self.run_dir, config.tracker, flat_config(self.run_config), resumed=step > 0)
        sampler = StreamSampler(
            len(dataset),
            micro_batch,
            accelerator.process_index,
            accelerator.num_processes,
            config.seed,
            start=step * config.grad_accum_steps,
        )
        batches = iter(DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers))
        if step == 0:
            # Models are initialised alike on every rank; the noise a trainer draws must differ between ranks.
            set_seed(config.seed + 1, device_specific=True)
        previous = {s: signal.signal(s, self._request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        metrics: dict[str, float] = {}
        progress = tqdm(
            total=config.steps, initial=step, disable=not accelerator.is_main_process, desc=self.run_dir.name
        )
        try:
            saved_at, started, images = step, time.perf_counter(), 0
            while step < config.steps:
                for micro in range(config.grad_accum_steps):
                    self.position = step * config.grad_accum_steps + micro
                    batch = self.to_device(next(batches))
                    with accelerator.accumulate(*trainer.models.values()):
                        losses = trainer.train_step(batch, self)
                    images += find_batch_size(batch) * accelerator.num_processes
                if self.ema is not None:
                    self.ema.step(self.unwrap(trainer.ema_model).parameters())
                step += 1
                progress.update(1)
                non_finite, stop = self._flags(losses)
                if non_finite:
                    values = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
                    last = f"step_{saved_at:08d}" if saved_at else "none yet"
                    raise GenkitError(
                        f"loss is not finite at step {step} ({values}); stopped without saving. Last good checkpoint: "
                        f"{last}. Lower the learning rate or use train.mixed_precision=no, then resume."
                    )
                if step % config.log_every == 0 or step == config.steps:
                    elapsed = time.perf_counter() - started
                    means = self._mean(losses)
                    lrs = {f"lr/{n}": s.get_last_lr()[0] for n, s in self.schedulers.items()}
                    self.log.log({**means, **lrs, "images_per_second": images / elapsed}, step)
                    progress.set_postfix({k: f"{v:.4g}" for k, v in means.items()})
                if step % config.eval_every == 0 or step == config.steps:
                    metrics = self.evaluate(step)
                if step % config.checkpoint_every == 0 or step == config.steps or stop:
                    self.save_checkpoint(step)
                    saved_at = step
                if step % config.log_every == 0:
                    # Throughput covers training only: the clock restarts after evaluation and checkpointing.
                    started, images = time.perf_counter(), 0
                if stop:
                    progress.write(f"stopped by signal at step {step}; resume with train.resume=latest")
                    break
            if step == config.steps:
                self.export()
        finally:
            progress.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.log.finish()
        return metrics

    def evaluate(self, step: int) -> dict[str, float]:
        """The trainer's evaluation under EMA weights, logged."""
        with torch.no_grad(), self.ema_weights():
            metrics = self.trainer.evaluate(self, step)
        self.log.log(metrics, step)
        return metrics

    def export(self) -> None:
        """The user-facing weights (EMA where kept) to run_dir/model."""
        if self.accelerator.is_main_process:
            with self.ema_weights():
                self.trainer.export(self, self.run_dir / "model")
        self.accelerator.wait_for_everyone()
