"""The one training loop: accelerate for devices, DDP and mixed precision; EMA, LR schedules, checkpoints, resume.

A trainer plugs in named models and optimizers and a step function, and sees the loop only through a StepContext:

    class Trainer(Protocol):
        models: dict[str, nn.Module]          # prepared by the loop, replaced by their wrapped versions
        optimizers: dict[str, Optimizer]      # one per model it updates, same names
        ema_model: str | None                 # name of the model whose EMA weights are kept
        def optimizer_steps(self, steps) -> dict[str, int]        # how often each optimizer steps in `steps` steps
        def train_step(self, batch, context) -> dict[str, Tensor]  # calls context.update(name, loss) per optimizer
        def evaluate(self, context, step) -> dict[str, float]      # on every process, under EMA weights
        def export(self, context, folder) -> None                  # user-facing weights, main process

A GAN passes two models and two optimizers and calls `context.update("critic", ...)` and
`context.update("generator", ...)` inside one step; nothing here changes for it.
"""

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Protocol

import torch
import yaml
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import find_batch_size, recursively_apply, send_to_device, set_seed
from diffusers.optimization import get_scheduler
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from genkit.config import flat_config
from genkit.errors import GenkitError, TrainingStopped
from genkit.files import write_json, write_text
from genkit.progress import progress
from genkit.runs import Run
from genkit.tracking import RunLog
from genkit.train.config import LR_SCHEDULES, TrainConfig
from genkit.train.state import Averaged, Checkpoints
from genkit.train.stream import StreamSampler


class StepContext:
    """What a trainer sees of the loop: device and dtype, the stream position, model updates, image logging."""

    def __init__(self, loop: "Loop"):
        self._loop = loop

    @property
    def device(self) -> torch.device:
        return self._loop.accelerator.device

    @property
    def num_processes(self) -> int:
        return self._loop.accelerator.num_processes

    @property
    def process_index(self) -> int:
        return self._loop.accelerator.process_index

    @property
    def position(self) -> int:
        """The micro-batch being trained, counted over the run: keys noise that must not depend on the process count."""
        return self._loop.position

    def to_device(self, data):
        """Tensors (or nests of them) on the training device; floating ones in float64 when train.float64."""
        return self._loop.to_device(data)

    def update(self, name: str | tuple[str, ...], loss: Tensor) -> None:
        """Backward `loss` once; on a synchronising micro-step clip, step the optimizer `name` (or each of several
        names, for a loss that trains several models together) and its LR schedule."""
        self._loop.update(name, loss)

    def unwrap(self, name: str) -> nn.Module:
        """The trainer's model `name` without DDP or mixed-precision wrappers."""
        return self._loop.accelerator.unwrap_model(self._loop.trainer.models[name])

    def autocast(self):
        """The mixed-precision autocast context the run uses (a no-op without mixed precision)."""
        return self._loop.accelerator.autocast()

    def log_images(self, name: str, images: Tensor, step: int, nrow: int = 8) -> Path | None:
        """A grid of images in [-1, 1] to the trackers and the run's grids/ folder."""
        return self._loop.log.log_images(name, images, step, nrow)


class Trainer(Protocol):
    models: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    ema_model: str | None

    def optimizer_steps(self, steps: int) -> dict[str, int]: ...

    def train_step(self, batch: Tensor | list[Tensor], context: StepContext) -> dict[str, Tensor]: ...

    def evaluate(self, context: StepContext, step: int) -> dict[str, float]: ...

    def export(self, context: StepContext, folder: Path) -> None: ...


