"""Rectified flow and ReFlow end to end on the 2-D mixture whose exact velocity is known."""

import json

import pytest
import torch
import yaml
from launching import genkit, genkit_on_two_ranks
from safetensors.torch import load_file
from scipy.stats import kstest

from genkit.fields import load_flow_run
from genkit.metrics import sliced_wasserstein, straightness
from genkit.models import load_velocity_model
from genkit.toys import toy_mixture
from genkit.train.flow import sample_time
from samplers import euler, heun, uniform

REFLOW = {
    "task": "reflow",
    "name": "toy",
    "eval_samples": 512,
    "rounds": 1,
    "reflow_steps": 500,
    "distill_steps": 300,
    "data": {"source": "gmm", "num_train": 8192, "num_val": 1024},
    "model": {"kind": "mlp", "hidden": 128, "depth": 3},
    "pairs": {"num_pairs": 2048, "shard_size": 1024, "solver": "reference", "batch_size": 1024},
    "optimizer": {"lr": 2.0e-3},
    "train": {
        "steps": 1200,
        "batch_size": 256,
        "warmup_steps": 50,
        "lr_schedule": "cosine",
        "ema_decay": 0.99,
        "log_every": 100,
        "eval_every": 5000,
        "checkpoint_every": 5000,
        "tracker": "none",
    },
}


