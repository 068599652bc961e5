"""Vector quantization (VQ-VAE, van den Oord et al. 2017) with an optional EMA codebook and dead-code restarts.

Formulas in docs/vq.md. Under torch.distributed every statistic that changes the codebook is taken over the
global batch, so all ranks hold the same codebook, equal to one process's that saw the whole batch (rank 0's
samples first). That needs every rank to start from the same state (DDP broadcasts it) and, in training, to call
forward together with batches of the same shape.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from tokenizers_img.layout import channels_last, like_input, require_channels
from tokenizers_img.precision import at_least_float32


def world_size() -> int:
    """Processes in the default group; 1 when torch.distributed is not in use."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_gather_rows(x: Tensor) -> Tensor:
    """The rows of x from every rank, concatenated in rank order; every rank must hold as many rows."""
    if world_size() == 1:
        return x
    gathered = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(gathered, x.contiguous())
    return torch.cat(gathered)


def nearest_code(z: Tensor, codebook: Tensor) -> Tensor:
    """argmin_k ||z - e_k||^2 = argmin_k (||e_k||^2 - 2 z.e_k) for rows z [N, dim] and codes [K, dim]."""
    return (codebook.pow(2).sum(1) - 2 * z @ codebook.T).argmin(1)


def laplace_smoothed(cluster_size: Tensor, eps: float) -> Tensor:
    """N'_k = (N_k + eps) / (n + K eps) n with n = sum_k N_k: no zero counts, and sum_k N'_k = n."""
    total = cluster_size.sum()
    return (cluster_size + eps) / (total + len(cluster_size) * eps) * total