class Loop:
    """Runs a trainer for `config.steps` optimizer steps in `run_dir`, resumable from its checkpoints."""

    def __init__(self, config: TrainConfig, run_dir: Path, run_config: dict):
        """`run_config` is the whole resolved config as nested dicts: saved as config.yaml and sent to trackers."""
        self.config, self.run_dir, self.run_config = config, run_dir, run_config
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
        self.context = StepContext(self)
        self.averaged: Averaged | None = None
        self.log: RunLog | None = None
        self.position = 0
        self.stop_requested = 0  # the number of the signal that asked to stop; 0 while none did
        if self.accelerator.is_main_process:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text(Run(run_dir).config_file, yaml.safe_dump(run_config, sort_keys=False))
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

    def update(self, names: str | tuple[str, ...], loss: Tensor) -> None:
        """Backward `loss` once; on a synchronising micro-step clip, step each named optimizer and its LR schedule."""
        self.accelerator.backward(loss)
        for name in (names,) if isinstance(names, str) else names:
            if self.accelerator.sync_gradients and self.config.max_grad_norm > 0:
                self.accelerator.clip_grad_norm_(self.trainer.models[name].parameters(), self.config.max_grad_norm)
            self.trainer.optimizers[name].step()
            self.schedulers[name].step()
            self.trainer.optimizers[name].zero_grad(set_to_none=True)

    def ema_weights(self):
        """The EMA weights swapped into the EMA model for the duration (a no-op without EMA)."""
        return self.averaged.weights() if self.averaged is not None else contextlib.nullcontext()

    def _prepare(self, trainer: Trainer) -> None:
        """Cast, wrap and schedule the trainer's models and optimizers; the EMA and the checkpoints."""
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
            model = self.context.unwrap(trainer.ema_model)
            self.averaged = Averaged.of(trainer.ema_model, model, self.config.ema_decay, self.device)
        self.checkpoints = Checkpoints(
            self.accelerator, self.run_dir / "checkpoints", names, self.config.keep_last, self.averaged
        )

    def _request_stop(self, signum, frame) -> None:
        self.stop_requested = signum

    def _flags(self, losses: dict[str, Tensor]) -> tuple[bool, bool]:
        """(some loss is not finite, a stop was requested) on any process, agreed by all processes."""
        non_finite = any(not torch.isfinite(loss.detach()).all() for loss in losses.values())
        flags = torch.tensor([float(non_finite), float(self.stop_requested)], device=self.device)
        flags = self.accelerator.reduce(flags, reduction="sum")
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def _mean(self, losses: dict[str, Tensor]) -> dict[str, float]:
        return {k: self.accelerator.reduce(v.detach().float(), reduction="mean").item() for k, v in losses.items()}

    def _start(self, dataset: Dataset, step: int):
        """Write runtime.json, open the run log and the data stream at `step`; the batch iterator."""
        config, accelerator, micro_batch = self.config, self.accelerator, self.micro_batch()
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
        rank, world = accelerator.process_index, accelerator.num_processes
        start = step * config.grad_accum_steps
        sampler = StreamSampler(len(dataset), micro_batch, rank, world, config.seed, start)
        if step == 0:
            # Models are initialised alike on every rank; the noise a trainer draws must differ between ranks.
            set_seed(config.seed + 1, device_specific=True)
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=config.num_workers,
            persistent_workers=config.num_workers > 0,
            pin_memory=self.device.type == "cuda",  # batches in page-locked memory copy to the GPU faster
        )
        return iter(loader)

    def _train_step(self, step: int, batches) -> tuple[dict[str, Tensor], int]:
        """One optimizer step over grad_accum_steps micro-batches: its losses and the images it saw (all ranks)."""
        images = 0
        for micro in range(self.config.grad_accum_steps):
            self.position = step * self.config.grad_accum_steps + micro
            batch = self.to_device(next(batches))
            with self.accelerator.accumulate(*self.trainer.models.values()):
                losses = self.trainer.train_step(batch, self.context)
            images += find_batch_size(batch) * self.accelerator.num_processes
        if self.averaged is not None:
            self.averaged.step()
        return losses, images

    def run(self, trainer: Trainer, dataset: Dataset) -> dict[str, float]:
        """Train to `config.steps`; returns the last evaluation's metrics."""
        config = self.config
        self._prepare(trainer)
        step = self.checkpoints.resume(config.resume, self.run_dir)
        batches = self._start(dataset, step)
        previous = {s: signal.signal(s, self._request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        metrics: dict[str, float] = {}
        bar = progress(
            total=config.steps, initial=step, disable=not self.accelerator.is_main_process, desc=self.run_dir.name
        )
        try:
            saved_at, started, images = step, time.perf_counter(), 0
            while step < config.steps:
                losses, seen = self._train_step(step, batches)
                step, images = step + 1, images + seen
                bar.update(1)
                non_finite, stop = self._flags(losses)
                if non_finite:
                    values = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
                    last = f"step_{saved_at:08d}" if saved_at else "none yet"
                    raise GenkitError(
                        f"loss is not finite at step {step} ({values}); stopped without saving. Last good checkpoint: "
                        f"{last}. Lower the learning rate or use train.mixed_precision=no, then resume."
                    )
                if step % config.log_every == 0 or step == config.steps:
                    means = self._mean(losses)
                    lrs = {f"lr/{n}": s.get_last_lr()[0] for n, s in self.schedulers.items()}
                    throughput = images / (time.perf_counter() - started)
                    self.log.log({**means, **lrs, "images_per_second": throughput}, step)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()})
                if step % config.eval_every == 0 or step == config.steps:
                    metrics = self.evaluate(step)
                if step % config.checkpoint_every == 0 or step == config.steps or stop:
                    self.checkpoints.save(step)
                    saved_at = step
                if step % config.log_every == 0:
                    # Throughput covers training only: the clock restarts after evaluation and checkpointing.
                    started, images = time.perf_counter(), 0
                if stop:
                    raise TrainingStopped(
                        f"stopped by signal at step {step}; resume with train.resume=latest",
                        int(self.stop_requested or signal.SIGTERM),  # a rank the signal missed stops alike
                    )
            if step == config.steps:
                self.export()
        finally:
            bar.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.log.finish()
        return metrics

    def evaluate(self, step: int) -> dict[str, float]:
        """The trainer's evaluation under EMA weights, logged."""
        with torch.no_grad(), self.ema_weights():
            metrics = self.trainer.evaluate(self.context, step)
        self.log.log(metrics, step)
        return metrics

    def export(self) -> None:
        """The user-facing weights (EMA where kept) to run_dir/model."""
        if self.accelerator.is_main_process:
            with self.ema_weights():
                self.trainer.export(self.context, Run(self.run_dir).model)
        self.accelerator.wait_for_everyone()
