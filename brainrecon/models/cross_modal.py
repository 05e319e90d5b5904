"""Contrast, Attend and Diffuse, FRL phase 2: tuning the fMRI MAE with an image MAE through cross-attention.

CAD §3.2 ("Phase 2"): a response ``v`` and its seen image ``u`` are masked and encoded by the phase-1 fMRI
encoder ``E_F`` (:class:`~brainrecon.models.dcmae.DoubleContrastiveMAE`) and a pre-trained image MAE's encoder
``E_I``; each decoder then reads its own tokens plus what they gather from the other modality by
cross-attention (Eqs. 4–6) and rebuilds its own input; ``L = γ_F‖v − v^d‖² + γ_I‖u − u^d‖²`` (Eq. 7, both on
the masked patches, as MAE). The image decoder is frozen (§4.2.1), the image encoder tuned.

The image MAE is a ``transformers`` :class:`~transformers.ViTMAEForPreTraining` in both worlds: the paper's
``facebook/vit-mae-base`` loaded from a local folder on NSD, a small one trained on toy scenes in the toy world.

Eq. 4 writes ``CA_F`` with queries from the image and keys and values from the fMRI tokens, yet adds its output
to ``h_{E_F}`` (Eq. 5), which has the fMRI tokens' length; the only reading under which the sum is defined is
**each modality's tokens querying the other's**: ``CA_F(Q = h_F, K = V = h_I)`` feeds the fMRI decoder and
``CA_I(Q = h_I, K = V = h_F)`` the image decoder (the official code ships this module only as a ``.pyc``).
"""
from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..errors import InvalidInputError, check_finite
from .dcmae import DoubleContrastiveMAE

__all__ = ["CrossModalMAE", "CrossAttention"]


class CrossAttention(nn.Module):
    """Pre-norm multi-head cross-attention, ``queries (B, Lq, d_q)`` attending to ``context (B, Lk, d_k)``
    (CAD Eq. 4: ``softmax(Q Kᵀ / √d_k) V``), output in the queries' width. Its output projection starts at
    zero, so tuning starts from the phase-1 model exactly."""

    def __init__(self, query_dim: int, context_dim: int, num_heads: int = 4):
        super().__init__()
        self.norm_q, self.norm_k = nn.LayerNorm(query_dim), nn.LayerNorm(context_dim)
        self.attn = nn.MultiheadAttention(query_dim, num_heads, kdim=context_dim, vdim=context_dim,
                                          batch_first=True)
        nn.init.zeros_(self.attn.out_proj.weight)
        nn.init.zeros_(self.attn.out_proj.bias)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        k = self.norm_k(context)
        return self.attn(self.norm_q(queries), k, k, need_weights=False)[0]