@pytest.fixture(scope="module")
def reflow_run(tmp_path_factory):
    """One small ReFlow pipeline (1-RF, pairs, 2-RF, pairs, distill) shared by the tests below."""
    folder = tmp_path_factory.mktemp("reflow")
    (folder / "toy.yaml").write_text(yaml.safe_dump({**REFLOW, "output_dir": str(folder / "runs")}))
    result = genkit(folder, "train", "toy.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, result


def noise(n: int = 512, seed: int = 7) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


def accurate(model, z: torch.Tensor) -> torch.Tensor:
    """Z1 by 128-step Heun: within 1e-3 of an adaptive RK solve here, at a fraction of its cost."""
    return heun(model, z, uniform(129))


def test_one_rectified_flow_learns_the_exact_velocity(reflow_run):
    """Relative L2 error of v against GaussianMixture.rectified along true interpolations, t in [0.05, 0.95]."""
    folder, _ = reflow_run
    model = load_velocity_model(folder / "runs" / "toy" / "1-rf" / "model")
    mixture, generator = toy_mixture(), torch.Generator().manual_seed(3)
    x1 = mixture.sample(4096, generator=generator).float()
    x0 = torch.randn(4096, 2, generator=generator)
    t = 0.05 + 0.9 * torch.rand(4096, generator=generator)
    x_t = t[:, None] * x1 + (1 - t[:, None]) * x0
    with torch.no_grad():
        error = (model(x_t, t) - mixture.rectified(x_t.double(), t.double()).float()).pow(2).sum(1).mean()
    magnitude = mixture.rectified(x_t.double(), t.double()).pow(2).sum(1).mean()
    assert (error / magnitude).item() < 0.05


def test_reflow_straightens_and_keeps_the_marginal(reflow_run):
    folder, result = reflow_run
    runs = folder / "runs" / "toy"
    first, second = (load_velocity_model(runs / stage / "model") for stage in ("1-rf", "2-rf"))
    z = noise()
    with torch.no_grad():
        s1, s2 = straightness(first, z, nfe=64), straightness(second, z, nfe=64)
        accurate1, accurate2 = accurate(first, z), accurate(second, z)
        one_step1 = (euler(first, z, uniform(2)) - accurate1).pow(2).sum(1).mean().item()
        one_step2 = (euler(second, z, uniform(2)) - accurate2).pow(2).sum(1).mean().item()
    assert s2 < 0.3 * s1, (s1, s2)
    assert one_step2 < 0.3 * one_step1, (one_step1, one_step2)
    # Z1 of the 2-RF against Z1 of the 1-RF (the marginal ReFlow must preserve), next to the data's own spread.
    data = toy_mixture().sample(len(z), generator=torch.Generator().manual_seed(5)).float()
    assert sliced_wasserstein(accurate2, accurate1) < 2 * sliced_wasserstein(accurate1, data) + 0.05
    # Reflow does not increase the transport cost E||Z1 - Z0||^2 (fact 27).
    assert (accurate2 - z).pow(2).sum(1).mean() <= 1.05 * (accurate1 - z).pow(2).sum(1).mean()
    summary = json.loads((runs / "summary.json").read_text())["stages"]
    assert list(summary) == ["1-rf", "2-rf", "distill"]
    assert summary["distill"]["sliced_wasserstein_1step"] < summary["1-rf"]["sliced_wasserstein_1step"]
    assert "straightness" in result.stdout and "distill" in result.stdout


def test_rerunning_the_pipeline_skips_finished_stages(reflow_run):
    folder, _ = reflow_run
    weights = folder / "runs" / "toy" / "2-rf" / "model" / "diffusion_pytorch_model.safetensors"
    before = weights.stat().st_mtime_ns
    result = genkit(folder, "train", "toy.yaml")
    assert result.returncode == 0, result.stderr[-2000:]
    assert weights.stat().st_mtime_ns == before
    changed = genkit(folder, "train", "toy.yaml", "reflow_steps=501")
    assert (
        changed.returncode == 2 and "2-rf was started with other settings (train.steps: 500 -> 501)" in changed.stderr
    )


def test_sampling_gives_the_same_samples_on_one_or_two_processes(reflow_run):
    folder, _ = reflow_run
    args = ["sample", "runs/toy", "--solver", "heun", "--nfe", "4", "--num", "37", "--seed", "3"]
    one = genkit(folder, *args)
    assert one.returncode == 0, one.stderr[-2000:]
    path = folder / "runs" / "toy" / "distill" / "samples" / "heun_nfe4_uniform_seed3.safetensors"
    single = load_file(path)["samples"]
    batched = genkit(folder, *args, "--batch-size", "3")
    assert batched.returncode == 0, batched.stderr[-2000:]
    in_threes = load_file(path)["samples"]
    path.unlink()
    two = genkit_on_two_ranks(folder, *args, "--batch-size", "3")
    assert two.returncode == 0, two.stderr[-2000:]
    assert "on 2 process(es)" in two.stdout and "on 1 process(es)" in one.stdout
    assert single.shape == (37, 2)
    # Batch k holds samples 3k..3k+2 on any number of processes, so every sample is computed by the same operations.
    assert torch.equal(load_file(path)["samples"], in_threes)
    # Another batch size runs the same float32 operations per sample, but in GEMMs of another row count, whose
    # kernel choice changes the round-off of each 320-term dot product (up to 320 x 6e-8 = 2e-5 of its magnitude,
    # ~1 here); a wrong noise index or sample order moves samples by ~1.
    torch.testing.assert_close(in_threes, single, rtol=0, atol=1e-4)
    assert path.with_suffix(".png").stat().st_size > 0


def test_sigma_space_solvers_sample_through_the_edm_conversion(reflow_run):
    """dpmpp_2m on the EDM form of a rectified model converges to the accurate solve of that form, which is the
    model's own accurate solution in rectified time up to the EDM range's ends (sigma from 80 to 0.002)."""
    folder, _ = reflow_run
    field = load_flow_run(folder / "runs" / "toy" / "1-rf")
    z = noise(256)
    with torch.no_grad():
        rectified, _ = field.reference(z, "uniform", 1e-7)  # in the model's own rectified time
        target, _ = field.reference(z, "logsnr", 1e-7)
        errors = [
            (field.solve(z, "dpmpp_2m", nfe, "logsnr") - target).pow(2).sum(1).mean().sqrt()
            for nfe in (8, 32, 128, 512)
        ]
    # Starting at sigma = 80 misses x1 / 81 of the start (|x1| ~ 2 here) and ending at 0.002 a 0.2% step: ~0.01.
    assert (target - rectified).pow(2).sum(1).mean().sqrt() < 0.05
    # Converging: the error falls with every 4x of the budget, to under 1% of the data's scale at NFE 512. (A few of
    # this toy's trajectories cross a sharp fold of its velocity: they reach second order only past NFE 128.)
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False)) and errors[-1] < 0.01, errors
    args = ["sample", "runs/toy/1-rf", "--solver", "dpmpp_2m", "--nfe", "8", "--schedule", "logsnr", "--num", "16"]
    assert genkit(folder, *args).returncode == 0
    assert (folder / "runs" / "toy" / "1-rf" / "samples" / "dpmpp_2m_nfe8_logsnr_seed0.png").exists()
    bad = genkit(folder, "sample", "runs/toy/1-rf", "--solver", "dpmpp_2m", "--schedule", "uniform")
    assert bad.returncode == 2 and "sigma space" in bad.stderr


def test_logit_normal_times_are_the_sigmoid_of_a_standard_normal():
    """flow.time_sampling=logit_normal (docs/rectified_flow.md): logit(t) ~ N(0, 1), checked by Kolmogorov-Smirnov."""
    torch.manual_seed(0)
    t = sample_time(20_000, "logit_normal", torch.Generator().manual_seed(0)).double()
    assert ((t > 0) & (t < 1)).all()
    logits = torch.log(t / (1 - t)).numpy()
    # The KS statistic of n = 20000 draws from the right law exceeds 1.95 / sqrt(n) with probability 0.001.
    statistic = kstest(logits, "norm").statistic
    assert statistic < 1.95 / 20_000**0.5, statistic
    # The wrong law is far off: a uniform t gives logits of the logistic law, whose statistic here is ~0.07.
    uniform = torch.rand(20_000, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    assert kstest(torch.log(uniform / (1 - uniform)).numpy(), "norm").statistic > 0.03
