"""Velocity networks: shapes, the config round trip, time conditioning, sizes, and the builder's errors."""

import pytest
import torch
from diffusers import UNet2DModel

from genkit.errors import GenkitError
from genkit.files import save_pretrained
from genkit.models import load_velocity_model
from genkit.nets import TimeMLP, UNetVelocity, build_velocity_net


def parameter_count(model):
    return sum(parameter.numel() for parameter in model.parameters())


def inputs(shape, batch=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *shape, generator=generator), torch.rand(batch, generator=generator)


NETS = [
    ("mlp", {"dim": 2}, (2,)),
    ("mlp", {"dim": 12, "hidden": 32, "depth": 2, "time_features": 16}, (3, 2, 2)),
    ("unet", {"channels": 3, "image_size": 16}, (3, 16, 16)),
    ("unet", {"channels": 1, "image_size": 16, "block_channels": (16, 32), "attention": True}, (1, 16, 16)),
]


@pytest.mark.parametrize(("kind", "config", "shape"), NETS)
def test_shapes_and_the_saved_model_round_trip(kind, config, shape, tmp_path):
    torch.manual_seed(0)
    model = build_velocity_net(kind, **config).eval()
    x, t = inputs(shape)
    with torch.no_grad():
        output = model(x, t)
    assert output.shape == x.shape and torch.isfinite(output).all()
    save_pretrained(model, tmp_path / "model")
    rebuilt = load_velocity_model(tmp_path / "model")
    assert type(rebuilt) is type(model) and not rebuilt.training
    with torch.no_grad():
        assert torch.equal(rebuilt(x, t), output)
    if kind == "unet":  # a plain diffusers folder: diffusers loads the U-Net without genkit
        assert torch.equal(UNet2DModel.from_pretrained(tmp_path / "model")(x, 999 * t).sample, output)


@pytest.mark.parametrize(("kind", "config", "shape"), NETS)
def test_time_matters(kind, config, shape):
    torch.manual_seed(0)
    model = build_velocity_net(kind, **config).eval()
    x, _ = inputs(shape, batch=3)
    with torch.no_grad():
        outputs = [model(x, torch.full((3,), t)) for t in (0.0, 0.001, 0.5, 1.0)]
    # Even t and t + 0.001 give different velocities: 999 t moves the fastest sinusoid by about one radian.
    for earlier, later in zip(outputs[:-1], outputs[1:], strict=True):
        assert (earlier - later).abs().max() > 1e-4


def test_parameter_counts():
    # TimeMLP: (dim + time_features) * hidden + hidden, then (depth - 1) hidden x hidden layers, then hidden -> dim.
    assert parameter_count(TimeMLP(2)) == (66 * 256 + 256) + 2 * (256 * 256 + 256) + (256 * 2 + 2) == 149_250
    # The tiny U-Net configs the CPU tests and demos train stay under a million parameters.
    counts = {
        (channels, attention): parameter_count(UNetVelocity.build(channels, 32, attention=attention))
        for channels in (1, 3)
        for attention in (False, True)
    }
    assert counts == {(1, False): 634_273, (1, True): 701_345, (3, False): 635_427, (3, True): 702_499}
    assert max(counts.values()) < 1_000_000


def test_unet_attention_sits_at_the_lowest_resolution():
    unet = UNetVelocity.build(3, 32, block_channels=(16, 32, 32), attention=True).unet
    assert [type(block).__name__ for block in unet.down_blocks] == ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"]
    assert [type(block).__name__ for block in unet.up_blocks] == ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]
    assert unet.mid_block.attentions[0] is not None
    plain = UNetVelocity.build(3, 32, block_channels=(16, 32, 32)).unet
    assert not any("Attn" in type(block).__name__ for block in [*plain.down_blocks, *plain.up_blocks])
    assert plain.mid_block.attentions[0] is None


def test_unet_feeds_999_t(monkeypatch):
    model = UNetVelocity.build(1, 8, block_channels=(8, 16))
    seen = []
    forward = model.unet.forward
    monkeypatch.setattr(model.unet, "forward", lambda x, timestep: seen.append(timestep) or forward(x, timestep))
    x, t = inputs((1, 8, 8), batch=2)
    model(x, t)
    assert torch.equal(seen[0], 999 * t)


def test_mlp_flattens_and_restores_the_sample_shape():
    torch.manual_seed(0)
    model = TimeMLP(6, hidden=16, depth=1)
    x, t = inputs((2, 3))
    assert torch.equal(model(x, t), model(x.reshape(4, 6), t).reshape(4, 2, 3))
    with pytest.raises(GenkitError, match=r"dim=6.*\(5,\)"):
        model(torch.zeros(4, 5), t)


def test_builder_errors():
    with pytest.raises(GenkitError, match="unknown velocity net kind 'transformer'; choose one of mlp, unet"):
        build_velocity_net("transformer")
    with pytest.raises(GenkitError, match="unknown argument.*widht.*dim, hidden, depth, time_features"):
        build_velocity_net("mlp", dim=2, widht=3)
    with pytest.raises(GenkitError, match="'unet' needs channels, image_size"):
        build_velocity_net("unet")
    with pytest.raises(GenkitError, match="divisible by 2\\^2"):
        UNetVelocity.build(3, 30, block_channels=(16, 32, 32))
    with pytest.raises(GenkitError, match="norm_groups=8"):
        UNetVelocity.build(3, 32, block_channels=(12, 24))
    with pytest.raises(GenkitError, match="at least 1"):
        TimeMLP(2, depth=0)
