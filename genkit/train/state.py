"""Training checkpoints: what one holds, written atomically, and putting it back for an exact resume.

    checkpoints/step_<N>/
        <model>/        each model's weights and config as `save_pretrained` writes them: loadable on its own
        <model>_ema/    the EMA weights of the model the trainer keeps an EMA of, the same way
        optimizer*.bin, scheduler*.bin, random_states_*.pkl    accelerate's state (save_state / load_state)
        state.json      the step and the EMA's update count

Models go through accelerate's save-state hooks (as diffusers' trainers do), so a checkpoint holds loadable model
folders instead of accelerate's bare weight files. All processes write under a temporary name; the main process
renames it into place and rotates old checkpoints, so a killed run never leaves half a checkpoint.
"""

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from torch import nn

from genkit.checkpoint import list_checkpoints, resolve_resume, rotate
from genkit.errors import GenkitError
from genkit.files import move_into_place, save_pretrained, write_json
from genkit.models import load_model

STATE = "state.json"


@dataclass
class Averaged:
    """The model the trainer keeps an EMA of: its name, its unwrapped module and diffusers' EMAModel of it."""

    name: str
    model: nn.Module
    ema: EMAModel

    @classmethod
    def of(cls, name: str, model: nn.Module, decay: float, device: torch.device) -> "Averaged":
        ema = EMAModel(model.parameters(), decay=decay)
        ema.to(device)
        return cls(name, model, ema)

    @torch.no_grad()
    def step(self) -> None:
        self.ema.step(self.model.parameters())

    @contextlib.contextmanager
    def weights(self):
        """Temporarily swap the EMA weights into the model."""
        parameters = list(self.model.parameters())
        self.ema.store(parameters)
        self.ema.copy_to(parameters)
        try:
            yield
        finally:
            self.ema.restore(parameters)


class Checkpoints:
    """The checkpoints of one run: `names` are the models in the order they were passed to accelerator.prepare."""

    def __init__(
        self, accelerator: Accelerator, folder: Path, names: list[str], keep_last: int, averaged: Averaged | None
    ):
        self.accelerator, self.folder, self.names, self.keep_last = accelerator, folder, names, keep_last
        self.averaged = averaged
        accelerator.register_save_state_pre_hook(self._save_models)
        accelerator.register_load_state_pre_hook(self._load_models)

    def _save_models(self, models: list[nn.Module], weights: list[dict], output_dir: str) -> None:
        if self.accelerator.is_main_process:
            for name, model in zip(self.names, models, strict=True):
                save_pretrained(self.accelerator.unwrap_model(model), Path(output_dir) / name)
        weights.clear()  # saved above as model folders, not again as accelerate's weight files

    def _load_models(self, models: list[nn.Module], input_dir: str) -> None:
        for name, model in zip(self.names, models, strict=True):
            unwrapped = self.accelerator.unwrap_model(model)
            unwrapped.load_state_dict(load_model(Path(input_dir) / name, dtype=unwrapped.dtype).state_dict())
        models.clear()  # loaded above

    def save(self, step: int) -> Path:
        """Write step_<step>: the models, their EMA twin, accelerate's state and the step."""
        final = self.folder / f"step_{step:08d}"
        temporary = self.folder / f".tmp_step_{step:08d}"
        accelerator, averaged = self.accelerator, self.averaged
        accelerator.wait_for_everyone()
        accelerator.save_state(str(temporary))
        if accelerator.is_main_process:
            if averaged is not None:
                with averaged.weights():
                    save_pretrained(averaged.model, temporary / f"{averaged.name}_ema")
            ema_step = averaged.ema.optimization_step if averaged else 0
            write_json(temporary / STATE, {"step": step, "ema_step": ema_step})
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            move_into_place(temporary, final)
            rotate(self.folder, self.keep_last)
        accelerator.wait_for_everyone()
        return final

    def resume(self, resume: str | None, run_dir: Path) -> int:
        """Load the checkpoint `resume` names (`latest` or a folder); the step to continue from, 0 for a fresh run."""
        if resume is None:
            if list_checkpoints(self.folder):
                raise GenkitError(
                    f"{run_dir} already holds checkpoints; continue it with train.resume=latest "
                    "or start a new run with another name=..."
                )
            return 0
        folder = resolve_resume(self.folder, resume)
        if folder is None:
            return 0
        try:
            self.accelerator.load_state(str(folder))
            saved = json.loads((folder / STATE).read_text())
            if self.averaged is not None:
                model = self.averaged.model
                averaged = load_model(folder / f"{self.averaged.name}_ema", dtype=model.dtype)
                for shadow, parameter in zip(self.averaged.ema.shadow_params, averaged.parameters(), strict=True):
                    shadow.copy_(parameter)
                self.averaged.ema.optimization_step = saved["ema_step"]
        except (OSError, RuntimeError, ValueError, KeyError, GenkitError) as error:
            cause = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise GenkitError(
                f"checkpoint {folder} is unreadable ({cause}); delete it to resume from the one before, "
                "or point train.resume at another step_* folder"
            ) from None
        return saved["step"]
