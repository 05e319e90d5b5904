"""Contrast, Attend and Diffuse, FRL phase 1: the double-contrastive masked auto-encoder (DC-MAE).

An MAE over one subject's fMRI response (CAD §3.2): the response is cut into patches — the paper's 1-D
voxel vector with a stride-``p`` patch embedding (its footnote 1: "a 1-dimensional vector, not a time
series"), the default, or a flatmap cut into ``p × p`` patches (``input_kind="flatmap"``) — a random
``mask_ratio`` of the patches is dropped, the encoder ``E_F`` (the calibrated encoder's transformer
:class:`~brainrecon.models.fmri_encoder.Block`) encodes the rest behind a class token, and the decoder
``D_F`` predicts every patch from mask tokens. Training (:meth:`DoubleContrastiveMAE.loss`) adds to the
masked-patch MSE the paper's two InfoNCE terms over decoded responses:

* **cross-contrast** (Eq. 1): two random maskings of the same response are a positive pair,
  ``L_C = −log e^{d¹_i·d²_i/τ} / (e^{d¹_i·d²_i/τ} + Σ_{j≠i} e^{d¹_i·d¹_j/τ})``;
* **self-contrast** (Eq. 2): a decoded response and its unmasked original,
  ``L_S = −log e^{d_i·v_i/τ} / (e^{d_i·v_i/τ} + Σ_{j≠i} e^{d_i·d_j/τ})``;

``L = w_rec·MSE + γ_C·L_C + γ_S·L_S`` (Eq. 3; the official code keeps the masked-patch MSE beside them).
With ``γ_C = γ_S = 0`` it is a plain MAE, the ablation's baseline. Dot products are cosine similarities
(the official ``info_nce`` normalises both sides) at temperature ``τ`` (0.1 there). The paper's *random
sparsification* — 20 % of the voxels set to zero in each training response — is ``sparsify``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..errors import InvalidInputError, check_finite
from .fmri_encoder import Block, sincos_pos_embed_1d, sincos_pos_embed_2d

__all__ = ["DoubleContrastiveMAE", "info_nce", "DCMAE_INPUT_KINDS"]

#: What the DC-MAE reads: a subject's voxel vector (the paper) or a flatmap.
DCMAE_INPUT_KINDS = ("voxels", "flatmap")


def info_nce(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
             temperature: float) -> torch.Tensor:
    """CAD Eqs. 1–2: InfoNCE of ``query_i`` against ``positive_i`` with ``negatives_j`` (``j ≠ i``) of the batch.

    All three are ``(B, D)``; rows are L2-normalised, so dot products are cosines. Returns the mean loss.
    """
    q, p, n = (F.normalize(t.flatten(1).float(), dim=-1) for t in (query, positive, negatives))
    pos = (q * p).sum(-1, keepdim=True)
    neg = q @ n.T
    eye = torch.eye(len(q), dtype=torch.bool, device=q.device)
    neg = neg.masked_fill(eye, float("-inf"))          # j ≠ i
    logits = torch.cat([pos, neg], dim=1) / float(temperature)
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


class DoubleContrastiveMAE(ModelMixin, ConfigMixin):
    r"""
    CAD's fMRI auto-encoder (FRL phases 1 and 2): a ViT MAE over a voxel vector or a flatmap.

    Parameters:
        num_voxels (`int`, defaults to `4096`):
            Voxels of the subject (``input_kind="voxels"``); padded with zeros to a multiple of `patch_size`.
        input_kind (`str`, defaults to `"voxels"`):
            ``"voxels"`` (1-D patches, the paper) or ``"flatmap"`` (``image_size`` maps, square patches).
        image_size (`int`, defaults to `64`):
            Flatmap side (``input_kind="flatmap"``).
        in_channels (`int`, defaults to `1`):
            Flatmap channels.
        patch_size (`int`, defaults to `16`):
            Voxels per patch (1-D) or the patch side (flatmaps).
        embed_dim, depth, num_heads (`int`, defaults to `1024`, `24`, `16`):
            Encoder ``E_F`` (the paper's sizes).
        decoder_embed_dim, decoder_depth, decoder_num_heads (`int`, defaults to `512`, `8`, `16`):
            Decoder ``D_F``.
        mlp_ratio (`float`, defaults to `1.0`):
            MLP width / block width (the official config's 1.0).
        mask_ratio (`float`, defaults to `0.75`):
            Patches dropped in training.
        sparsify (`float`, defaults to `0.2`):
            Random sparsification: this fraction of voxels zeroed in each training response.
        recon_weight, cross_weight, self_weight (`float`, defaults to `1.0`, `0.5`, `1.0`):
            Eq. 3's weights (``γ_C``, ``γ_S``) beside the masked-patch MSE; 0 and 0 give a plain MAE.
        temperature (`float`, defaults to `0.1`):
            InfoNCE temperature ``τ``.
    """

    @register_to_config
    def __init__(self, num_voxels: int = 4096, input_kind: str = "voxels", image_size: int = 64,
                 in_channels: int = 1, patch_size: int = 16, embed_dim: int = 1024, depth: int = 24,
                 num_heads: int = 16, decoder_embed_dim: int = 512, decoder_depth: int = 8,
                 decoder_num_heads: int = 16, mlp_ratio: float = 1.0, mask_ratio: float = 0.75,
                 sparsify: float = 0.2, recon_weight: float = 1.0, cross_weight: float = 0.5,
                 self_weight: float = 1.0, temperature: float = 0.1):
        super().__init__()
        if input_kind not in DCMAE_INPUT_KINDS:
            raise InvalidInputError(f"input_kind must be one of {DCMAE_INPUT_KINDS}; got {input_kind!r}.")
        if not 0.0 <= mask_ratio < 1.0 or not 0.0 <= sparsify < 1.0:
            raise InvalidInputError(f"mask_ratio and sparsify must lie in [0, 1); got {mask_ratio}, {sparsify}.")
        if min(recon_weight, cross_weight, self_weight) < 0 or temperature <= 0:
            raise InvalidInputError("the loss weights must be >= 0 and the temperature > 0.")
        p = int(patch_size)
        if input_kind == "voxels":
            self.num_patches = math.ceil(int(num_voxels) / p)
            self.patch_dim = p
            pos, dpos = (sincos_pos_embed_1d(d, self.num_patches) for d in (embed_dim, decoder_embed_dim))
        else:
            if image_size % p:
                raise InvalidInputError(f"image_size {image_size} is not a multiple of patch_size={p}.")
            g = image_size // p
            self.num_patches, self.patch_dim = g * g, p * p * in_channels
            pos, dpos = (sincos_pos_embed_2d(d, g, g) for d in (embed_dim, decoder_embed_dim))
        self.patch_embed = nn.Linear(self.patch_dim, embed_dim)      # = a stride-p convolution
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", pos[None], persistent=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", dpos[None], persistent=False)
        self.decoder_blocks = nn.ModuleList(Block(decoder_embed_dim, decoder_num_heads, mlp_ratio)
                                            for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.patch_dim)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    # ------------------------------------------------------------------ shapes
    @property
    def num_tokens(self) -> int:
        """Tokens of :meth:`encode`'s output: the class token and one per patch."""
        return 1 + self.num_patches

    def input_shape(self) -> tuple:
        """One response: ``(num_voxels,)`` or ``(in_channels, image_size, image_size)``."""
        c = self.config
        return (int(c.num_voxels),) if c.input_kind == "voxels" else (int(c.in_channels), int(c.image_size),
                                                                      int(c.image_size))

    def check_input(self, x: torch.Tensor, name: str = "responses") -> torch.Tensor:
        """``x`` as a float batch of :meth:`input_shape`, refused (with the expected shape) otherwise."""
        want = self.input_shape()
        if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want:
            what = f"{want[0]}-voxel response vectors" if len(want) == 1 else "flatmaps"
            raise InvalidInputError(f"{name} must be {what} of shape (B, {', '.join(map(str, want))}); got "
                                    f"{tuple(x.shape)}. Is this the subject the DC-MAE was built for?")
        check_finite(x, name)
        return x.float()

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, V)`` → ``(B, L, p)`` (zero-padded) or ``(B, C, H, W)`` → ``(B, L, p²C)``."""
        p = self.config.patch_size
        if self.config.input_kind == "voxels":
            pad = self.num_patches * p - x.shape[1]
            return F.pad(x, (0, pad)).reshape(len(x), self.num_patches, p)
        b, c, h, w = x.shape
        x = x.reshape(b, c, h // p, p, w // p, p)
        return torch.einsum("bchpwq->bhwpqc", x).reshape(b, self.num_patches, self.patch_dim)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`patchify` (the padding cut off)."""
        c = self.config
        if c.input_kind == "voxels":
            return patches.reshape(len(patches), -1)[:, :c.num_voxels]
        p, g = c.patch_size, c.image_size // c.patch_size
        x = patches.reshape(len(patches), g, g, p, p, c.in_channels)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(len(patches), c.in_channels, g * p, g * p)

    # ------------------------------------------------------------------ encoder / decoder
    def encode(self, x: torch.Tensor, mask_ratio: float = 0.0, generator=None):
        """``E_F``: ``(tokens (B, 1 + kept, D), ids_restore (B, L), mask (B, L))``; ``mask`` is 1 where dropped."""
        t = self.patch_embed(self.patchify(x)) + self.pos_embed.to(x.dtype)
        b, n, d = t.shape
        keep = n if mask_ratio <= 0 else max(1, int(round(n * (1.0 - mask_ratio))))
        dev = generator.device if generator is not None else t.device
        noise = torch.rand(b, n, generator=generator, device=dev).to(t.device)
        shuffle = noise.argsort(dim=1) if keep < n else torch.arange(n, device=t.device).expand(b, n)
        restore = shuffle.argsort(dim=1)
        t = torch.gather(t, 1, shuffle[:, :keep, None].expand(-1, -1, d))
        mask = torch.ones(b, n, device=t.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, restore)
        t = torch.cat([self.cls_token.expand(b, -1, -1).to(t.dtype), t], dim=1)
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t), restore, mask

    def encode_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens of an unmasked response ``(B, 1 + L, D)``: what phase 3 conditions the U-Net on."""
        return self.encode(self.check_input(x), 0.0)[0]

    def decode(self, tokens: torch.Tensor, ids_restore: torch.Tensor, extra: torch.Tensor | None = None):
        """``D_F``: predicted patches ``(B, L, patch_dim)``; ``extra`` ``(B, 1 + kept, D)`` is added to the
        tokens first (phase 2's cross-attention, CAD Eq. 5)."""
        if extra is not None:
            tokens = tokens + extra
        h = self.decoder_embed(tokens)
        b, n = len(h), ids_restore.shape[1]
        fill = self.mask_token.to(h.dtype).expand(b, n + 1 - h.shape[1], -1)
        body = torch.cat([h[:, 1:], fill], dim=1)
        body = torch.gather(body, 1, ids_restore[..., None].expand(-1, -1, h.shape[-1]))
        h = torch.cat([h[:, :1], body], dim=1) + torch.cat(
            [torch.zeros_like(self.decoder_pos_embed[:, :1]), self.decoder_pos_embed], dim=1).to(h.dtype)
        for blk in self.decoder_blocks:
            h = blk(h)
        return self.decoder_pred(self.decoder_norm(h))[:, 1:]

    def masked_mse(self, pred: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE of the predicted patches on the dropped ones (all patches when none was dropped)."""
        err = ((pred - self.patchify(x)) ** 2).mean(-1)
        m = mask if mask.sum() > 0 else torch.ones_like(mask)
        return (err * m).sum() / m.sum()

    def augment(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """Random sparsification (CAD §4.2.1): ``sparsify`` of each response's values set to 0."""
        s = float(self.config.sparsify)
        if s <= 0:
            return x
        dev = generator.device if generator is not None else x.device
        keep = torch.rand(x.shape, generator=generator, device=dev).to(x.device) >= s
        return x * keep

    def loss(self, x: torch.Tensor, generator=None) -> tuple:
        """Phase 1's objective (Eq. 3 beside the masked-patch MSE): ``(loss, logs)``.

        Parameters
        ----------
        x : Tensor
            A batch of :meth:`input_shape` (at least 2 responses when a contrastive weight is > 0).
        generator : torch.Generator, optional
            For the sparsification and both maskings.
        """
        c = self.config
        x = self.check_input(x)
        contrast = c.cross_weight > 0 or c.self_weight > 0
        if contrast and len(x) < 2:
            raise InvalidInputError("the contrastive terms need at least 2 responses per batch (negatives).")
        xa = self.augment(x, generator)
        t1, r1, m1 = self.encode(xa, c.mask_ratio, generator)
        p1 = self.decode(t1, r1)
        rec = self.masked_mse(p1, x, m1)
        logs = {"mse": rec.detach()}
        total = c.recon_weight * rec
        if c.self_weight > 0:                                   # Eq. 2: decoded vs its unmasked original
            ls = info_nce(self.unpatchify(p1), x, self.unpatchify(p1), c.temperature)
            total = total + c.self_weight * ls
            logs["self_contrast"] = ls.detach()
        if c.cross_weight > 0:                                  # Eq. 1: two maskings of the same response
            t2, r2, m2 = self.encode(xa, c.mask_ratio, generator)
            p2 = self.decode(t2, r2)
            lc = info_nce(self.unpatchify(p1), self.unpatchify(p2), self.unpatchify(p1), c.temperature)
            total = total + c.cross_weight * lc
            rec2 = self.masked_mse(p2, x, m2)
            total = total + c.recon_weight * rec2
            logs["cross_contrast"] = lc.detach()
        return total, logs

    def forward(self, x: torch.Tensor, generator=None):
        """:meth:`loss` (so the shared loop's DistributedDataParallel sees every pass)."""
        return self.loss(x, generator)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, mask_ratio: float | None = None, generator=None) -> torch.Tensor:
        """The decoded response of a masked input (default ``config.mask_ratio``), ``x``'s shape."""
        x = self.check_input(x)
        t, r, _ = self.encode(x, self.config.mask_ratio if mask_ratio is None else mask_ratio, generator)
        return self.unpatchify(self.decode(t, r))
