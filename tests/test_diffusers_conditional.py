"""Conditional diffusers U-Nets as fields (genkit/diffusers_field.py), on tiny random float64 models built here.

The key check: DDIM with eta = 0 on an epsilon model is Euler in sigma on dx/dsigma = eps(x / sqrt(1 + sigma^2),
t(sigma)) in x = x_vp sqrt(1 + sigma^2), so genkit's Euler on the guided bound field, over the sigmas of the DDIM
timesteps, must reproduce diffusers' own DDIMScheduler loop with classifier-free guidance to float64 round-off.
"""

from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel, UNet2DModel
from safetensors.torch import save_file
from tiny_models import save_tiny_ddpm

import samplers
from genkit.diffusers_field import load_diffusers
from genkit.errors import GenkitError
from genkit.fields import FieldConfig
from genkit.guidance import Guidance

CLASSES, TOKENS, WIDTH = 3, 4, 12  # K classes (prompts), each embedded as L tokens of width D
SHAPE = (2, 8, 8)
BLOCKS = {"block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 4}


def class_conditional_unet() -> UNet2DModel:
    """A class-conditional UNet2DModel with K + 1 class embeddings, the last one the null class."""
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=SHAPE[1],
        in_channels=SHAPE[0],
        out_channels=SHAPE[0],
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        num_class_embeds=CLASSES + 1,
        **BLOCKS,
    )


def cross_attention_unet() -> UNet2DConditionModel:
    """A UNet2DConditionModel attending to embeddings of width D."""
    torch.manual_seed(1)
    return UNet2DConditionModel(
        sample_size=SHAPE[1],
        in_channels=SHAPE[0],
        out_channels=SHAPE[0],
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=WIDTH,
        attention_head_dim=4,
        **BLOCKS,
    )


def save_embeddings(path: Path, width: int = WIDTH, seed: int = 2) -> Path:
    """K random prompt embeddings [K, L, width] and a null one [L, width] (float64) saved at `path`."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(CLASSES, TOKENS, width, generator=generator, dtype=torch.float64)
    save_file(
        {"embeddings": embeddings, "null": torch.randn(TOKENS, width, generator=generator, dtype=torch.float64)}, path
    )
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """Each U-Net kind's model folder and the embeddings file it takes ("" for none)."""
    root = tmp_path_factory.mktemp("conditional")
    for name, unet in (("class", class_conditional_unet()), ("cross_attention", cross_attention_unet())):
        unet.save_pretrained(root / name / "unet")
        DDPMScheduler(num_train_timesteps=1000).save_pretrained(root / name / "scheduler")
    save_tiny_ddpm(root / "unconditional")
    return {
        "class": (root / "class", ""),
        "cross_attention": (root / "cross_attention", str(save_embeddings(root / "prompts.safetensors"))),
        "unconditional": (root / "unconditional", ""),
    }