class VectorQuantizer(nn.Module):
    """Nearest-code quantizer with straight-through gradient; forward(x) -> (quantized, indices, aux_loss).

    codebook_size: number of codes K, initialised N(0, I)
    dim: width of the codes and of the input's channel dim
    beta: commitment weight, aux_loss = ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2 (only the second term with ema)
    ema: the codebook is a buffer set to EMA cluster sums / EMA cluster sizes in training, not a trained parameter
    decay: EMA decay of cluster sizes and sums (and of usage counts for dead-code restarts)
    eps: Laplace smoothing of the EMA cluster sizes, so an unused code is never divided by zero
    cosine: l2-normalise inputs and codes, so the nearest code is the most cosine-similar one (ViT-VQGAN)
    dead_code_threshold: in training, codes whose EMA usage (initially 1) is below this are reset to batch encodings
    """

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        beta: float = 0.25,
        ema: bool = False,
        decay: float = 0.99,
        eps: float = 1e-5,
        cosine: bool = False,
        dead_code_threshold: float = 0.0,
    ):
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise ValueError(f"codebook_size and dim must be positive, got {codebook_size} and {dim}")
        if not 0 <= decay < 1 or eps <= 0 or dead_code_threshold < 0:
            raise ValueError(
                f"need 0 <= decay < 1, eps > 0 and dead_code_threshold >= 0, got decay={decay}, eps={eps}, "
                f"dead_code_threshold={dead_code_threshold}"
            )
        self.codebook_size, self.dim = codebook_size, dim
        self.beta, self.ema, self.decay, self.eps = beta, ema, decay, eps
        self.cosine, self.dead_code_threshold = cosine, dead_code_threshold
        codebook = torch.randn(codebook_size, dim)
        if ema:
            self.register_buffer("codebook", codebook)
            self.register_buffer("embed_sum", codebook.clone())
        else:
            self.codebook = nn.Parameter(codebook)
        self.tracks_usage = ema or dead_code_threshold > 0
        if self.tracks_usage:
            # N_k: EMA cluster sizes (with ema) or usage counts. Starting at 1 with m_k = e_k makes e = m / N hold
            # before the first update, so a code unused from the start keeps its place instead of blowing up.
            self.register_buffer("cluster_size", torch.ones(codebook_size))
            # Seeds the choice of restart encodings: a function of the step alone, hence the same on every rank.
            self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def codes(self) -> Tensor:
        """The codebook as used for lookup, [K, dim] in at least float32: l2-normalised rows when cosine."""
        codebook = at_least_float32(self.codebook)
        return F.normalize(codebook, dim=-1) if self.cosine else codebook

    def indices_to_latents(self, indices: Tensor) -> Tensor:
        """What forward returns for these indices, channels-last (..., dim): the codes e_k."""
        return self.codes()[indices]

    def snap(self, latents: Tensor) -> Tensor:
        """The nearest code e_k of each latent vector (channels-last, ..., dim), as forward looks it up."""
        z = latents.reshape(-1, self.dim).to(torch.promote_types(self.codebook.dtype, torch.float32))
        codebook = self.codes()
        z = F.normalize(z, dim=-1) if self.cosine else z
        return codebook[nearest_code(z, codebook)].reshape(latents.shape).to(latents.dtype)

    @torch.no_grad()
    def restart_dead_codes(self, z_e: Tensor) -> None:
        """Codes with N_k < threshold become encodings drawn from the global batch (rank 0's rows first)."""
        dead = self.cluster_size < self.dead_code_threshold
        num_dead = int(dead.sum())
        if num_dead == 0:
            return
        samples = all_gather_rows(z_e)
        generator = torch.Generator().manual_seed(int(self.num_updates))
        choice = torch.multinomial(
            torch.ones(len(samples)), num_dead, replacement=num_dead > len(samples), generator=generator
        )
        replacements = samples[choice.to(samples.device)]
        self.codebook[dead] = replacements
        # A restarted code starts exactly at the threshold: neither favoured nor dead on arrival, it stays alive only
        # if it keeps winning `threshold` encodings a batch on average. m_k = e_k N_k keeps e = m / N on the sample.
        self.cluster_size[dead] = self.dead_code_threshold
        if self.ema:
            self.embed_sum[dead] = replacements * self.dead_code_threshold

    @torch.no_grad()
    def update_statistics(self, z_e: Tensor, indices: Tensor) -> None:
        """N_k <- decay N_k + (1 - decay) n_k; with ema also m_k <- decay m_k + (1 - decay) s_k, e_k = m_k / N'_k.

        n_k and s_k (count and sum of the encodings assigned to code k) are summed over all ranks first.
        """
        stats = torch.bincount(indices, minlength=self.codebook_size).to(self.cluster_size.dtype)[:, None]
        if self.ema:
            sums = torch.zeros_like(self.embed_sum).index_add_(0, indices, z_e)
            stats = torch.cat([stats, sums], dim=1)
        if world_size() > 1:
            dist.all_reduce(stats)
        self.cluster_size.mul_(self.decay).add_(stats[:, 0], alpha=1 - self.decay)
        if self.ema:
            self.embed_sum.mul_(self.decay).add_(stats[:, 1:], alpha=1 - self.decay)
            self.codebook.copy_(self.embed_sum / laplace_smoothed(self.cluster_size, self.eps)[:, None])
        self.num_updates += 1

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(z_q = z_e + sg[e_k - z_e] in x's layout and dtype, indices k [x's shape without channels], aux_loss)."""
        require_channels(x, self.dim, "VectorQuantizer")
        z = channels_last(x)
        # Distances and EMA sums in bf16/fp16 pick wrong codes and drift: all of it runs in the codebook's precision,
        # at least fp32.
        with torch.autocast(device_type=z.device.type, enabled=False):
            z_e = z.reshape(-1, self.dim).to(torch.promote_types(self.codebook.dtype, torch.float32))
            if self.cosine:
                z_e = F.normalize(z_e, dim=-1)
            update = self.training and self.tracks_usage
            # Restarts come before the lookup, so this batch's graph only ever sees the codebook it was built with.
            if update and self.dead_code_threshold > 0:
                self.restart_dead_codes(z_e.detach())
            codebook = self.codes()
            indices = nearest_code(z_e.detach(), codebook)
            e_k = codebook[indices]
            if update:
                self.update_statistics(z_e.detach(), indices)
            aux_loss = self.beta * F.mse_loss(z_e, e_k.detach())
            if not self.ema:
                aux_loss = aux_loss + F.mse_loss(e_k, z_e.detach())
            z_q = z_e + (e_k - z_e).detach()
        quantized = like_input(z_q.reshape(z.shape).to(x.dtype), x)
        return quantized, indices.reshape(z.shape[:-1]), aux_loss
