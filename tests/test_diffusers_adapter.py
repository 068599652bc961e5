"""The diffusers adapter on a tiny random UNet2DModel: time mapping, and DDIM = Euler in EDM form."""

import copy

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from genkit import DiffusersVelocity, GenkitError
from samplers import euler


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    model = UNet2DModel(
        sample_size=8,
        in_channels=2,
        out_channels=2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    return model.double().eval()


def test_sigma_timestep_round_trip():
    field = DiffusersVelocity(torch.nn.Identity(), DDPMScheduler())
    alphas_cumprod = DDPMScheduler().alphas_cumprod.double()
    table = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
    steps = torch.arange(1000, dtype=torch.float64)
    torch.testing.assert_close(field.timestep_to_sigma(steps), table, rtol=1e-12, atol=0)
    torch.testing.assert_close(field.sigma_to_timestep(table), steps, rtol=0, atol=1e-9)
    sigmas = torch.logspace(-1.9, 2.1, 50, dtype=torch.float64).clamp(field.sigma_min, field.sigma_max)
    torch.testing.assert_close(field.timestep_to_sigma(field.sigma_to_timestep(sigmas)), sigmas, rtol=1e-12, atol=0)
    fractional = field.sigma_to_timestep(table[500:502].prod().sqrt().reshape(1))
    assert 500 < fractional.item() < 501
    beyond = torch.tensor([1e-4, 1e4], dtype=torch.float64)
    assert field.sigma_to_timestep(beyond).tolist() == [0.0, 999.0]


def test_epsilon_field_is_the_network_on_the_vp_input(unet):
    field = DiffusersVelocity(unet, DDPMScheduler())
    x = 3 * torch.randn(3, 2, 8, 8, dtype=torch.float64)
    sigma = field.timestep_to_sigma(torch.tensor([10.0, 400.0, 990.0], dtype=torch.float64))
    vp_input = x / (1 + sigma.view(-1, 1, 1, 1) ** 2).sqrt()
    expected = unet(vp_input, torch.tensor([10, 400, 990])).sample
    out = field(x, sigma)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_float64_states_drive_a_float32_unet(unet):
    """The reference solver integrates in float64 whatever the network's precision."""
    single = DiffusersVelocity(copy.deepcopy(unet).float(), DDPMScheduler())
    x, sigma = torch.randn(2, 2, 8, 8, dtype=torch.float64), torch.tensor([0.5, 20.0], dtype=torch.float64)
    out = single(x, sigma)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, DiffusersVelocity(unet, DDPMScheduler())(x, sigma), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_euler_on_ddim_sigmas_reproduces_the_ddim_loop(unet, prediction_type):
    scheduler = DDIMScheduler(prediction_type=prediction_type, clip_sample=False)
    scheduler.set_timesteps(10)
    noise = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    x = noise
    with torch.no_grad():
        for timestep in scheduler.timesteps:
            x = scheduler.step(unet(x, timestep).sample, timestep, x).prev_sample

    field = DiffusersVelocity(unet, scheduler)
    # set_alpha_to_one: the last DDIM step lands on alpha_bar = 1, i.e. sigma = 0.
    sigmas = torch.cat([field.timestep_to_sigma(scheduler.timesteps.double()), torch.zeros(1, dtype=torch.float64)])
    with torch.no_grad():
        x_edm = euler(field, noise * (1 + sigmas[0] ** 2).sqrt(), sigmas)
    # DDIM computes its coefficients from the float32 alpha_bar table; the adapter in float64.
    torch.testing.assert_close(x_edm, x, rtol=1e-5, atol=1e-5)


def test_unsupported_prediction_type_is_a_clear_error():
    scheduler = DDPMScheduler()
    scheduler.register_to_config(prediction_type="flow")
    with pytest.raises(GenkitError, match="prediction_type 'flow'"):
        DiffusersVelocity(torch.nn.Identity(), scheduler)