def ddim_with_guidance(unet, scheduler: DDIMScheduler, z, condition, null, weight: float, argument: str):
    """diffusers' standard classifier-free-guided DDIM loop: both branches in one forward, eta = 0."""
    x = z
    for timestep in scheduler.timesteps:
        both = unet(torch.cat([x, x]), timestep, **{argument: torch.cat([condition, null])}).sample
        conditional, unconditional = both.chunk(2)
        x = scheduler.step(unconditional + weight * (conditional - unconditional), timestep, x).prev_sample
    return x


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("weight", [1.0, 3.0])
@pytest.mark.parametrize("kind", ["class", "cross_attention"])
@torch.no_grad()
def test_euler_on_the_bound_field_is_diffusers_guided_ddim(folders, kind, weight, set_alpha_to_one):
    folder, embeddings = folders[kind]
    field = load_diffusers(str(folder), embeddings, dtype=torch.float64)
    velocity = field.conditioning.model
    labels = torch.tensor([0, 2, 1, 2])
    z = torch.randn(len(labels), *SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    scheduler = DDIMScheduler.from_pretrained(
        folder / "scheduler", clip_sample=False, set_alpha_to_one=set_alpha_to_one
    )
    scheduler.set_timesteps(10)
    # DDIM forms its coefficients from its float32 alpha_bar table; from the same table values in float64 both
    # loops run in float64 and agree to its round-off.
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    scheduler.final_alpha_cumprod = scheduler.final_alpha_cumprod.double()
    if kind == "class":
        condition, null, argument = labels, torch.tensor([CLASSES]).expand(len(labels)), "class_labels"
    else:
        table, null = field.conditioning.table, field.conditioning.null
        condition, null, argument = table[labels], null.expand(len(labels), -1, -1), "encoder_hidden_states"
    expected = ddim_with_guidance(velocity.unet, scheduler, z, condition, null, weight, argument)

    alphas = torch.cat([scheduler.alphas_cumprod[scheduler.timesteps], scheduler.final_alpha_cumprod.reshape(1)])
    sigmas = ((1 - alphas) / alphas).sqrt()
    # The fractional timestep of a table sigma is its integer timestep: the network sees DDIM's timesteps.
    torch.testing.assert_close(velocity.sigma_to_timestep(sigmas[:-1]), scheduler.timesteps.double(), rtol=0, atol=1e-9)
    bound = field.bind(labels, Guidance(weight))
    x = samplers.euler(bound.edm, z * (1 + sigmas[0] ** 2).sqrt(), sigmas)
    solved = x / (1 + sigmas[-1] ** 2).sqrt()  # back to the VP state x_vp = x / sqrt(1 + sigma^2)
    torch.testing.assert_close(solved, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["class", "cross_attention"])
@torch.no_grad()
def test_the_condition_and_the_weight_reach_the_network(folders, kind):
    """Not a vacuous match above: classes, prompts and w change the velocity; bottleneck features come with it."""
    field = load_diffusers(str(folders[kind][0]), folders[kind][1], dtype=torch.float64)
    x = 5 * torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sigma = torch.tensor([5.0, 5.0], dtype=torch.float64)
    at = lambda labels, w: field.bind(torch.tensor(labels), Guidance(w)).edm  # noqa: E731
    assert (at([0, 0], 1.0)(x, sigma) - at([1, 1], 1.0)(x, sigma)).abs().max() > 1e-3
    assert (at([0, 0], 3.0)(x, sigma) - at([0, 0], 1.0)(x, sigma)).abs().max() > 1e-3
    velocity, features = at([0, 1], 3.0).velocity_and_bottleneck(x, sigma)
    torch.testing.assert_close(velocity, at([0, 1], 3.0)(x, sigma), rtol=0, atol=0)
    assert features.shape == (2, 64)


def test_a_diffusers_field_spans_its_tables_sigma_range(folders):
    for kind, (folder, embeddings) in folders.items():
        field = load_diffusers(str(folder), embeddings)
        if field.conditioning is None:
            velocity, path = field.forms[0]
        else:
            velocity, path = field.conditioning.model, field.bind(torch.tensor([0])).edm_path
        assert (path.sigma_min, path.sigma_max) == (velocity.sigma_min, velocity.sigma_max), kind
        # The standard 1000-step linear betas 1e-4..0.02: sigma = sqrt((1 - alpha_bar) / alpha_bar) at both ends.
        assert path.sigma_min == pytest.approx(0.0100, abs=5e-5) and path.sigma_max == pytest.approx(157.4, abs=0.1)


def test_the_field_id_covers_the_embeddings(folders, tmp_path):
    folder, embeddings = folders["cross_attention"]
    other = save_embeddings(tmp_path / "other.safetensors", seed=5)
    assert load_diffusers(str(folder), embeddings).field_id != load_diffusers(str(folder), str(other)).field_id
    assert load_diffusers(str(folder), embeddings).field_id == load_diffusers(str(folder), embeddings).field_id


def test_bad_conditions_and_embeddings_are_one_line(folders, tmp_path):
    (class_folder, _), (cross_folder, embeddings), (plain_folder, _) = (
        folders["class"],
        folders["cross_attention"],
        folders["unconditional"],
    )
    corrupt, keyless, flat = tmp_path / "corrupt.safetensors", tmp_path / "keyless.safetensors", tmp_path / "flat.st"
    corrupt.write_bytes(b"not a safetensors file")
    save_file({"embeddings": torch.zeros(CLASSES, TOKENS, WIDTH)}, keyless)
    save_file({"embeddings": torch.zeros(CLASSES, WIDTH), "null": torch.zeros(WIDTH)}, flat)
    cases = [
        (lambda: load_diffusers(str(class_folder)).bind(torch.tensor([0, CLASSES])), "class 3 is out of range"),
        (lambda: load_diffusers(str(cross_folder), embeddings).bind(torch.tensor([CLASSES])), "class 3 is out of"),
        (lambda: load_diffusers(str(cross_folder)), "UNet2DConditionModel: it needs field.embeddings"),
        (
            lambda: load_diffusers(str(cross_folder), str(save_embeddings(tmp_path / "wide.st", WIDTH + 1))),
            f"has width D={WIDTH + 1} but this U-Net takes D={WIDTH}",
        ),
        (lambda: load_diffusers(str(cross_folder), str(tmp_path / "absent.st")), "is not a file"),
        (lambda: load_diffusers(str(cross_folder), str(corrupt)), "is not a readable safetensors file"),
        (lambda: load_diffusers(str(cross_folder), str(keyless)), "has no null"),
        (lambda: load_diffusers(str(cross_folder), str(flat)), r"must be \[K, L, D\]"),
        (lambda: load_diffusers(str(plain_folder), embeddings), "unconditional U-Net: it takes no field.embeddings"),
        (
            lambda: FieldConfig(kind="diffusers", path=str(class_folder), embeddings=embeddings).load(),
            "class-conditional U-Net: it takes class labels, not field.embeddings",
        ),
    ]
    for call, message in cases:
        with pytest.raises(GenkitError, match=message) as error:
            call()
        assert "\n" not in str(error.value), message
    x, sigma = torch.zeros(1, *SHAPE), torch.ones(1)
    with pytest.raises(GenkitError, match="conditional \\(it takes class_labels\\): give it a condition"):
        load_diffusers(str(class_folder)).conditioning.model(x, sigma)
    with pytest.raises(GenkitError, match="this U-Net is unconditional: call it without a condition"):
        load_diffusers(str(plain_folder)).forms[0][0](torch.zeros(1, 1, 8, 8), sigma, torch.tensor([0]))
