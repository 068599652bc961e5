"""A GAN comparison scores every sample once, whatever the process count: two ranks give the one-rank table."""

import pytest
import yaml
from launching import genkit_on_two_ranks
from test_compare import GAN, compare, rows_of, write_base


@pytest.mark.slow
def test_two_ranks_score_the_gan_samples_of_one(tmp_path):
    base = write_base(tmp_path, GAN)
    section = {"train": [{"config": base, "overrides": ["name=mono"]}], "baselines": True, "refine_sizes": [0.02]}
    # Fewer samples than the 64 val points: sliced Wasserstein compares the first 32 of each, so a sample set counted
    # twice (each rank scoring all of them) would be compared with 64 val points instead.
    config = {"task": "compare", "name": "one", "num_samples": 32, "gans": section}
    one = compare(tmp_path, config, "tracker=none")  # trains the run, then scores it on one rank
    assert one.returncode == 0, one.stderr[-3000:]
    section = {**section, "train": [], "runs": [str(tmp_path / "runs" / "mono")]}
    config = {**config, "name": "two", "gans": section, "output_dir": str(tmp_path / "runs")}
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(config))
    two = genkit_on_two_ranks(tmp_path, "compare", "two.yaml", "tracker=none")
    assert two.returncode == 0, two.stderr[-3000:]
    one, two = rows_of(tmp_path, "one"), rows_of(tmp_path, "two")
    assert {row["processes"] for row in one} == {1} and {row["processes"] for row in two} == {2}
    assert (
        [row["method"] for row in two]
        == [row["method"] for row in one]
        == ["floor", "init", *["monoflow(non_saturating)"] * 2]
    )
    for a, b in zip(one, two, strict=True):
        # The same samples from generator batches of another row count: float32 round-off, ~1e-6 of each metric.
        # Scored on every rank (each sample counted twice), sw moved by 0.7% (0.9567 -> 0.9636), 70x the tolerance.
        assert b["sw"] == pytest.approx(a["sw"], rel=1e-4) and b["ed"] == pytest.approx(a["ed"], rel=1e-4), (a, b)
