"""VectorQuantizer against float64 brute force, hand-computed EMA updates and a 2-process run (docs/vq.md)."""

import numpy as np
import pytest
import torch
from accelerate import debug_launcher

from tokenizers_img import VectorQuantizer, codebook_usage
from tokenizers_img.vq import laplace_smoothed


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def brute_force_nearest(z: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """argmin_k ||z - e_k||^2 over every pair, float64."""
    return ((z[:, None, :] - codebook[None]) ** 2).sum(-1).argmin(1)


def test_forward_is_nearest_code_and_gradient_passes_straight_through():
    """docs/vq.md §1.1: z_q = e_k with k the nearest code, and dL/dz_e = dL/dz_q."""
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4)
    z_e = randn(200, 4).requires_grad_()
    z_q, indices, _ = vq(z_e)
    codebook = vq.codebook.detach().double().numpy()
    expected = brute_force_nearest(z_e.detach().double().numpy(), codebook)
    np.testing.assert_array_equal(indices.numpy(), expected)
    np.testing.assert_allclose(z_q.detach().numpy(), codebook[expected], atol=1e-6)

    z_q.retain_grad()
    (z_q**3).sum().backward()
    assert torch.equal(z_e.grad, z_q.grad)
    assert torch.allclose(z_q.grad, 3 * z_q.detach() ** 2)


def test_codebook_and_commitment_gradients_reach_only_their_side():
    """docs/vq.md §1.2: d/de of aux = codebook term only (beta-free); d/dz_e of aux = beta * commitment only."""
    torch.manual_seed(0)
    z = randn(60, 3)
    grads = {}
    for beta in (0.0, 0.7):
        vq = VectorQuantizer(8, 3, beta=beta)
        vq.codebook.data = randn(8, 3, seed=1)
        z_e = z.clone().requires_grad_()
        _, indices, aux_loss = vq(z_e)
        aux_loss.backward()
        grads[beta] = (z_e.grad, vq.codebook.grad, indices)

    codebook = randn(8, 3, seed=1).double().numpy()
    k = grads[0.0][2].numpy()
    e_k, z64 = codebook[k], z.double().numpy()
    # Codebook term mean((e_k - sg z)^2): code j receives sum over its assignments of 2 (e_j - z_n) / (N dim).
    expected_codebook_grad = np.zeros_like(codebook)
    np.add.at(expected_codebook_grad, k, 2 * (e_k - z64) / z64.size)
    for beta in (0.0, 0.7):
        np.testing.assert_allclose(grads[beta][1].numpy(), expected_codebook_grad, atol=1e-6)
    # Commitment term beta mean((z - sg e_k)^2); with beta = 0 nothing reaches the encoder.
    assert torch.equal(grads[0.0][0], torch.zeros_like(z))
    np.testing.assert_allclose(grads[0.7][0].numpy(), 0.7 * 2 * (z64 - e_k) / z64.size, atol=1e-6)


