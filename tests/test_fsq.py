"""FSQ against a numpy re-derivation of docs/fsq.md §1 and §4, and its checkable facts (§1.3-1.4, §3)."""

import math

import numpy as np
import pytest
import torch

from tokenizers_img import FSQ, codebook_usage
from tokenizers_img.layout import channels_last, like_input

TABLE = {2**8: 240, 2**10: 1000, 2**12: 4375, 2**14: 15360, 2**16: 64000}
TABLE_LEVELS = {
    2**8: [8, 6, 5],
    2**10: [8, 5, 5, 5],
    2**12: [7, 5, 5, 5, 5],
    2**14: [8, 8, 8, 6, 5],
    2**16: [8, 8, 8, 5, 5, 5],
}


def randn(*shape, scale=1.5, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def reference_codes(z: np.ndarray, levels, symmetric=False) -> np.ndarray:
    """Codes of z (..., len(levels)) in float64, straight from the formulas."""
    L = np.asarray(levels, dtype=np.float64)
    if symmetric:
        digits = np.floor((L - 1) * (np.tanh(z) + 1) / 2 + 0.5)
        return digits * 2 / (L - 1) - 1
    half_l = (L - 1) * 1.001 / 2
    offset = np.where(L % 2 == 0, 0.5, 0.0)
    return np.round(np.tanh(z + np.arctanh(offset / half_l)) * half_l - offset) / (L // 2)


def reference_indices(codes: np.ndarray, levels, symmetric=False) -> np.ndarray:
    """Index with the first channel's digit varying fastest (Fortran order), digits k = code h + h."""
    L = np.asarray(levels)
    half = (L - 1) / 2 if symmetric else L // 2
    digits = np.round(codes * half + half).astype(np.int64)
    flat = digits.reshape(-1, len(levels))
    return np.ravel_multi_index(tuple(flat.T), tuple(levels), order="F").reshape(codes.shape[:-1])


@pytest.mark.parametrize("level", [3, 4, 5, 6, 7, 8, 9, 16])
def test_every_code_lies_on_the_grid_and_fills_it(level):
    """docs/fsq.md §1.3: odd L gives {-1, ..., 1}, even L gives {-1, ..., 1 - 1/floor(L/2)}: +1 unreachable."""
    z = torch.cat([torch.linspace(-8, 8, 4001), randn(4000)])[:, None]
    quantized, _, _ = FSQ([level])(z)
    half = level // 2
    grid = (torch.arange(level, dtype=torch.float64) - half) / half
    assert torch.allclose(torch.unique(quantized).double(), grid, rtol=0, atol=1e-7)
    assert (quantized.max() == 1.0) == (level % 2 == 1)


@pytest.mark.parametrize(
    ("levels", "symmetric"),
    [([3], False), ([4, 7], False), ([8, 6, 5], False), ([8, 5, 5, 5], False), ([2, 4, 5], True), ([6, 3], True)],
)
def test_outputs_equal_a_numpy_rederivation(levels, symmetric):
    z = randn(500, len(levels))
    quantized, indices, aux_loss = FSQ(levels, symmetric=symmetric)(z)
    expected = reference_codes(z.double().numpy(), levels, symmetric)
    np.testing.assert_allclose(quantized.numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(indices.numpy(), reference_indices(expected, levels, symmetric))
    assert aux_loss.item() == 0.0 and aux_loss.dtype == torch.float32


@pytest.mark.parametrize(
    ("levels", "symmetric"),
    [([3], False), ([4], False), ([2, 3, 4], True), *[(levels, False) for levels in TABLE_LEVELS.values()]],
)
def test_index_round_trip_over_every_code(levels, symmetric):
    """docs/fsq.md §1.4: codes_to_indices(indices_to_codes(i)) == i for all i < prod L, and the codes match
    numpy's digits."""
    fsq = FSQ(levels, symmetric=symmetric)
    indices = torch.arange(math.prod(levels))
    codes = fsq.indices_to_codes(indices)
    assert torch.equal(fsq.codes_to_indices(codes), indices)
    np.testing.assert_array_equal(reference_indices(codes.double().numpy(), levels, symmetric), indices.numpy())


def every_code(fsq: FSQ) -> torch.Tensor:
    """The implicit codebook: the code of every index, row i for index i."""
    return fsq.indices_to_codes(torch.arange(fsq.codebook_size))


@pytest.mark.parametrize(("size", "expected"), TABLE.items())
def test_table_codebooks_have_prod_levels_unique_codes(size, expected):
    """docs/fsq.md §2: 240, 1000, 4375, 15360, 64000 distinct codes."""
    fsq = FSQ.from_codebook_size(size)
    assert fsq.levels.int().tolist() == TABLE_LEVELS[size]
    assert fsq.codebook_size == expected
    assert len(torch.unique(every_code(fsq), dim=0)) == expected


def test_forward_reaches_every_code():
    """prod L distinct codes (docs/fsq.md §2) through forward: a dense grid of inputs hits all prod L indices, each
    code equal to the implicit one."""
    fsq = FSQ([5, 4, 3])
    axis = torch.linspace(-4, 4, 41)
    z = torch.cartesian_prod(axis, axis, axis)
    quantized, indices, _ = fsq(z)
    assert len(torch.unique(indices)) == 60
    assert torch.equal(every_code(fsq)[indices], quantized)
    usage = codebook_usage(torch.arange(60), fsq.codebook_size)
    assert usage.fraction_used == 1.0 and usage.perplexity == pytest.approx(60)


def test_zero_maps_to_zero():
    """docs/fsq.md §1.1: f(0) = 0 for every L (the even-L shift is exact with atanh), so 0 quantizes to the code 0."""
    levels = list(range(3, 17))
    fsq = FSQ(levels)
    assert fsq.bound(torch.zeros(len(levels))).abs().max() < 1e-6
    quantized, _, _ = fsq(torch.zeros(3, len(levels)))
    assert torch.equal(quantized, torch.zeros_like(quantized))


def test_straight_through_gradient_is_bound_derivative_over_half():
    """docs/fsq.md §1.2: d zhat / dz = f'(z) / floor(L/2), f'(z) = half_l (1 - tanh^2(z + shift));
    symmetric: 1 - tanh^2(z)."""
    levels = [3, 4, 5, 8]
    z = randn(200, 4).requires_grad_()
    FSQ(levels)(z)[0].sum().backward()
    L = np.array(levels, dtype=np.float64)
    half_l = (L - 1) * 1.001 / 2
    shift = np.arctanh(np.where(L % 2 == 0, 0.5, 0.0) / half_l)
    expected = half_l * (1 - np.tanh(z.detach().double().numpy() + shift) ** 2) / (L // 2)
    np.testing.assert_allclose(z.grad.numpy(), expected, rtol=1e-5, atol=1e-7)

    z.grad = None
    FSQ([2, 5, 6, 7], symmetric=True)(z)[0].sum().backward()
    np.testing.assert_allclose(z.grad.numpy(), 1 - np.tanh(z.detach().double().numpy()) ** 2, rtol=1e-5, atol=1e-7)


def test_quantizes_in_float32_under_bf16_autocast():
    fsq = FSQ([8, 6, 5])
    z = randn(1000, 3)
    quantized, indices, _ = fsq(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        quantized_autocast, indices_autocast, _ = fsq(z)
    assert quantized_autocast.dtype == torch.float32
    assert torch.equal(quantized_autocast, quantized) and torch.equal(indices_autocast, indices)

    # A bf16 input is binned from its exact value in fp32 and handed back in bf16.
    z_bf16 = z.bfloat16()
    quantized_bf16, indices_bf16, _ = fsq(z_bf16)
    assert quantized_bf16.dtype == torch.bfloat16
    expected = reference_codes(z_bf16.double().numpy(), [8, 6, 5])
    np.testing.assert_array_equal(indices_bf16.numpy(), reference_indices(expected, [8, 6, 5]))


def test_symmetric_codes_include_plus_minus_one():
    """docs/fsq.md §3: codes {-1, -1 + 2/(L-1), ..., 1}; L = 2 works and gives {-1, 1}."""
    fsq = FSQ([2, 4, 5], symmetric=True)
    codebook = every_code(fsq)
    for channel, level in enumerate([2, 4, 5]):
        expected = torch.tensor([-1 + 2 * k / (level - 1) for k in range(level)])
        assert torch.allclose(torch.unique(codebook[:, channel]), expected)
    quantized, _, _ = fsq(torch.linspace(-6, 6, 3000)[:, None].expand(-1, 3))
    assert quantized.min() == -1 and quantized.max() == 1
    assert set(quantized[:, 0].tolist()) == {-1.0, 1.0}


def test_level_two_needs_symmetric():
    with pytest.raises(ValueError, match="symmetric=True"):
        FSQ([8, 2])
    with pytest.raises(ValueError, match=">= 2"):
        FSQ([1, 5], symmetric=True)


def test_unknown_codebook_size_lists_the_supported_ones():
    with pytest.raises(ValueError, match="2\\^10=1024"):
        FSQ.from_codebook_size(512)


def test_projections_only_when_dim_differs():
    """docs/fsq.md §1.5: no trainable parameters unless dim != len(levels) * num_codebooks."""
    assert sum(p.numel() for p in FSQ([8, 5, 5, 5]).parameters()) == 0
    assert sum(p.numel() for p in FSQ([8, 5, 5, 5], dim=8, num_codebooks=2).parameters()) == 0
    projected = FSQ([8, 5, 5, 5], dim=16)
    assert sum(p.numel() for p in projected.parameters()) == (16 * 4 + 4) + (4 * 16 + 16)
    x = randn(2, 16, 3, 3)
    quantized, indices, _ = projected(x)
    codes = projected.indices_to_codes(indices)
    expected = projected.project_out(codes).movedim(-1, 1)
    assert torch.allclose(quantized, expected, atol=1e-6)
    assert torch.equal(projected.indices_to_latents(indices).movedim(-1, 1), quantized)
    # Codes come from the projected input.
    z = projected.project_in(x.movedim(1, -1)).detach().double().numpy()
    np.testing.assert_array_equal(indices.numpy(), reference_indices(reference_codes(z, [8, 5, 5, 5]), [8, 5, 5, 5]))


def test_image_and_channels_last_layouts_agree():
    fsq = FSQ([7, 5, 5, 5, 5])
    image = randn(2, 5, 4, 3)
    quantized, indices, _ = fsq(image)
    rows = image.permute(0, 2, 3, 1).reshape(2, 12, 5)
    quantized_rows, indices_rows, _ = fsq(rows)
    assert quantized.shape == image.shape and indices.shape == (2, 4, 3)
    assert torch.equal(quantized.permute(0, 2, 3, 1).reshape(2, 12, 5), quantized_rows)
    assert torch.equal(indices.reshape(2, 12), indices_rows)
    with pytest.raises(ValueError, match="expects 5 channels"):
        fsq(randn(2, 4, 4, 3))


def test_several_codebooks_quantize_each_group_alike():
    """num_codebooks = 3: indices gain a trailing codebook dim, each group quantized as by a single-codebook FSQ."""
    single, multi = FSQ([5, 4]), FSQ([5, 4], num_codebooks=3)
    image = randn(2, 6, 3, 3)
    quantized, indices, _ = multi(image)
    assert indices.shape == (2, 3, 3, 3)
    for group in range(3):
        part = image[:, 2 * group : 2 * group + 2]
        quantized_part, indices_part, _ = single(part)
        assert torch.equal(quantized[:, 2 * group : 2 * group + 2], quantized_part)
        assert torch.equal(indices[..., group], indices_part)
    assert torch.equal(multi.codes_to_indices(multi.indices_to_codes(indices)), indices)
    assert torch.equal(multi.indices_to_latents(indices).movedim(-1, 1), quantized)


@pytest.mark.parametrize(
    ("levels", "symmetric", "shape"),
    [
        ([8, 6, 5], False, (4096, 3)),  # whole tiles of vectors
        ([8, 8, 8, 6, 5], False, (2, 5, 3, 5)),  # an image of 30 vectors: a partial tile
        ([2, 5, 6], True, (7, 3)),
        ([8] * 9, False, (33, 9)),  # 2^27 codes: indices summed in float64
    ],
)
def test_the_fused_quantizer_equals_autograd_through_the_formula_bit_for_bit(levels, symmetric, shape):
    """Codes, indices and gradients of the fused op against the unfused formula with a straight-through rounding."""
    fsq = FSQ(levels, symmetric=symmetric)
    z = randn(*shape, scale=2.0)
    weights = torch.linspace(-1, 1, z.numel()).reshape(shape)
    fused = z.clone().requires_grad_()
    codes, indices, _ = fsq(fused)
    (codes * weights).sum().backward()

    unfused = z.clone().requires_grad_()
    pre = torch.tanh(channels_last(unfused) + fsq.shift) * fsq.scale + fsq.bias
    rounded = pre + ((pre.floor() if symmetric else pre.round()) - pre).detach()
    expected = ((rounded - fsq.half_width) if symmetric else rounded) / fsq.half_width
    (like_input(expected, z) * weights).sum().backward()
    assert torch.equal(codes, like_input(expected, z)) and torch.equal(fused.grad, unfused.grad)
    assert torch.equal(indices, fsq.codes_to_indices(expected))


@pytest.mark.parametrize("symmetric", [False, True])
def test_snap_is_the_nearest_code_of_the_whole_codebook(symmetric):
    """Brute force over all prod(L) codes: the per-channel rounding picks the Euclidean nearest (clamped outside)."""
    fsq = FSQ([4, 5, 3], symmetric=symmetric)
    codebook = fsq.indices_to_codes(torch.arange(fsq.codebook_size))
    z = torch.rand(500, 3, generator=torch.Generator().manual_seed(0)) * 3 - 1.5
    nearest = codebook[torch.cdist(z.double(), codebook.double()).argmin(1)]
    assert torch.equal(fsq.snap(z), nearest)  # the same float32 operations as indices_to_codes
    assert torch.equal(fsq.snap(codebook), codebook), "a code is its own nearest code"
    with pytest.raises(ValueError, match="no grid to snap to"):
        FSQ([4, 5, 3], dim=8).snap(z)
