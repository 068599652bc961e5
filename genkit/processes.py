"""The process group a command runs in, as `accelerate launch` set it up (or one process)."""

from accelerate import PartialState
from accelerate.utils import parse_flag_from_env


def process_state() -> PartialState:
    """accelerate's PartialState, joining the launched CPU (gloo) group too.

    A bare PartialState() ignores ACCELERATE_USE_CPU and, on a machine without GPUs, leaves every launched
    process alone in a group of one; Accelerator() reads the flag, and so does this.
    """
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