def test_ema_update_matches_hand_computation_for_two_steps():
    """N <- d N + (1-d) n, m <- d m + (1-d) s, e = m / N' with N' Laplace-smoothed; codebook gets no gradient."""
    torch.manual_seed(0)
    decay, eps, size = 0.9, 1e-3, 8
    vq = VectorQuantizer(size, 3, ema=True, decay=decay, eps=eps, beta=0.25).train()
    codebook = vq.codebook.double().numpy().copy()
    cluster_size, embed_sum = np.ones(size), codebook.copy()
    for step in range(2):
        z = randn(40, 3, seed=10 + step).requires_grad_()
        _, indices, aux_loss = vq(z)
        z64 = z.detach().double().numpy()
        k = brute_force_nearest(z64, codebook)
        np.testing.assert_array_equal(indices.numpy(), k)
        assert aux_loss.item() == pytest.approx(0.25 * ((z64 - codebook[k]) ** 2).mean(), rel=1e-5)
        counts = np.bincount(k, minlength=size)
        sums = np.zeros_like(codebook)
        np.add.at(sums, k, z64)
        cluster_size = decay * cluster_size + (1 - decay) * counts
        embed_sum = decay * embed_sum + (1 - decay) * sums
        total = cluster_size.sum()
        codebook = embed_sum / ((cluster_size + eps) / (total + size * eps) * total)[:, None]
        np.testing.assert_allclose(vq.cluster_size.numpy(), cluster_size, rtol=1e-6)
        np.testing.assert_allclose(vq.embed_sum.numpy(), embed_sum, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(vq.codebook.numpy(), codebook, rtol=1e-5, atol=1e-6)
    assert list(vq.parameters()) == []

    vq.eval()
    before = vq.codebook.clone()
    vq(randn(40, 3, seed=99))
    assert torch.equal(vq.codebook, before)


def test_laplace_smoothed_counts_keep_the_total():
    """docs/vq.md §2: (N_k + eps) / (n + K eps) n sums to n = sum N_k and is positive where N_k = 0."""
    smoothed = laplace_smoothed(torch.tensor([0.0, 1.0, 3.0]), eps=0.5)
    np.testing.assert_allclose(smoothed.numpy(), np.array([0.5, 1.5, 3.5]) / 5.5 * 4, rtol=1e-6)
    counts = torch.rand(512, generator=torch.Generator().manual_seed(0)) * (torch.arange(512) % 3 > 0)
    smoothed = laplace_smoothed(counts, eps=1e-5)
    assert smoothed.sum().item() == pytest.approx(counts.sum().item(), rel=1e-6)
    assert (smoothed > 0).all()


def test_usage_fraction_and_perplexity():
    """docs/vq.md §5: perplexity in [1, K], K for uniform usage, 1 for a single code; fraction = codes used / K."""
    uniform = codebook_usage(torch.arange(16).repeat(5), 16)
    assert uniform.fraction_used == 1.0 and uniform.perplexity == pytest.approx(16)
    single = codebook_usage(torch.full((50,), 3), 16)
    assert single.fraction_used == 1 / 16 and single.perplexity == pytest.approx(1)
    # p = (1/2, 1/4, 1/4, 0): entropy 1.5 ln 2, perplexity 2^1.5.
    skewed = codebook_usage(torch.tensor([[0, 0], [1, 2]]), 4)
    assert skewed.fraction_used == 0.75 and skewed.perplexity == pytest.approx(2**1.5)
    random = codebook_usage(torch.randint(0, 32, (100,), generator=torch.Generator().manual_seed(0)), 32)
    assert 1 <= random.perplexity <= 32
    with pytest.raises(ValueError, match="in \\[0, 4\\)"):
        codebook_usage(torch.tensor([0, 4]), 4)


@pytest.mark.parametrize("ema", [False, True])
def test_dead_code_restart_revives_unused_codes(ema):
    """Codes placed far from the data are never chosen; once their usage decays below the threshold they are reset
    to batch encodings and then win encodings."""
    torch.manual_seed(0)
    vq = VectorQuantizer(32, 2, ema=ema, decay=0.5, dead_code_threshold=0.6).train()
    far = randn(32, 2, seed=1) + 50
    far[0] = 0  # the one code near the data
    if ema:
        vq.codebook.copy_(far)
        vq.embed_sum.copy_(far)
    else:
        vq.codebook.data.copy_(far)
    data = randn(256, 2, seed=2)
    assert codebook_usage(vq.eval()(data)[1], 32).fraction_used == 1 / 32
    vq.train()
    vq(data)  # unused codes decay from 1 to 0.5 < 0.6
    assert (vq.cluster_size < 0.6).sum() == 31
    _, indices, _ = vq(randn(256, 2, seed=3))  # restart, then lookup
    assert codebook_usage(indices, 32).fraction_used == 1.0
    assert (vq.codebook.detach().abs() < 10).all()
    assert codebook_usage(vq.eval()(data)[1], 32).fraction_used > 0.9


def test_no_restart_without_threshold_or_in_eval():
    vq = VectorQuantizer(8, 2, ema=True, decay=0.5, dead_code_threshold=0.0).train()
    vq.codebook.add_(50)
    vq.embed_sum.add_(50)
    for seed in range(3):
        vq(randn(64, 2, seed=seed))
    assert (vq.codebook > 10).sum() > 0
    assert not hasattr(VectorQuantizer(8, 2), "cluster_size")


@pytest.mark.parametrize("ema", [False, True])
def test_cosine_codes_are_unit_norm_and_lookup_is_by_cosine_similarity(ema):
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4, cosine=True, ema=ema).train()
    for seed in range(3):
        vq(randn(50, 4, seed=seed) * 3)
    vq.eval()
    z = randn(200, 4, seed=10) * 5
    z_q, indices, _ = vq(z)
    codebook = vq.codebook.detach().double().numpy()
    z64 = z.double().numpy()
    cosine = (z64 @ codebook.T) / np.linalg.norm(z64, axis=1)[:, None] / np.linalg.norm(codebook, axis=1)
    np.testing.assert_array_equal(indices.numpy(), cosine.argmax(1))
    np.testing.assert_allclose(torch.linalg.vector_norm(z_q, dim=-1).detach().numpy(), 1, rtol=1e-6)
    np.testing.assert_allclose(
        torch.linalg.vector_norm(vq.indices_to_latents(torch.arange(16)), dim=-1).detach(), 1, rtol=1e-6
    )
    assert torch.equal(vq(z * 0.01)[1], indices)


