"""NeuralDiffuser's fMRI-embedding decoders and their losses (NeuralDiffuser §4.2).

Voxels of one subject go through that subject's **voxel encoder** (one linear layer into a space
shared by every subject, §4.2.1) and then through decoders into the generator's spaces (§4.2.2):

* :class:`VoxelEncoder` — ``Linear(d_s, d)`` per subject (NSD subjects differ in voxel count);
* :class:`MixerDecoder` — the high-level pipeline ``f_c`` (text condition ``ĉ``, ``L_T × d_T``) and,
  with the same architecture and another output size, each primary-visual-feature decoder ``f_g^l``
  (Eq. 13: image-encoder layer ``l``'s tokens): an MLP-Mixer backbone (4 blocks) whose output tokens are
  the prediction, and a projector (3 hidden layers) into the contrastive space;
* :class:`LatentDecoder` — the low-level pipeline ``f_z``: 4 residual MLP blocks into a ``g × g × c_g``
  grid, an upsampler (a VQ-VAE-decoder-like stack of convolutions) to the VAE latent ``ẑ``, and a
  projector of the grid for its contrastive term.

Losses: :func:`mixco_loss` (Eq. 1, with :func:`mixco_mix` mixing the voxels), :func:`soft_clip_loss`
(Eq. 2), the MAE of Eq. 5 (``torch.nn.functional.l1_loss``), and the first-order statistics
alignment of decoded latents, :func:`align_first_order` (Eq. 6–7).

Sizes come from the arguments (the backbone's ``L_T, d_T``, latent shape and image-encoder token shape),
never from SD 1.4's 77 × 768 or 4 × 64 × 64. :class:`NeuralDiffuserModel` puts the parts together as the
shared pipeline's conditioner (voxels in; ``ĉ``, ``ẑ``, ``ĝ^l`` out; Algorithm 1 through
``strength``, κ and η); like diffusers' ``MultiControlNetModel`` it is a ``ModelMixin`` whose configs
live in its parts. Its training is :mod:`brainrecon.training.neuraldiffuser`.

:class:`DiffusionPrior` is the high-level pipeline's optional diffusion prior (Eq. 3,
``L_c = L_mix|soft + α·L_prior``): with one, ``ĉ`` is the prior's sample given the backbone's output.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from ..errors import CheckpointError, InvalidInputError
from ..io import atomic_dir, read_json, write_json
from .conditioner import BrainConditioner, feature_distance, text_context_inputs

__all__ = ["NeuralDiffuserModel", "VoxelEncoder", "MixerDecoder", "LatentDecoder", "DiffusionPrior", "DecoderOutput",
           "mixco_mix", "mixco_loss", "soft_clip_loss", "align_first_order"]


@dataclass
class DecoderOutput(BaseOutput):
    """A decoder's prediction and its projection into the contrastive space.

    Attributes
    ----------
    prediction : Tensor
        ``ĉ`` ``(B, L, d)``, ``ĝ^l`` ``(B, L, d)`` or ``ẑ`` ``(B, c, h, w)``.
    projection : Tensor ``(B, D)``
        ``p`` of Eq. 1–2 (not yet normalised).
    """

    prediction: torch.Tensor
    projection: torch.Tensor


class VoxelEncoder(ModelMixin, ConfigMixin):
    """Subject-specific voxel encoder: one ``Linear(d_s, hidden_dim)`` per subject (NeuralDiffuser §4.2.1).

    Parameters
    ----------
    subject_voxels : dict of str to int
        Voxel count ``d_s`` of each subject, e.g. ``{"subj01": 15724, "subj02": 14278}``.
    hidden_dim : int
        Size ``d`` of the shared space (4,096 in the paper).
    """

    @register_to_config
    def __init__(self, subject_voxels: dict, hidden_dim: int = 4096):
        super().__init__()
        if not subject_voxels:
            raise InvalidInputError("subject_voxels is empty: give each subject's voxel count, e.g. {'subj01': 15724}.")
        for s, n in subject_voxels.items():
            if not (isinstance(n, int) and n > 0) or not str(s) or "." in str(s):
                raise InvalidInputError(f"subject_voxels[{s!r}] = {n!r}: each subject needs a name without '.' "
                                        "and a positive voxel count.")
        self.linears = nn.ModuleDict({str(s): nn.Linear(int(n), int(hidden_dim)) for s, n in subject_voxels.items()})

    @property
    def subjects(self) -> list:
        """The subjects this encoder knows, in its config's order."""
        return list(self.config.subject_voxels)

    def add_subject(self, subject: str, n_voxels: int) -> None:
        """Add a fresh linear layer for a new subject (fine-tuning on a held-out subject, §4.2.3)."""
        if subject in self.linears:
            raise InvalidInputError(f"subject {subject!r} is already known to this voxel encoder.")
        self.linears[subject] = nn.Linear(int(n_voxels), int(self.config.hidden_dim)).to(self.device, self.dtype)
        self.register_to_config(subject_voxels={**dict(self.config.subject_voxels), subject: int(n_voxels)})

    def keep_subjects(self, subjects) -> None:
        """Drop every subject's layer but ``subjects`` (e.g. to ship a fine-tuned subject's model alone)."""
        subjects = [str(s) for s in subjects]
        unknown = [s for s in subjects if s not in self.linears]
        if unknown or not subjects:
            raise InvalidInputError(f"keep_subjects({subjects}): this voxel encoder knows {self.subjects}; keep at "
                                    "least one of them.")
        for s in self.subjects:
            if s not in subjects:
                del self.linears[s]
        self.register_to_config(subject_voxels={s: int(n) for s, n in self.config.subject_voxels.items()
                                                if s in subjects})

    def forward(self, voxels: torch.Tensor, subject: str) -> torch.Tensor:
        """``(B, d_s)`` responses of one subject → ``(B, hidden_dim)``."""
        if subject not in self.linears:
            raise InvalidInputError(f"unknown subject {subject!r}; this voxel encoder knows {self.subjects} "
                                    "(add one with add_subject).")
        n = self.config.subject_voxels[subject]
        if voxels.ndim != 2 or voxels.shape[1] != n:
            raise InvalidInputError(f"{subject}'s voxels must be (B, {n}); got {tuple(voxels.shape)}.")
        return self.linears[subject](voxels)


