"""GANs as ODEs: the log-ratio optimum (fact 31), particle = loss step (29), Su's identity (28), penalties, training."""

import math

import numpy as np
import pytest
import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from launching import genkit, genkit_on_two_ranks
from safetensors.torch import load_file
from weights import assert_same_weights, float64_training_atol

from genkit.config import load_config
from genkit.data import validation_samples
from genkit.errors import GenkitError
from genkit.metrics import sliced_wasserstein
from genkit.models import load_gan
from genkit.nets.gan import DCGANCritic, DCGANGenerator, MLPCritic, MLPGenerator, monotone
from genkit.train import gan
from genkit.train.gan import GanConfig, generator_loss, gradient_penalty, logistic_loss

WEIGHTS = "diffusion_pytorch_model.safetensors"  # what save_pretrained writes

TOY = {
    "task": "gan",
    "eval_samples": 1000,
    "data": {"source": "8gaussians"},
    "model": {"kind": "mlp", "hidden": 128, "depth": 3, "latent_dim": 8},
    "train": {"batch_size": 256, "tracker": "none", "ema_decay": 0.0},
}


def test_the_logistic_optimum_is_the_log_density_ratio():
    """docs/gans_as_odes.md §2: minimising the logistic loss over d on p = N(1/2, 1), q = N(-1/2, 1) gives
    d(x) = log p/q = x."""
    torch.manual_seed(0)
    critic = MLPCritic(1, hidden=32, depth=2)
    optimizer = torch.optim.Adam(critic.parameters(), lr=3e-3)
    for _ in range(1500):
        real, fake = torch.randn(512, 1) + 0.5, torch.randn(512, 1) - 0.5
        loss = logistic_loss(critic(real), critic(fake))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x = torch.linspace(-1.5, 1.5, 13)[:, None]
    with torch.no_grad():
        assert (critic(x) - x[:, 0]).abs().max() < 0.15


@pytest.mark.parametrize("h", ["logit", "non_saturating", "minimax", "arcsinh"])
def test_one_particle_regression_step_is_two_eta_times_the_loss_step(h):
    """docs/gans_as_odes.md §3: at theta_t the gradient of ||G - sg[G + eta grad h(d(G))]||^2 is
    2 eta grad E[-h(d(G))]."""
    torch.manual_seed(0)
    generator, critic = MLPGenerator(4, [2], hidden=16, depth=2).double(), MLPCritic(2, hidden=16, depth=2).double()
    critic.requires_grad_(False)
    z = torch.randn(64, 4, dtype=torch.float64)
    gradients = {}
    for form in ("loss", "particle"):
        settings = GanConfig(method="monoflow", h=h, logit_shift=5.0 if h == "minimax" else 0.0, eta=0.3)
        settings.generator_form = form
        generator.zero_grad()
        generator_loss(generator(z), critic, settings).backward()
        gradients[form] = torch.cat([p.grad.flatten() for p in generator.parameters()])
    torch.testing.assert_close(gradients["particle"], 2 * 0.3 * gradients["loss"], rtol=1e-5, atol=1e-10)


def test_monotone_functions_and_their_saturation():
    """docs/gans_as_odes.md §4: h' > 0 for each h; softplus saturates as d -> -inf, log sigmoid does not."""
    d = torch.linspace(-20, 5, 101, dtype=torch.float64, requires_grad=True)
    slopes = {}
    for h in ("logit", "non_saturating", "minimax", "arcsinh"):
        (slopes[h],) = torch.autograd.grad(monotone(h, d).sum(), d)
        assert (slopes[h] > 0).all(), h
    torch.testing.assert_close(slopes["non_saturating"], 1 - torch.sigmoid(d.detach()))
    torch.testing.assert_close(slopes["minimax"], torch.sigmoid(d.detach()))
    torch.testing.assert_close(slopes["arcsinh"], 1 / (1 + d.detach() ** 2).sqrt())
    assert slopes["minimax"][0] < 1e-8 and slopes["non_saturating"][0] > 1 - 1e-8
    torch.testing.assert_close(monotone("minimax", d, shift=5.0), torch.nn.functional.softplus(d + 5))


