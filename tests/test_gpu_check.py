"""`make gpu-check` on a machine without CUDA: one line, exit code 0 (its checks run on the CPU in the slow suite)."""

import importlib.util
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parent / "gpu_check.py"


def test_without_cuda_the_gpu_check_says_so_in_one_line(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT)])
    assert module.main() == 0
    assert capsys.readouterr().out.splitlines() == [
        "gpu-check: no CUDA device here; nothing to check (run it on a GPU machine, or with --device cpu)"
    ]
