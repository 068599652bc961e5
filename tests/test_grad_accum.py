"""Gradient accumulation: N processes x A micro-batches train exactly like one process with the same global batch."""

import pytest
import yaml
from launching import genkit, genkit_on_two_ranks
from tokenizer_runs import TINY, model_state
from weights import assert_same_weights, float64_training_atol


@pytest.mark.slow
def test_one_process_accumulating_two_micro_batches_trains_like_two_processes(workdir):
    # Global batch 8 either way: one process sums two micro-batches of 4, two processes average one of 4 each.
    # In float64, so that round-off cannot flip a rounding or reach Adam's eps (see float64_training_atol).
    common = ["train.float64=true", "model.quantizer.kind=fsq"]
    one = genkit(workdir, "train", "tiny.yaml", "name=one", "train.grad_accum_steps=2", *common)
    two = genkit_on_two_ranks(workdir, "train", "tiny.yaml", "name=two", "train.grad_accum_steps=1", *common)
    assert one.returncode == 0 and two.returncode == 0, one.stderr[-2000:] + two.stderr[-2000:]
    runtime = {name: yaml.safe_load((workdir / "runs" / name / "runtime.json").read_text()) for name in ("one", "two")}
    assert (runtime["one"]["num_processes"], runtime["one"]["grad_accum_steps"]) == (1, 2)
    assert (runtime["two"]["num_processes"], runtime["two"]["grad_accum_steps"]) == (2, 1)
    atol = float64_training_atol(lr=TINY["optimizer"]["lr"], updates=TINY["train"]["steps"])
    assert_same_weights(model_state(workdir, "one"), model_state(workdir, "two"), atol)
