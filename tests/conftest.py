import os

import pytest
from accelerate import PartialState
from accelerate.state import AcceleratorState
from tokenizer_runs import workdir  # noqa: F401 (a fixture for every test module)

# Tests never touch the network or the home folder, whoever runs them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture
def genkit_cache(monkeypatch, tmp_path_factory):
    """genkit's cache (folder indexes) in a fresh folder of the test's own; accelerate's state is left as found.

    build_dataset(folder) creates accelerate's process state; a later test's Accelerator(cpu=True) would inherit it.
    """
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("GENKIT_CACHE", str(cache))
    had_state = PartialState._shared_state != {}
    yield cache
    if not had_state:
        AcceleratorState._reset_state(reset_partial_state=True)