class CrossModalMAE(ModelMixin, ConfigMixin):
    r"""
    Phase 2's two auto-encoders and their cross-attention modules (CAD Eqs. 4–7).

    Parameters:
        fmri_weight (`float`, defaults to `0.25`):
            ``γ_F`` of Eq. 7 (Tab. 2's best row, ID 14).
        image_weight (`float`, defaults to `1.5`):
            ``γ_I``.
        fmri_mask_ratio (`float`, defaults to `0.75`):
            Tab. 2's best fMRI mask ratio.
        image_mask_ratio (`float`, defaults to `0.5`):
            Tab. 2's best image mask ratio.
        num_heads (`int`, defaults to `4`):
            Heads of each cross-attention module.
        fmri_dim, image_dim (`int`):
            Token widths of the two encoders (set by :meth:`build`).

    The two auto-encoders are submodules handed in (``fmri``, a phase-1 :class:`DoubleContrastiveMAE`;
    ``image``, a ``ViTMAEForPreTraining``); :meth:`build` makes the whole module from them.
    """

    @register_to_config
    def __init__(self, fmri_dim: int = 1024, image_dim: int = 768, num_heads: int = 4, fmri_weight: float = 0.25,
                 image_weight: float = 1.5, fmri_mask_ratio: float = 0.75, image_mask_ratio: float = 0.5):
        super().__init__()
        for name, r in (("fmri_mask_ratio", fmri_mask_ratio), ("image_mask_ratio", image_mask_ratio)):
            if not 0.0 <= r < 1.0:
                raise InvalidInputError(f"{name} must lie in [0, 1); got {r}.")
        if min(fmri_weight, image_weight) < 0 or fmri_weight + image_weight == 0:
            raise InvalidInputError("fmri_weight and image_weight must be >= 0 and not both 0 (Eq. 7).")
        self.cross_fmri = CrossAttention(fmri_dim, image_dim, num_heads)     # CA_F, into the fMRI decoder
        self.cross_image = CrossAttention(image_dim, fmri_dim, num_heads)    # CA_I, into the image decoder
        self.fmri: DoubleContrastiveMAE | None = None
        self.image = None

    @classmethod
    def build(cls, fmri: DoubleContrastiveMAE, image, **kwargs) -> "CrossModalMAE":
        """Phase 2 around a phase-1 fMRI MAE and a pre-trained image MAE (its decoder frozen, §4.2.1)."""
        if not isinstance(fmri, DoubleContrastiveMAE):
            raise InvalidInputError(f"phase 2 tunes a DoubleContrastiveMAE (phase 1's model); got {type(fmri).__name__}.")
        if not (hasattr(image, "vit") and hasattr(image, "decoder") and hasattr(image, "patchify")):
            raise InvalidInputError("the image auto-encoder must be a transformers ViTMAEForPreTraining "
                                    f"(e.g. facebook/vit-mae-base from a local folder); got {type(image).__name__}.")
        m = cls(fmri_dim=int(fmri.config.embed_dim), image_dim=int(image.config.hidden_size), **kwargs)
        m.fmri, m.image = fmri, image
        for p in image.decoder.parameters():
            p.requires_grad_(False)
        for name, p in image.vit.named_parameters():      # MAE's fixed sin-cos table (from_pretrained thaws it)
            if "position_embeddings" in name:
                p.requires_grad_(False)
        return m

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        s, c = int(self.image.config.image_size), int(self.image.config.num_channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != (c, s, s):
            raise InvalidInputError(f"images must be (B, {c}, {s}, {s}), the image MAE's input; got "
                                    f"{tuple(images.shape)}. Resize them first (Backbone.resize).")
        check_finite(images, "images")
        return images.float()

    def loss(self, responses: torch.Tensor, images: torch.Tensor, generator=None) -> tuple:
        """Eq. 7 on one batch of responses and their seen images (``images`` as the image MAE expects them,
        e.g. its processor's normalisation): ``(loss, logs)``."""
        if self.fmri is None or self.image is None:
            raise InvalidInputError("CrossModalMAE has no auto-encoders: make it with CrossModalMAE.build(fmri, image).")
        c = self.config
        v = self.fmri.check_input(responses)
        u = self._check_images(images)
        if len(v) != len(u):
            raise InvalidInputError(f"{len(v)} responses but {len(u)} images: phase 2 pairs each response with "
                                    "the image it was recorded for.")
        h_f, r_f, m_f = self.fmri.encode(self.fmri.augment(v, generator), c.fmri_mask_ratio, generator)
        n = (int(self.image.config.image_size) // int(self.image.config.patch_size)) ** 2
        dev = generator.device if generator is not None else u.device
        noise = torch.rand(len(u), n, generator=generator, device=dev).to(u.device)
        self.image.config.mask_ratio = c.image_mask_ratio          # ViTMAE reads it at each call
        enc = self.image.vit(pixel_values=u, noise=noise)
        h_i = enc.last_hidden_state
        pred_v = self.fmri.decode(h_f, r_f, extra=self.cross_fmri(h_f, h_i))               # Eq. 5
        pred_u = self.image.decoder(h_i + self.cross_image(h_i, h_f), enc.ids_restore).logits   # Eq. 6
        l_f = self.fmri.masked_mse(pred_v, v, m_f)
        target = self.image.patchify(u)
        if getattr(self.image.config, "norm_pix_loss", False):
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        err = ((pred_u - target) ** 2).mean(-1)
        l_i = (err * enc.mask).sum() / enc.mask.sum().clamp_min(1)
        loss = c.fmri_weight * l_f + c.image_weight * l_i                                  # Eq. 7
        return loss, {"fmri_mse": l_f.detach(), "image_mse": l_i.detach()}

    def forward(self, responses: torch.Tensor, images: torch.Tensor, generator=None):
        """:meth:`loss` (the shared loop's module call)."""
        return self.loss(responses, images, generator)
