"""The tokenizer's perceptual and adversarial terms: formulas, the adaptive weight, LPIPS loading, the start step."""

import math
import time

import pytest
import torch
import torchvision
import yaml
from launching import genkit, genkit_on_two_ranks
from safetensors.torch import load_file
from tokenizer_runs import WEIGHTS, model_state
from weights import assert_same_weights

from genkit.errors import GenkitError
from genkit.nets.discriminator import PatchDiscriminator, patch_grid_side
from genkit.perceptual import LPIPS, load_perceptual
from genkit.train.adversarial import adaptive_weight, discriminator_loss, generator_loss

REAL = torch.tensor([2.0, 0.5, -1.0], dtype=torch.float64)
FAKE = torch.tensor([-2.0, 0.0, 1.5], dtype=torch.float64)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_the_discriminator_losses_follow_their_formulas():
    # hinge: (mean(relu(1 - real)) + mean(relu(1 + fake))) / 2 = ((0 + 0.5 + 2) / 3 + (0 + 1 + 2.5) / 3) / 2
    assert discriminator_loss(REAL, FAKE, "hinge").item() == pytest.approx(1.0, rel=1e-15)
    expected = (sum(softplus(-r) for r in REAL.tolist()) / 3 + sum(softplus(f) for f in FAKE.tolist()) / 3) / 2
    assert discriminator_loss(REAL, FAKE, "non_saturating").item() == pytest.approx(expected, rel=1e-14)
    assert generator_loss(FAKE, "hinge").item() == pytest.approx(-(-2.0 + 0.0 + 1.5) / 3, rel=1e-15)
    # -E log sigmoid(D(x_rec)), written as the log of a probability
    expected = -sum(math.log(1 / (1 + math.exp(-f))) for f in FAKE.tolist()) / 3
    assert generator_loss(FAKE, "non_saturating").item() == pytest.approx(expected, rel=1e-14)


def test_the_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer():
    """A one-layer decoder y = W h: both gradients by hand, d/dW of mean((Wh - t)^2) and of -mean(v . Wh)."""
    generator = torch.Generator().manual_seed(0)
    hidden, target = torch.randn(5, 3, generator=generator, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    critic_direction = torch.randn(2, generator=generator, dtype=torch.float64)
    weight = torch.randn(2, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    output = hidden @ weight.T
    reconstruction = (output - target).pow(2).mean()
    adversarial = -(output @ critic_direction).mean()
    lam = adaptive_weight(reconstruction, adversarial, weight, maximum=1e4)

    residual = (hidden @ weight.detach().T - target).numpy()
    grad_reconstruction = 2 * residual.T @ hidden.numpy() / residual.size  # d mean(r^2) / dW = 2 r^T h / (5 * 2)
    grad_adversarial = -torch.outer(critic_direction, hidden.mean(0)).numpy()
    norm = lambda a: math.sqrt((a**2).sum())  # noqa: E731
    assert lam.item() == pytest.approx(norm(grad_reconstruction) / (norm(grad_adversarial) + 1e-4), rel=1e-12)
    assert not lam.requires_grad
    assert adaptive_weight(reconstruction, 1e-9 * adversarial, weight, maximum=7.0).item() == 7.0  # clamped
    (reconstruction + lam * adversarial).backward()  # both graphs were kept


def test_the_patch_discriminator_gives_one_logit_a_patch():
    discriminator = PatchDiscriminator(in_channels=3, width=8, layers=2)
    assert discriminator(torch.zeros(2, 3, 32, 32)).shape == (2, 1, patch_grid_side(32, 2), patch_grid_side(32, 2))
    assert patch_grid_side(32, 3) == 2 and patch_grid_side(256, 3) == 30  # pix2pix's 70x70 PatchGAN: 30x30 on 256px


def fake_alexnet_weights(path) -> dict[str, torch.Tensor]:
    """Random AlexNet convolutions saved under torchvision's key names (the classifier, unused by LPIPS, left out)."""
    torch.manual_seed(3)
    state = {
        k: v for k, v in torchvision.models.alexnet(weights=None).state_dict().items() if k.startswith("features.")
    }
    torch.save(state, path)
    return state


def test_lpips_without_backbone_weights_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(GenkitError) as error:
        LPIPS("vgg")
    message = str(error.value)
    assert "vgg16-397923af.pth" in message and str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert "perceptual.weights_path" in message and "\n" not in message


def test_lpips_with_a_wrong_weights_file_is_one_clear_error(tmp_path):
    (tmp_path / "notes.pth").write_text("not weights")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "partial.pth")
    for name in ("notes.pth", "partial.pth"):
        with pytest.raises(GenkitError, match="does not hold torchvision's alex ImageNet weights") as error:
            LPIPS("alex", tmp_path / name)
        assert "\n" not in str(error.value)


def test_lpips_reads_the_backbone_from_the_named_file(tmp_path):
    state = fake_alexnet_weights(tmp_path / "alexnet.pth")
    lpips = LPIPS("alex", tmp_path / "alexnet.pth")
    backbone = lpips.net.net.state_dict()
    assert torch.equal(backbone["slice1.0.weight"], state["features.0.weight"])
    assert torch.equal(backbone["slice5.10.bias"], state["features.10.bias"])
    assert not any(p.requires_grad for p in lpips.parameters())
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert lpips(images, images).abs().max() == 0
    assert (lpips(images, images.flip(-1)) > 0).all()
    assert lpips(images[:, :1], images[:, :1]).shape == (2,)  # grayscale is read as RGB


class TinyFeatures(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1) * 3.0


def tiny_extractor(path) -> str:
    torch.jit.save(torch.jit.script(TinyFeatures()), str(path))
    return str(path)


def test_a_feature_extractor_serves_as_perceptual_distance(tmp_path):
    distance = load_perceptual("torchscript", weights_path=tiny_extractor(tmp_path / "tiny.pt"))
    x = torch.rand(2, 3, 299, 299, dtype=torch.float32) * 2 - 1
    y = (torch.rand(2, 3, 299, 299) * 2 - 1).requires_grad_()
    expected = ((TinyFeatures()(x) - TinyFeatures()(y.detach())) ** 2).mean(1)
    value = distance(x, y)
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-7)
    value.sum().backward()
    assert y.grad.abs().sum() > 0