def test_image_and_channels_last_layouts_agree():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 3)
    image = randn(2, 3, 4, 5)
    quantized, indices, aux_loss = vq(image)
    rows = image.permute(0, 2, 3, 1).reshape(-1, 3)
    quantized_rows, indices_rows, aux_rows = vq(rows)
    assert quantized.shape == image.shape and indices.shape == (2, 4, 5)
    assert torch.equal(quantized.permute(0, 2, 3, 1).reshape(-1, 3), quantized_rows)
    assert torch.equal(indices.flatten(), indices_rows)
    assert torch.allclose(aux_loss, aux_rows)
    assert torch.allclose(vq.indices_to_latents(indices).movedim(-1, 1), quantized, atol=1e-6)
    with pytest.raises(ValueError, match="expects 3 channels"):
        vq(randn(2, 4, 4, 5))


def test_quantizes_in_float32_under_bf16_autocast():
    """Distances in bf16 would pick other codes for near ties; under autocast the result equals fp32."""
    torch.manual_seed(0)
    vq = VectorQuantizer(256, 8)
    z = randn(2000, 8)
    quantized, indices, aux_loss = vq(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        quantized_autocast, indices_autocast, aux_autocast = vq(z)
    assert quantized_autocast.dtype == torch.float32 and aux_autocast.dtype == torch.float32
    assert torch.equal(indices_autocast, indices) and torch.equal(quantized_autocast, quantized)
    bf16_distances = vq.codebook.bfloat16().pow(2).sum(1) - 2 * z.bfloat16() @ vq.codebook.bfloat16().T
    assert (bf16_distances.argmin(1) != indices).any()


# ---- Two processes (gloo on CPU) against one process that sees the whole global batch ----

SCENARIOS = {
    "ema": ({"ema": True, "decay": 0.8}, 0.0),
    "ema_restart": ({"ema": True, "decay": 0.5, "dead_code_threshold": 0.8}, 5.0),
    "restart": ({"decay": 0.5, "dead_code_threshold": 0.8}, 5.0),
    "cosine_ema_restart": ({"ema": True, "cosine": True, "decay": 0.5, "dead_code_threshold": 0.8}, 5.0),
}
STEPS, GLOBAL_BATCH = 4, 8


def run_scenario(name: str, rank: int, world: int) -> dict:
    """Train a fresh quantizer for STEPS on this rank's share of the global batches (image layout); its state.

    In float64: a round-off difference of the summed statistics then stays near 1e-16 and cannot flip a nearest-code
    choice, which float32's 1e-7 can on some CPU.
    """
    kwargs, offset = SCENARIOS[name]
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 3, **kwargs).double().train()
    with torch.no_grad():
        vq.codebook.add_(offset)  # most codes start dead
        if vq.ema:
            vq.embed_sum.add_(offset)
    torch.manual_seed(1000 + rank)  # ranks' global RNGs differ; restarts must not depend on them
    for step in range(STEPS):
        batch = randn(GLOBAL_BATCH, 3, 2, 2, seed=100 + step) + torch.linspace(-1, 1, GLOBAL_BATCH)[:, None, None, None]
        vq(batch.double().chunk(world)[rank])
    return {key: value.detach().clone() for key, value in vq.state_dict().items()}


def two_rank_worker(out_dir: str) -> None:
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    results = {"world_size": world, **{name: run_scenario(name, rank, world) for name in SCENARIOS}}
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    # No rank leaves while the other is in a collective. debug_launcher owns the process group: accelerate itself
    # skips destroying it when fork-launched, and destroying it here deletes the launcher's rendezvous file.
    dist.barrier()


def test_two_ranks_match_one_process_on_the_global_batch(tmp_path, monkeypatch):
    """EMA statistics are all-reduced and restarts drawn from the all-gathered batch with a step-seeded generator:
    both ranks end with identical codebooks, equal to a single process fed the concatenated batch."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    debug_launcher(two_rank_worker, args=(str(tmp_path),), num_processes=2)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert [result["world_size"] for result in ranks] == [2, 2]
    for name in SCENARIOS:
        single = run_scenario(name, rank=0, world=1)
        for key, value in single.items():
            assert torch.equal(ranks[0][name][key], ranks[1][name][key]), (name, key)
            # Sums of 8 values of size ~5, four EMA steps: the summation order moves them by ~1e-15.
            assert torch.allclose(ranks[0][name][key].double(), value.double(), rtol=0, atol=1e-12), (name, key)
        # Not vacuous: one rank's half batch alone, without the collectives, ends elsewhere.
        alone = run_scenario(name, rank=0, world=2)
        assert not torch.allclose(alone["codebook"], single["codebook"], atol=1e-3), name
        if "restart" in name:
            # Codes start around (5, 5, 5), the data around 0: restarted codes are the ones near the data.
            assert (single["codebook"].norm(dim=1) < 4).sum() > 1, name


@pytest.mark.parametrize("cosine", [False, True])
def test_snap_is_forwards_lookup_of_the_nearest_code(cosine):
    vq = VectorQuantizer(16, 4, cosine=cosine).eval()
    z = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    _, indices, _ = vq(z)
    assert torch.equal(vq.snap(z.movedim(1, -1)), vq.codes()[indices])
    assert torch.equal(vq.snap(vq.codes()), vq.codes()), "a code is its own nearest code"
