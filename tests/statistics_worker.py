"""Launched by test_compare with two CPU ranks: gathered feature statistics of two shards, written by rank 0."""

import json
import sys

import torch
from accelerate import Accelerator

from genkit.metrics import FeatureStatistics


def main(output: str) -> None:
    # Accelerator, not a bare PartialState, reads ACCELERATE_USE_CPU and joins the gloo group.
    state = Accelerator().state
    assert state.num_processes == 2, f"expected 2 ranks, got {state.num_processes}"
    features = torch.randn(37, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 1
    shard = features[:20] if state.process_index == 0 else features[20:]
    gathered = FeatureStatistics.of(shard).gathered(state)
    if state.is_main_process:
        result = {"count": gathered.count, "total": gathered.total.tolist(), "outer": gathered.outer.tolist()}
        with open(output, "w") as handle:
            json.dump(result, handle)
    state.wait_for_everyone()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