class _MixerBlock(nn.Module):
    """Token mixing then channel mixing, each a pre-norm residual MLP (MLP-Mixer, Tolstikhin et al. 2021)."""

    def __init__(self, n_tokens: int, dim: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.tokens = nn.Sequential(nn.Linear(n_tokens, n_tokens), nn.GELU(), nn.Dropout(dropout),
                                    nn.Linear(n_tokens, n_tokens))
        self.channels = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channels(self.norm2(x))


def _projector(dim_in: int, hidden: int, dim_out: int, n_hidden: int = 3) -> nn.Sequential:
    layers, d = [], dim_in
    for _ in range(n_hidden):
        layers += [nn.LayerNorm(d), nn.GELU(), nn.Linear(d, hidden)]
        d = hidden
    return nn.Sequential(*layers, nn.LayerNorm(d), nn.GELU(), nn.Linear(d, dim_out))


class MixerDecoder(ModelMixin, ConfigMixin):
    """Shared space → token embeddings: NeuralDiffuser's high-level pipeline ``f_c`` and ``f_g^l`` (§4.2.2, §4.3).

    Parameters
    ----------
    in_dim : int
        Size of the shared space (the voxel encoder's ``hidden_dim``).
    out_tokens, out_dim : int
        The target's shape: the backbone's text condition ``L_T × d_T`` for ``f_c``, image-encoder
        layer tokens for ``f_g^l``.
    n_tokens, token_dim : int
        The mixer's working tokens (the shared vector is cut into ``n_tokens`` of ``token_dim``).
    n_blocks : int
        Mixer blocks (4 in the paper).
    projection_hidden : int
        Width of the projector (3 hidden layers, applied to each token, as MindEye's ``clip_proj``):
        ``p`` has the target's shape, so Eq. 1-2 compare it with the flattened target itself.
    dropout : float
    """

    @register_to_config
    def __init__(self, in_dim: int, out_tokens: int, out_dim: int, n_tokens: int = 16, token_dim: int = 256,
                 n_blocks: int = 4, projection_hidden: int = 512, dropout: float = 0.15):
        super().__init__()
        self.inp = nn.Linear(in_dim, n_tokens * token_dim)
        self.blocks = nn.ModuleList([_MixerBlock(n_tokens, token_dim, dropout) for _ in range(n_blocks)])
        self.norm = nn.LayerNorm(token_dim)
        self.to_tokens = nn.Linear(n_tokens, out_tokens)
        self.to_dim = nn.Linear(token_dim, out_dim)
        self.projector = _projector(out_dim, projection_hidden, out_dim)

    def forward(self, h: torch.Tensor) -> DecoderOutput:
        """``(B, in_dim)`` → ``ĉ`` / ``ĝ^l`` ``(B, out_tokens, out_dim)`` and ``p`` ``(B, out_tokens·out_dim)``."""
        c = self.config
        x = self.inp(h).view(len(h), c.n_tokens, c.token_dim)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        pred = self.to_dim(self.to_tokens(x.transpose(1, 2)).transpose(1, 2))
        return DecoderOutput(prediction=pred, projection=self.projector(pred).flatten(1))


class _ResMLP(nn.Module):
    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))

    def forward(self, x):
        return x + self.net(x)