def with_losses(workdir, extractor: str, start_step: int) -> list[str]:
    """Overrides for a tiny run with a perceptual (tiny TorchScript) and an adversarial term."""
    return [
        "perceptual.weight=0.5",
        "perceptual.network=torchscript",
        f"perceptual.weights_path={extractor}",
        "adversarial.weight=0.8",
        f"adversarial.start_step={start_step}",
        "adversarial.layers=2",
        "adversarial.width=8",
        "adversarial.penalty_weight=0.1",
    ]


def metric_records(workdir, name: str) -> list[dict]:
    lines = (workdir / "runs" / name / "metrics.jsonl").read_text().splitlines()
    return [yaml.safe_load(line) for line in lines]


def test_the_discriminator_starts_exactly_at_start_step(workdir):
    extractor = tiny_extractor(workdir / "tiny.pt")
    steps = ["train.steps=4", "train.checkpoint_every=1", "train.keep_last=4", "train.eval_every=4"]
    losses = with_losses(workdir, extractor, start_step=2)
    assert genkit(workdir, "train", "tiny.yaml", "name=both", *steps, *losses).returncode == 0
    plain = [*losses, "adversarial.weight=0"]
    assert genkit(workdir, "train", "tiny.yaml", "name=plain", *steps, *plain).returncode == 0

    def weights(run: str, step: int, model: str) -> dict[str, torch.Tensor]:
        return load_file(workdir / "runs" / run / "checkpoints" / f"step_{step:08d}" / model / WEIGHTS)

    def same(a: dict, b: dict) -> bool:
        return all(torch.equal(a[key], b[key]) for key in a)

    # Loop steps 0 and 1 (logged as 1 and 2) leave the discriminator alone and train the tokenizer as without it.
    assert same(weights("both", 1, "discriminator"), weights("both", 2, "discriminator"))
    assert not same(weights("both", 2, "discriminator"), weights("both", 3, "discriminator"))
    assert same(weights("both", 2, "tokenizer"), weights("plain", 2, "tokenizer"))
    assert not same(weights("both", 3, "tokenizer"), weights("plain", 3, "tokenizer"))
    records = [r for r in metric_records(workdir, "both") if "total" in r]
    assert [r["step"] for r in records if "discriminator" in r] == [3, 4]
    assert all({"perceptual", "generator", "adaptive_weight", "logits_real", "penalty"} <= set(r) for r in records[2:])
    assert all("generator" not in r and "perceptual" in r for r in records[:2])


@pytest.mark.slow
def test_a_tokenizer_with_both_losses_trains_on_two_ranks_resumes_exactly_and_logs_to_wandb(workdir):
    extractor = tiny_extractor(workdir / "tiny.pt")
    losses = [*with_losses(workdir, extractor, start_step=1), "train.tracker=wandb"]
    result = genkit_on_two_ranks(workdir, "train", "tiny.yaml", "name=two", *losses)
    assert result.returncode == 0, result.stderr[-3000:]
    run = workdir / "runs" / "two"
    assert yaml.safe_load((run / "runtime.json").read_text())["num_processes"] == 2
    (offline,) = (run / "wandb").glob("offline-run-*")
    (log,) = offline.glob("run-*.wandb")
    keys = [key.encode() for key in ("discriminator", "adaptive_weight", "perceptual", "ssim")]
    deadline = time.monotonic() + 30  # W&B's service may write the last records shortly after the run finished
    while not all(key in log.read_bytes() for key in keys) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(key in log.read_bytes() for key in keys)
    assert list((offline / "files" / "media" / "images").glob("reconstruction*"))

    cut = genkit_on_two_ranks(workdir, "train", "tiny.yaml", "name=cut", "train.steps=3", *losses)
    resumed = genkit_on_two_ranks(workdir, "train", "tiny.yaml", "name=cut", *losses, "train.resume=latest")
    assert cut.returncode == 0 and resumed.returncode == 0, cut.stderr[-2000:] + resumed.stderr[-2000:]
    assert "resumed at step 3" in resumed.stdout
    for model in ("tokenizer", "discriminator"):
        whole = load_file(run / "checkpoints" / "step_00000006" / model / WEIGHTS)
        assert_same_weights(
            whole, load_file(workdir / "runs" / "cut" / "checkpoints" / "step_00000006" / model / WEIGHTS)
        )
    assert_same_weights(model_state(workdir, "two"), model_state(workdir, "cut"))
