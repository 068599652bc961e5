import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_sampler_benchmark_runs_and_records_its_tables():
    subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_samplers.py")], check=True, cwd=ROOT)
    result = json.loads((ROOT / "runs" / "bench_samplers.json").read_text())
    euler = [result["rmse"]["euler"][str(nfe)] for nfe in range(3, 13)]
    assert all(fine < coarse for coarse, fine in zip(euler, euler[1:], strict=False))
    assert result["rmse"]["heun"]["3"] is None and result["rmse"]["heun"]["4"] is not None
    assert result["rmse"]["dpmpp_2m"]["12"] < result["rmse"]["euler"]["12"]
    # Overhead is a timing, reported by the benchmark and not asserted: only that every cell was measured.
    assert {solver: sorted(row) for solver, row in result["overhead"].items()} == {
        solver: ["10", "4"] for solver in result["rmse"]
    }


@pytest.mark.slow
def test_amed_benchmark_quick_run_fills_every_cell():
    """The smoke budget: every table cell is computed and every AMED cell spent exactly its NFE (checked inside)."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_amed.py"), "--quick"], check=True, cwd=ROOT)
    result = json.loads((ROOT / "runs" / "bench_amed_quick.json").read_text())
    for field in ("mixture", "digits"):
        for row in ("euler", "dpmpp_2m", "ipndm", "amed", "amed_plugin"):
            assert all(value is not None for value in result[field]["rmse"][row].values()), (field, row)
        assert result["mixture"]["rmse"]["heun"]["3"] is None
    assert set(result["digits"]["bottleneck"]) == {"amed", "amed_plugin"}