class LatentDecoder(ModelMixin, ConfigMixin):
    """Shared space → VAE latent ``ẑ``: NeuralDiffuser's low-level pipeline ``f_z`` (§4.2.2, Eq. 4–5).

    Parameters
    ----------
    in_dim : int
        Size of the shared space.
    latent_channels, latent_size : int
        The backbone's latent (SD: 4 × 64 × 64; toy: 16 × 8 × 8).
    grid_size, grid_channels : int
        The MLP backbone's output grid (16 × 16 × 64 in the paper); ``latent_size / grid_size`` must be a
        power of two (the upsampler doubles the side per stage; equal sides: no upsampling).
    n_blocks : int
        Residual MLP blocks (4 in the paper).
    projection_channels : int
        Channels of the grid's projection for the contrastive term (512 in the paper).
    dropout : float
    """

    @register_to_config
    def __init__(self, in_dim: int, latent_channels: int, latent_size: int, grid_size: int = 16,
                 grid_channels: int = 64, n_blocks: int = 4, projection_channels: int = 512, dropout: float = 0.15):
        super().__init__()
        ratio = latent_size // grid_size
        if latent_size % grid_size or ratio & (ratio - 1):
            raise InvalidInputError(f"latent_size {latent_size} must be grid_size {grid_size} times a power of two.")
        self.blocks = nn.Sequential(*[_ResMLP(in_dim, dropout) for _ in range(n_blocks)], nn.LayerNorm(in_dim))
        self.to_grid = nn.Linear(in_dim, grid_channels * grid_size * grid_size)
        ups, ch = [], grid_channels
        for _ in range(ratio.bit_length() - 1):      # VQ-VAE-decoder-like: norm, act, upsample, conv
            ups += [nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(ch, max(ch // 2, 8), 3, padding=1)]
            ch = max(ch // 2, 8)
        self.upsampler = nn.Sequential(*ups, nn.GroupNorm(_groups(ch), ch), nn.SiLU(),
                                       nn.Conv2d(ch, latent_channels, 3, padding=1))
        self.projector = nn.Sequential(nn.GroupNorm(_groups(grid_channels), grid_channels), nn.SiLU(),
                                       nn.Conv2d(grid_channels, projection_channels, 1))

    def forward(self, h: torch.Tensor) -> DecoderOutput:
        """``(B, in_dim)`` → ``ẑ`` ``(B, c, h, w)`` and the grid's projection ``(B, projection_channels·g²)``."""
        c = self.config
        grid = self.to_grid(self.blocks(h)).view(len(h), c.grid_channels, c.grid_size, c.grid_size)
        return DecoderOutput(prediction=self.upsampler(grid), projection=self.projector(grid).flatten(1))


def _groups(ch: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if ch % g == 0)


# ----------------------------------------------------------------------------- losses
def mixco_mix(voxels: torch.Tensor, beta: float = 0.15):
    """MixCo's voxel mixing (Kim et al. 2020, as NeuralDiffuser Eq. 1 uses it).

    Each row ``i`` becomes ``λ_i v_i + (1 − λ_i) v_{π(i)}`` with ``λ_i ~ Beta(beta, beta)`` and ``π`` a
    random permutation (torch's global generator: :func:`~brainrecon.training.fit` reseeds it every
    step). Returns ``(mixed, lam (B,), perm (B,))`` for :func:`mixco_loss`.
    """
    n = len(voxels)
    lam = torch.distributions.Beta(float(beta), float(beta)).sample((n,)).to(voxels.device, voxels.dtype)
    perm = torch.randperm(n).to(voxels.device)
    mixed = lam[:, None] * voxels + (1 - lam[:, None]) * voxels[perm]
    return mixed, lam, perm


def _check_pair(p, c, name):
    if p.ndim != 2 or c.ndim != 2 or p.shape != c.shape:
        raise InvalidInputError(f"{name}: projections {tuple(p.shape)} and targets {tuple(c.shape)} must both be "
                                "(B, D) with the same D (flatten the targets first).")


def mixco_loss(p: torch.Tensor, c: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor,
               temperature: float = 0.006) -> torch.Tensor:
    """Bidirectional CLIP loss with MixCo's soft targets, NeuralDiffuser Eq. 1.

    ``p`` are the projections of mixed voxels (:func:`mixco_mix`), ``c`` the targets of the unmixed
    rows; both are L2-normalised here. Row ``i``'s target puts ``λ_i`` on ``c_i`` and ``1 − λ_i`` on
    ``c_{π(i)}``, in both directions (brain → target over ``P_i``, target → brain over ``C_j``).
    With ``λ = 1`` it is the plain symmetric CLIP loss.
    """
    _check_pair(p, c, "mixco_loss")
    p, c = F.normalize(p.float(), dim=-1), F.normalize(c.float(), dim=-1)
    logits = p @ c.T / temperature
    n = len(p)
    idx = torch.arange(n, device=p.device)
    target = torch.zeros(n, n, device=p.device)
    target[idx, idx] += lam.float()
    target[idx, perm] += 1 - lam.float()
    b2c = -(target * F.log_softmax(logits, 1)).sum(1).mean()
    c2b = -(target.T * F.log_softmax(logits.T, 1)).sum(1).mean()
    return (b2c + c2b) / 2


def soft_clip_loss(p: torch.Tensor, c: torch.Tensor, temperature: float = 0.006) -> torch.Tensor:
    """Soft CLIP loss, NeuralDiffuser Eq. 2 (as in MindEye: both directions averaged).

    The target of row ``i`` is ``softmax_j(c_i*·c_j*/τ)``, the targets' own similarities; the
    prediction ``softmax_j(p_i*·c_j*/τ)``. Eq. 2 as printed is the brain → target direction; the
    reference code adds the target → brain one, which this does too.
    """
    _check_pair(p, c, "soft_clip_loss")
    p, c = F.normalize(p.float(), dim=-1), F.normalize(c.float(), dim=-1)
    target = F.softmax(c @ c.T / temperature, 1)
    logits = p @ c.T / temperature
    b2c = -(target * F.log_softmax(logits, 1)).sum(1).mean()
    c2b = -(target.T * F.log_softmax(logits.T, 1)).sum(1).mean()
    return (b2c + c2b) / 2


class DiffusionPrior(ModelMixin, ConfigMixin):
    """The high-level pipeline's diffusion prior (NeuralDiffuser §4.2.2, Eq. 3; DALL-E 2's, as MindEye's).

    A conditional diffusion model over the text condition: it denoises ``c_t`` (``L × d`` tokens) given
    the MLP-Mixer backbone's output ``h`` (the same shape), bridging the gap between what the brain
    decodes to and the CLIP text space. The network is a causal transformer over
    ``[h tokens, timestep token, c_t tokens]`` (each with a learned position embedding, no learnable
    queries) whose last ``L`` outputs predict the clean ``c_0`` (DALL-E 2's ``predict_x_start``), on a
    cosine schedule of ``num_train_timesteps`` (100, as the paper). Because ``h`` is ``f_c``'s
    prediction of the same tokens, a linear map of ``h``'s token ``j`` is also added to ``c_t``'s token
    ``j`` (without it the toy prior had to learn the alignment through attention and, in 1,000 steps,
    had not: its one-step prediction at ``t = T`` was no better than the mean).

    Parameters
    ----------
    n_tokens, dim : int
        ``L_T`` and ``d_T`` of the text condition.
    depth, heads : int
        Transformer layers and attention heads (MindEye's prior: depth 6).
    num_train_timesteps : int
    num_inference_steps : int
        Steps of :meth:`sample` (MindEye samples its prior in 20).
    """

    @register_to_config
    def __init__(self, n_tokens: int, dim: int, depth: int = 2, heads: int = 4, num_train_timesteps: int = 100,
                 num_inference_steps: int = 20):
        super().__init__()
        if dim % heads:
            raise InvalidInputError(f"the prior's dim ({dim}) must be a multiple of its heads ({heads}).")
        self.pos = nn.Parameter(torch.zeros(2 * n_tokens + 1, dim))
        nn.init.normal_(self.pos, std=0.02)
        self.time = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.aligned = nn.Linear(dim, dim)    # h's token j added to c_t's token j (the two are token-aligned)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim)
        self.register_buffer("causal", torch.triu(torch.full((2 * n_tokens + 1,) * 2, float("-inf")), 1),
                             persistent=False)
        self.scheduler = self.make_scheduler()          # the training schedule (not a module: never saved)

    def make_scheduler(self):
        """The prior's noise schedule (diffusers ``DDPMScheduler``, cosine, predicting ``c_0``)."""
        return DDPMScheduler(num_train_timesteps=self.config.num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                             prediction_type="sample", clip_sample=False)

    def _time_token(self, t: torch.Tensor, dtype) -> torch.Tensor:
        half = self.config.dim // 2
        freqs = torch.exp(-torch.arange(half, device=t.device).float() * (torch.log(torch.tensor(1e4)) / half))
        emb = t.float()[:, None] * freqs[None]
        emb = torch.cat([emb.sin(), emb.cos()], -1)
        if emb.shape[1] < self.config.dim:
            emb = F.pad(emb, (0, self.config.dim - emb.shape[1]))
        return self.time(emb.to(dtype))[:, None]

    def forward(self, noisy: torch.Tensor, timestep: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """``ĉ_0`` predicted from ``c_t`` ``(B, L, d)`` at ``timestep`` ``(B,)`` given ``h`` ``(B, L, d)``."""
        n = self.config.n_tokens
        x = torch.cat([condition, self._time_token(timestep, noisy.dtype), noisy + self.aligned(condition)], 1)
        x = x + self.pos
        x = self.transformer(x, mask=self.causal.to(x.dtype))
        return self.out(self.norm(x[:, -n:]))

    def loss(self, condition: torch.Tensor, target: torch.Tensor, scheduler=None) -> torch.Tensor:
        """``L_prior`` of Eq. 3: the MSE of ``ĉ_0`` against ``c`` at a uniformly drawn timestep."""
        scheduler = scheduler or self.scheduler
        t = torch.randint(0, self.config.num_train_timesteps, (len(target),), device=target.device)
        noise = torch.randn_like(target)
        noisy = scheduler.add_noise(target, noise, t)
        return F.mse_loss(self(noisy, t, condition), target)

    @torch.no_grad()
    def sample(self, condition: torch.Tensor, num_inference_steps: int | None = None) -> torch.Tensor:
        """``ĉ`` for the backbone outputs ``h``: the reverse process (DDIM, η = 0) from the noise
        distribution's mean, so a scan's ``ĉ`` is deterministic and does not depend on its batch."""
        sched = DDIMScheduler.from_config(self.scheduler.config)
        sched.set_timesteps(int(num_inference_steps or self.config.num_inference_steps), device=condition.device)
        x = torch.zeros_like(condition)
        for t in sched.timesteps:
            pred = self(x, t.expand(len(x)).to(condition.device), condition)
            x = sched.step(pred, t, x).prev_sample
        return x


def align_first_order(z_hat: torch.Tensor, train_mean: torch.Tensor, train_std: torch.Tensor,
                      eps: float = 1e-6) -> torch.Tensor:
    """First-order statistics alignment of decoded latents, NeuralDiffuser Eq. 6–7.

    ``ẑ' = (ẑ − μ_ẑ) / σ_ẑ`` with the decoded set's own per-channel mean and std (over samples and
    positions), then ``σ_tr · ẑ' + μ_tr`` with the training latents' statistics.

    Parameters
    ----------
    z_hat : Tensor ``(N, c, h, w)``
        Latents decoded from a whole test set (at least two samples).
    train_mean, train_std : Tensor ``(c,)``
        Per-channel statistics of the training latents.
    """
    if z_hat.ndim != 4 or len(z_hat) < 2:
        raise InvalidInputError(f"align_first_order needs a set of decoded latents (N ≥ 2, c, h, w); got "
                                f"{tuple(z_hat.shape)}.")
    c = z_hat.shape[1]
    mu_tr, sd_tr = torch.as_tensor(train_mean).to(z_hat).reshape(-1), torch.as_tensor(train_std).to(z_hat).reshape(-1)
    if mu_tr.numel() != c or sd_tr.numel() != c:
        raise InvalidInputError(f"train_mean / train_std need one value per latent channel ({c}); got "
                                f"{mu_tr.numel()} and {sd_tr.numel()}.")
    mu = z_hat.mean((0, 2, 3), keepdim=True)
    sd = z_hat.std((0, 2, 3), keepdim=True)
    return (z_hat - mu) / (sd + eps) * sd_tr.view(1, c, 1, 1) + mu_tr.view(1, c, 1, 1)


# ----------------------------------------------------------------------------- the conditioner
class NeuralDiffuserModel(BrainConditioner, ModelMixin):
    """NeuralDiffuser for one subject as the pipeline's conditioner (§4, Algorithm 1).

    A subject's voxels ``(B, d_s)`` are encoded once per call (:meth:`encode_scans`) into the text
    condition ``ĉ`` (the U-Net's cross-attention context), the initial latent ``ẑ`` (img2img's start,
    Algorithm 1 line 2, aligned by Eq. 6–7 when the training statistics are stored) and the
    primary-visual-feature targets ``ĝ^l`` (Eq. 13). Feature guidance (κ, η: the pipeline's
    ``feature_guidance_scale`` and ``feature_guidance_strength``) needs an image encoder and the VAE
    decoder: :meth:`attach_backbone`; its loss is Eq. 14 on the decoded estimate of Eq. 12
    (:meth:`guidance_estimate`).

    Parameters
    ----------
    voxel_encoder : VoxelEncoder
    text_decoder : MixerDecoder
        ``f_c``; its output is ``L_T × d_T`` of the backbone.
    latent_decoder : LatentDecoder
        ``f_z``.
    feature_decoders : dict of int to MixerDecoder, optional
        ``f_g^l`` per image-encoder layer ``l`` (``Backbone.encode_image_features`` indices).
    subject : str
        Whose voxels this conditioner reads (one of ``voxel_encoder.subjects``).
    latent_mean, latent_std : Tensor ``(c,)``, optional
        Per-channel statistics of the training latents (Eq. 7's ``μ_tr``, ``σ_tr``).
    text_prior : DiffusionPrior, optional
        Eq. 3's prior after ``f_c``: ``ĉ`` is then its sample given ``f_c``'s output.
    """

    input_kind = "voxels"
    callback_tensors = ("text_condition", "init_latents")
    default_strength = 0.75        # Algorithm 1 from ẑ; the official recon.py's strength (37 of 50 steps)

    def __init__(self, voxel_encoder: VoxelEncoder, text_decoder: MixerDecoder, latent_decoder: LatentDecoder,
                 feature_decoders: dict | None = None, subject: str | None = None,
                 latent_mean: torch.Tensor | None = None, latent_std: torch.Tensor | None = None,
                 text_prior: DiffusionPrior | None = None):
        super().__init__()
        self.voxel_encoder, self.text_decoder, self.latent_decoder = voxel_encoder, text_decoder, latent_decoder
        self.text_prior = text_prior
        self.feature_decoders = nn.ModuleDict({str(int(k)): v for k, v in (feature_decoders or {}).items()})
        subject = voxel_encoder.subjects[0] if subject is None else subject
        if subject not in voxel_encoder.subjects:
            raise InvalidInputError(f"subject {subject!r} is not one of the voxel encoder's {voxel_encoder.subjects}.")
        self.subject = subject
        if (latent_mean is None) != (latent_std is None):
            raise InvalidInputError("give both latent_mean and latent_std (Eq. 7), or neither.")
        c = latent_decoder.config.latent_channels
        stats = None if latent_mean is None else torch.stack([torch.as_tensor(latent_mean).float().reshape(-1),
                                                              torch.as_tensor(latent_std).float().reshape(-1)])
        if stats is not None and stats.shape != (2, c):
            raise InvalidInputError(f"latent_mean / latent_std need {c} values (one per latent channel).")
        self.register_buffer("latent_stats", stats if stats is not None else torch.zeros(0, c), persistent=False)
        self._backbone = []                       # attached, never saved: the backbone is not this model's

    # ------------------------------------------------------------------ the interface
    def input_shape(self) -> tuple:
        return (int(self.voxel_encoder.config.subject_voxels[self.subject]),)

    def attach_backbone(self, backbone) -> "NeuralDiffuserModel":
        """Use ``backbone``'s VAE decoder and image encoder for feature guidance (Eq. 14); returns self."""
        if self.feature_decoders and getattr(backbone, "image_encoder", None) is None:
            raise InvalidInputError("this backbone has no image encoder, which primary-visual-feature guidance "
                                    "(Eq. 14) reads: load one with an image_encoder/ folder (e.g. CLIP ViT "
                                    "for SD), or use a NeuralDiffuserModel without feature decoders.")
        self._backbone[:] = [backbone]
        return self

    def encode_scans(self, scans: torch.Tensor, semantic_source: torch.Tensor | None = None) -> dict:
        """``ĉ`` (from ``semantic_source`` when given: the semantic swap), ``ẑ`` and ``ĝ^l`` of a batch."""
        h = self.voxel_encoder(scans, self.subject)
        h_sem = h if semantic_source is None else self.voxel_encoder(semantic_source, self.subject)
        z = self.latent_decoder(h).prediction
        if len(self.latent_stats) and len(z) >= 2:          # Eq. 6-7 need a set of decoded latents
            z = align_first_order(z, self.latent_stats[0], self.latent_stats[1])
        c = self.text_decoder(h_sem).prediction
        if self.text_prior is not None:                      # Eq. 3: ĉ is the prior's sample given f_c's output
            c = self.text_prior.sample(c)
        return {"text_condition": c, "init_latents": z,
                "features": {int(k): d(h).prediction for k, d in self.feature_decoders.items()}}

    def unet_inputs(self, state, latents, timestep, branch, step, control_scale, uncond_context) -> dict:
        return text_context_inputs(state["text_condition"], latents, branch, uncond_context)

    def initial_latents(self, state: dict) -> torch.Tensor:
        return state["init_latents"]

    def guidance_estimate(self, x0: torch.Tensor, latents: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """Eq. 12: ``ẑ_t = √(1−ᾱ_t) ẑ_0 + (1 − √(1−ᾱ_t)) z_t``, what the guidance loss decodes."""
        s = (1 - alpha_bar).sqrt()
        return s * x0 + (1 - s) * latents

    def feature_targets(self, state: dict):
        """Eq. 14's ``Σ_l ‖f_g^l(D(ẑ_t)) − ĝ^l‖²`` per image ``(B,)``, a function of the estimate (``None``
        without targets)."""
        if not state["features"]:
            return None
        if not self._backbone:
            raise InvalidInputError("feature guidance needs the backbone's image encoder and VAE decoder: call "
                                    "model.attach_backbone(backbone) first (or use feature_guidance_scale=0).")
        bb, targets = self._backbone[0], state["features"]
        return lambda estimate: feature_distance(bb, estimate, targets)

    @torch.no_grad()
    def retrieval_embeddings(self, scans: torch.Tensor, images: torch.Tensor) -> tuple:
        """Brain and image embeddings of the deepest guided image-encoder layer ``l``: the projection
        of ``f_g^l`` (trained against the image features by Eq. 1–2) and the flattened hidden states
        of the seen images at ``l`` (``Backbone.encode_image_features``; the backbone attached)."""
        if not self._backbone:
            raise InvalidInputError("attach a backbone first (model.attach_backbone(bb)): the image side of "
                                    "retrieval is its image encoder's features.")
        x = self.prepare_scans(scans, "scans")
        imgs = torch.as_tensor(images).float()
        if len(imgs) != len(x):
            raise InvalidInputError(f"{len(x)} scans but {len(imgs)} images; they must pair up.")
        k, brain = self.brain_embeddings(x)
        bb = self._backbone[0]
        image = bb.encode_image_features(bb.resize(imgs.to(bb.device)), layers=(k,))[k].flatten(1)
        return brain, image.float().cpu()

    @torch.no_grad()
    def brain_embeddings(self, scans: torch.Tensor) -> tuple:
        """``(l, (B, D))``: the deepest feature decoder's layer and its contrastive projection of the
        scans, the brain side of :meth:`retrieval_embeddings`."""
        if not self.feature_decoders:
            raise InvalidInputError("this NeuralDiffuserModel has no feature decoders, whose projections are its "
                                    "retrieval embeddings; train it with feature_layers.")
        k = max(int(k) for k in self.feature_decoders)
        x = self.prepare_scans(scans, "scans").to(next(self.parameters()).device)
        return k, self.feature_decoders[str(k)](self.voxel_encoder(x, self.subject)).projection.float().cpu()

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, save_directory) -> Path:
        """Write ``voxel_encoder/``, ``text_decoder/``, ``latent_decoder/``, ``feature_decoder_<l>/``,
        ``text_prior/`` (when there is one) and ``neuraldiffuser.json`` (subject, layers, latent
        statistics) atomically; return the folder."""
        save_directory = Path(save_directory)
        with atomic_dir(save_directory) as tmp:
            for name in ("voxel_encoder", "text_decoder", "latent_decoder"):
                getattr(self, name).save_pretrained(tmp / name)
            for k, d in self.feature_decoders.items():
                d.save_pretrained(tmp / f"feature_decoder_{k}")
            if self.text_prior is not None:
                self.text_prior.save_pretrained(tmp / "text_prior")
            stats = self.latent_stats.tolist() if len(self.latent_stats) else None
            write_json(tmp / "neuraldiffuser.json", {"subject": self.subject,
                                                     "feature_layers": [int(k) for k in self.feature_decoders],
                                                     "latent_mean": stats[0] if stats else None,
                                                     "latent_std": stats[1] if stats else None})
        return save_directory

    @classmethod
    def from_pretrained(cls, directory, **kwargs) -> "NeuralDiffuserModel":
        """Load a folder written by :meth:`save_pretrained` (``kwargs`` go to each part's loader)."""
        directory = Path(directory)
        need = [directory / "neuraldiffuser.json"] + [directory / n / "config.json"
                                                      for n in ("voxel_encoder", "text_decoder", "latent_decoder")]
        missing = [str(p) for p in need if not p.is_file()]
        if missing:
            raise CheckpointError(f"{directory} is not a NeuralDiffuser model folder; missing: {', '.join(missing)}. "
                                  "Write one with NeuralDiffuserModel.save_pretrained.")
        meta = read_json(directory / "neuraldiffuser.json", "Write the folder again with NeuralDiffuserModel.save_pretrained.")
        feats = {int(k): MixerDecoder.from_pretrained(directory / f"feature_decoder_{k}", **kwargs)
                 for k in meta.get("feature_layers") or []}
        prior = (DiffusionPrior.from_pretrained(directory / "text_prior", **kwargs)
                 if (directory / "text_prior" / "config.json").is_file() else None)
        return cls(VoxelEncoder.from_pretrained(directory / "voxel_encoder", **kwargs),
                   MixerDecoder.from_pretrained(directory / "text_decoder", **kwargs),
                   LatentDecoder.from_pretrained(directory / "latent_decoder", **kwargs), feats, meta["subject"],
                   meta.get("latent_mean"), meta.get("latent_std"), prior)