class Quadratic(torch.nn.Module):
    """D(x) = 1/2 ||A x||^2 + w.x: grad D = A^T A x + w, known in closed form."""

    def __init__(self, dim: int):
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.a = torch.nn.Parameter(torch.randn(dim, dim, generator=generator, dtype=torch.float64) / math.sqrt(dim))
        self.w = torch.nn.Parameter(torch.randn(dim, generator=generator, dtype=torch.float64))

    def forward(self, x):
        x = x.flatten(1).to(self.a.dtype)
        return 0.5 * (x @ self.a.T).pow(2).sum(1) + x @ self.w

    def gradient(self, x):
        return x.flatten(1).double() @ self.a.T @ self.a + self.w


def test_gradient_penalties_match_a_hand_computation():
    critic = Quadratic(6)
    points = torch.randn(32, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    norms = critic.gradient(points).detach().norm(dim=1)
    for centre in (0.0, 1.0):
        expected = (norms - centre).pow(2).mean()
        torch.testing.assert_close(gradient_penalty(critic, points, centre).double(), expected, rtol=1e-6, atol=0)


def test_the_penalty_is_float32_and_unscaled_under_mixed_precision():
    """Inside bf16 autocast and through accelerate's bf16 wrapper the penalty equals the plain float32 one."""
    torch.manual_seed(0)
    critic = DCGANCritic(1, 8, width=8)
    points = torch.randn(16, 1, 8, 8)
    plain = gradient_penalty(critic, points, 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = gradient_penalty(critic, points, 1.0)
    # The accelerator state is process-wide: start from none, and leave none for later in-process training.
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        prepared = Accelerator(cpu=True, mixed_precision="bf16").prepare(critic)
        # The wrapper computes in bf16 (its outputs come back as float32, rounded).
        with torch.no_grad():
            assert not torch.equal(prepared(points), type(critic).forward(critic, points))
        wrapped = gradient_penalty(prepared, points, 1.0)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert plain.dtype == inside.dtype == wrapped.dtype == torch.float32 and plain.isfinite()
    torch.testing.assert_close(inside, plain)
    torch.testing.assert_close(wrapped, plain)


def test_su_identity_and_the_reflow_loss_equal_the_derived_critic_loss_up_to_a_constant():
    """docs/gans_as_odes.md §5 (step 5 is exact in expectation) by Gauss-Legendre quadrature in t:
    E_t d/dt D(x_t) = D(x1) - D(x0), so for v = grad D
    E_t 1/2 ||v(x_t) - (x1 - x0)||^2 = [E D(x0) - E D(x1) + 1/2 E_t ||grad D(x_t)||^2] + 1/2 E ||x1 - x0||^2."""
    nodes, weights = np.polynomial.legendre.leggauss(40)
    t_nodes, t_weights = torch.tensor((nodes + 1) / 2), torch.tensor(weights / 2)
    generator = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(64, 5, generator=generator, dtype=torch.float64), torch.randn(64, 5, generator=generator)
    x1 = x1.double() + 2
    for seed in (0, 1):
        torch.manual_seed(seed)
        critic = MLPCritic(5, hidden=32, depth=2).double()
        field = lambda x: torch.autograd.grad(critic(x).sum(), x)[0]  # noqa: B023, E731
        derivative, penalty, reflow = 0, 0, 0
        for t, w in zip(t_nodes, t_weights, strict=True):
            x_t = ((1 - t) * x0 + t * x1).requires_grad_(True)
            grad = field(x_t)
            derivative = derivative + w * (grad * (x1 - x0)).sum(1)
            penalty = penalty + w * gradient_penalty(critic, x_t, 0.0).double()
            reflow = reflow + w * 0.5 * (grad - (x1 - x0)).pow(2).sum(1).mean()
        with torch.no_grad():
            torch.testing.assert_close(derivative, critic(x1) - critic(x0))
            critic_loss = critic(x0).mean() - critic(x1).mean() + 0.5 * penalty
        constant = 0.5 * (x1 - x0).pow(2).sum(1).mean()
        torch.testing.assert_close(reflow, critic_loss + constant)


def test_dcgan_nets_map_latents_to_images_and_images_to_scores():
    generator, critic = DCGANGenerator(16, 3, 32, width=16), DCGANCritic(3, 32, width=16)
    images = generator(torch.randn(5, 16))
    assert images.shape == (5, 3, 32, 32) and images.abs().max() <= 1
    assert critic(images).shape == (5,)
    flat_generator, flat_critic = gan.GanNetConfig(kind="mlp", latent_dim=16).build((1, 8, 8))
    assert flat_generator(torch.randn(5, 16)).shape == (5, 1, 8, 8) and flat_critic(images[:, :1, :8, :8]).shape == (5,)
    with pytest.raises(GenkitError, match="power-of-two image_size"):
        DCGANCritic(1, 28)


def write_config(folder, name: str, **sections) -> None:
    config = {**TOY, "name": name, "output_dir": str(folder / "runs")}
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(config))


@pytest.mark.parametrize(
    ("method", "steps", "optimizer"),
    [
        ("monoflow", 600, {"lr": 1e-3, "betas": [0.5, 0.999]}),
        # The two WGANs run in the slow suite, so that the default run stays under 5 minutes. WGAN-GP needs 2000
        # steps: at 1000 it ended at 0.45-1.35 over train.seed 0-5 (it passed by luck of the noise stream), at 2000 at
        # 0.28-0.50 over seeds 0-3; the ReFlow-derived one ends at 0.20-0.23 over seeds 0-5 after 1000.
        pytest.param("wgan_gp", 2000, {"lr": 1e-3, "betas": [0.0, 0.9]}, marks=pytest.mark.slow),
        pytest.param("wgan_reflow", 1000, {"lr": 1e-3, "betas": [0.0, 0.9]}, marks=pytest.mark.slow),
    ],
)
def test_each_trainer_moves_the_generator_to_the_eight_gaussians(tmp_path, method, steps, optimizer):
    write_config(
        tmp_path,
        method,
        gan={"method": method},
        train={"steps": steps, "log_every": steps, "eval_every": steps, "checkpoint_every": steps},
        critic_optimizer=optimizer,
        generator_optimizer=optimizer,
    )
    config = load_config(tmp_path / f"{method}.yaml")
    data = validation_samples(config.data, 1000)
    torch.manual_seed(config.train.seed)
    untrained, _ = config.model.build((2,))
    z = torch.randn(len(data), 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        initial = sliced_wasserstein(untrained(z), data)
    final = gan.train(config)["sliced_wasserstein"]
    # Measured: 1.3-1.4 at initialisation; at most 0.50 after these steps (see the parameters).
    assert final < initial / 2.5, (initial, final)
    saved = yaml.safe_load((tmp_path / "runs" / method / "config.yaml").read_text())
    assert saved["gan"]["n_critic"] == (1 if method == "monoflow" else 5)
    assert saved["gan"]["penalty_weight"] == {"monoflow": 0.0, "wgan_gp": 10.0, "wgan_reflow": 0.5}[method]
    field = load_gan(tmp_path / "runs" / method / "model").critic_field()
    assert field(data[:4], torch.zeros(4)).shape == (4, 2)


def test_two_processes_train_the_same_gan_as_one(tmp_path):
    """Same global batch over two gloo ranks: the latent noise and penalty points are keyed by position, not rank."""
    write_config(
        tmp_path,
        "gp",
        gan={"method": "wgan_gp", "n_critic": 2},
        train={"steps": 6, "batch_size": 64, "log_every": 3, "eval_every": 6, "checkpoint_every": 6, "float64": True},
    )
    for name, run in (("one", genkit), ("two", genkit_on_two_ranks)):
        result = run(tmp_path, "train", "gp.yaml", f"name={name}")
        assert result.returncode == 0, result.stderr[-3000:]
        runtime = yaml.safe_load((tmp_path / "runs" / name / "runtime.json").read_text())
        assert runtime["num_processes"] == {"one": 1, "two": 2}[name]
    for part in ("generator", "critic"):
        one, two = (load_file(tmp_path / "runs" / n / "model" / part / WEIGHTS) for n in ("one", "two"))
        # WGAN-GP's reference Adam: lr 1e-4; six critic updates, more than the generator's two.
        assert_same_weights(one, two, float64_training_atol(lr=1e-4, updates=6))


def test_unset_method_defaults_are_filled_when_the_run_starts(tmp_path):
    write_config(tmp_path, "ns", gan={"method": "wgan_gp"})
    config = load_config(tmp_path / "ns.yaml")
    assert config.gan.n_critic is None and config.critic_optimizer is None
    resolved = config.resolved()
    assert (resolved.gan.n_critic, resolved.gan.penalty_weight) == (5, 10.0)
    assert resolved.critic_optimizer.lr == 1e-4 and resolved.critic_optimizer.betas == [0.0, 0.9]
    with pytest.raises(GenkitError, match="gan.h"):
        write_config(tmp_path, "bad", gan={"h": "tanh"})
        load_config(tmp_path / "bad.yaml")


def test_genkit_sample_draws_from_the_generator_and_refines_along_the_critic(tmp_path):
    write_config(
        tmp_path,
        "mono",
        gan={"method": "monoflow", "h": "logit"},
        train={"steps": 20, "log_every": 10, "eval_every": 20, "checkpoint_every": 20},
    )
    gan.train(load_config(tmp_path / "mono.yaml"))
    sample = ["sample", "runs/mono", "--num", "10", "--seed", "4"]
    for extra in ([], ["--refine-steps", "3", "--refine-step-size", "0.05"]):
        result = genkit(tmp_path, *sample, *extra)
        assert result.returncode == 0, result.stderr[-2000:]
    samples = tmp_path / "runs" / "mono" / "samples"
    plain = load_file(samples / "gan_refine0x0.01_seed4.safetensors")["samples"]
    refined = load_file(samples / "gan_refine3x0.05_seed4.safetensors")["samples"]
    # Three Euler steps of the critic's field, grad_x d(x) for h = logit, computed here by hand.
    critic = load_gan(tmp_path / "runs" / "mono" / "model").critic
    expected = plain.clone()
    for _ in range(3):
        x = expected.clone().requires_grad_(True)
        expected = expected + 0.05 * torch.autograd.grad(critic(x).sum(), x)[0]
    assert plain.shape == (10, 2) and not torch.equal(plain, refined)
    torch.testing.assert_close(refined, expected)
    wrong = genkit(tmp_path, *sample, "--solver", "heun")
    assert wrong.returncode == 2 and "samples with its generator" in wrong.stderr


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    """Both models, both optimisers and the position-keyed noise come back from the checkpoint."""
    train = {"steps": 8, "batch_size": 64, "log_every": 4, "eval_every": 8, "checkpoint_every": 4}
    write_config(tmp_path, "whole", gan={"method": "wgan_reflow", "n_critic": 2}, train=train)
    gan.train(load_config(tmp_path / "whole.yaml"))
    write_config(tmp_path, "split", gan={"method": "wgan_reflow", "n_critic": 2}, train={**train, "steps": 4})
    gan.train(load_config(tmp_path / "split.yaml"))
    gan.train(load_config(tmp_path / "split.yaml", ["train.steps=8", "train.resume=latest"]))
    for part in ("generator", "critic"):
        whole, split = (load_file(tmp_path / "runs" / n / "model" / part / WEIGHTS) for n in ("whole", "split"))
        assert_same_weights(whole, split)  # the same operations in the same order: bit for bit
