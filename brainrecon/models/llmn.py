"""NeuroPictor's Low-Level Manipulation Network (§3.3, Eq. 5–7).

* **Feature transformation** ``E_ft`` (Eq. 5): two 1-D convolutions over the token axis
  (``L_r → 2·L_r → C``, "channel-wise"), a Linear ``d_r → h·w`` with SiLU ("dimension-wise"), a
  zero-initialised 1-D convolution (``C → C``, kernel 3) and a reshape to ``F_0^l`` of shape
  ``(B, C, h, w)`` — ``C`` is the U-Net's first block width and ``h × w`` its latent size, exactly the
  output of the U-Net's ``conv_in`` (official ``FMRIToControlModel``, reference/peers.md §1.5).
* **Manipulator** ``E_U`` (Eq. 6): a trainable copy of the U-Net encoder, built with diffusers'
  :class:`~diffusers.ControlNetModel` (``from_unet``). Its image conditioning embedding is replaced
  by the identity, so ``F_0^l`` is added right after ``conv_in`` (as in the official code); the
  copy still sees the noisy latent, the timestep and the semantic condition.
* **Zero convolutions and control scale** (Eq. 7): ControlNet's zero-initialised 1×1 convs turn the
  copy's down-block outputs and mid-block output (13 maps for SD 2.1) into residuals, multiplied by
  ``α = control_scale``; the frozen U-Net adds them to its skip connections and mid block.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..errors import InvalidInputError
from .hlgn import zero_module

__all__ = ["FeatureTransformation", "LowLevelManipulationNetwork", "match_device_dtype"]


class FeatureTransformation(nn.Module):
    """``S^r (B, L_r, d_r) -> F_0^l (B, C, h, w)`` (NeuroPictor Eq. 5); zero at initialisation."""

    def __init__(self, num_tokens: int, token_dim: int, channels: int, latent_size: tuple[int, int],
                 hidden_tokens: int):
        super().__init__()
        self.latent_size = tuple(latent_size)
        self.token_conv1 = nn.Conv1d(num_tokens, hidden_tokens, kernel_size=1)
        self.token_conv2 = nn.Conv1d(hidden_tokens, channels, kernel_size=1)
        self.proj = nn.Linear(token_dim, self.latent_size[0] * self.latent_size[1])
        self.zero_conv = zero_module(nn.Conv1d(channels, channels, kernel_size=3, padding=1))

    def forward(self, fmri_tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_conv2(self.token_conv1(fmri_tokens))      # channel-wise: (B, C, d_r)
        x = F.silu(self.proj(x))                                   # dimension-wise: (B, C, h·w)
        x = self.zero_conv(x)
        return x.reshape(x.shape[0], x.shape[1], *self.latent_size)


def match_device_dtype(module: nn.Module, like: nn.Module) -> nn.Module:
    """Move ``module`` to ``like``'s device and (only if it differs) dtype."""
    p = next(like.parameters())
    module.to(p.device)
    if next(module.parameters()).dtype != p.dtype:
        module.to(p.dtype)
    return module


def _plain_config(config) -> dict:
    """A JSON-friendly copy of a diffusers config (private ``_`` keys dropped)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items()
            if not k.startswith("_")}


class LowLevelManipulationNetwork(ModelMixin, ConfigMixin):
    r"""
    Feature transformation + trainable U-Net-encoder copy with zero convs (NeuroPictor Eq. 5–7).

    Build it from the frozen U-Net with :meth:`from_unet`; the constructor takes the copy's
    ControlNet config so that ``save_pretrained``/``from_pretrained`` round-trip without the U-Net.

    Parameters:
        controlnet_config (`dict`):
            Config of the :class:`~diffusers.ControlNetModel` copy (as made by ``from_unet``).
        num_tokens (`int`):
            ``L_r``, tokens of the fMRI latent.
        token_dim (`int`):
            ``d_r``, width of the fMRI latent.
        latent_size (`int` or `tuple[int, int]`):
            ``h, w``: the U-Net's latent side(s) (``unet.config.sample_size``).
        hidden_tokens (`int`, *optional*):
            Channels between the two token convolutions; default ``2·num_tokens`` (official 257 → 514).
    """

    @register_to_config
    def __init__(self, controlnet_config: dict, num_tokens: int, token_dim: int, latent_size,
                 hidden_tokens: int | None = None):
        super().__init__()
        cfg = dict(controlnet_config)
        # The image-space conditioning embedding is replaced below; keep the throw-away one tiny.
        cfg["conditioning_embedding_out_channels"] = [8]
        cfg["conditioning_channels"] = 1
        self.controlnet = ControlNetModel.from_config(cfg)
        self.controlnet.controlnet_cond_embedding = nn.Identity()
        hw = (latent_size, latent_size) if isinstance(latent_size, int) else tuple(latent_size)
        self.feature_transform = FeatureTransformation(
            num_tokens, token_dim, channels=int(cfg["block_out_channels"][0]), latent_size=hw,
            hidden_tokens=hidden_tokens or 2 * num_tokens)

    @classmethod
    def from_unet(cls, unet, num_tokens: int, token_dim: int, hidden_tokens: int | None = None,
                  load_weights_from_unet: bool = True) -> "LowLevelManipulationNetwork":
        """Copy the U-Net's encoder (config and, by default, weights) into a new LLMN.

        Parameters
        ----------
        unet : diffusers.UNet2DConditionModel
            The frozen denoiser (``Backbone.unet``).
        num_tokens, token_dim : int
            ``L_r``, ``d_r`` of the fMRI latent (``CalibratedEncoder.num_tokens``, ``embed_dim``).
        hidden_tokens : int, optional
            See the class docstring.
        load_weights_from_unet : bool
            Initialise the copy with the U-Net's weights (the paper's setting).
        """
        with torch.device("meta"):  # only its config is needed here: allocate nothing
            copy = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8,),
                                             conditioning_channels=1, load_weights_from_unet=False)
        size = unet.config.sample_size
        latent = [int(size), int(size)] if isinstance(size, int) else [int(s) for s in size]
        model = cls(controlnet_config=_plain_config(copy.config), num_tokens=num_tokens,
                    token_dim=token_dim, latent_size=latent, hidden_tokens=hidden_tokens)
        if load_weights_from_unet:
            cn = model.controlnet
            for name in ("conv_in", "time_proj", "time_embedding", "down_blocks", "mid_block"):
                getattr(cn, name).load_state_dict(getattr(unet, name).state_dict())
            if cn.class_embedding is not None:
                cn.class_embedding.load_state_dict(unet.class_embedding.state_dict())
            if getattr(cn, "add_embedding", None) is not None:
                cn.add_embedding.load_state_dict(unet.add_embedding.state_dict())
        return match_device_dtype(model, unet)

    @property
    def num_residuals(self) -> int:
        """Residual maps produced (down blocks + mid block; 13 for SD 2.1)."""
        return len(self.controlnet.controlnet_down_blocks) + 1

    def feature_map(self, fmri_tokens: torch.Tensor) -> torch.Tensor:
        """``F_0^l = E_ft(S^r)`` (Eq. 5), ``(B, C, h, w)``."""
        c = self.config
        if fmri_tokens.ndim != 3 or tuple(fmri_tokens.shape[1:]) != (c.num_tokens, c.token_dim):
            raise InvalidInputError(
                f"LowLevelManipulationNetwork expects fMRI tokens (B, {c.num_tokens}, {c.token_dim}) "
                f"(its num_tokens, token_dim); got {tuple(fmri_tokens.shape)}.")
        return self.feature_transform(fmri_tokens)

    def forward(self, noisy_latents: torch.Tensor, timesteps, encoder_hidden_states: torch.Tensor,
                fmri_tokens: torch.Tensor, control_scale: float = 1.0, **controlnet_kwargs):
        """Residuals ``α · Z(E_U(F_0^l))`` for the frozen U-Net (Eq. 6–7).

        Parameters
        ----------
        noisy_latents : Tensor ``(B, c, h, w)``
            ``z_t``.
        timesteps : Tensor or int
            Diffusion timesteps.
        encoder_hidden_states : Tensor ``(B, L_T, d_T)``
            The semantic condition ``F^sem`` (the copy's cross-attention context).
        fmri_tokens : Tensor ``(B, L_r, d_r)``
            ``S^r``, the calibrated encoder's output.
        control_scale : float
            ``α`` of Eq. 7, multiplying every residual (diffusers' ``conditioning_scale``).
        **controlnet_kwargs
            Passed on to :class:`~diffusers.ControlNetModel` (e.g. ``cross_attention_kwargs``).

        Returns
        -------
        down_residuals : list of Tensor
            ``num_residuals - 1`` maps for the U-Net's ``down_block_additional_residuals``.
        mid_residual : Tensor
            For ``mid_block_additional_residual``.
        """
        feats = self.feature_map(fmri_tokens).to(noisy_latents.dtype)
        if feats.shape[-2:] != noisy_latents.shape[-2:]:
            raise InvalidInputError(f"noisy latents {tuple(noisy_latents.shape)} do not match the LLMN's "
                                    f"latent size {tuple(feats.shape[-2:])} (unet.config.sample_size).")
        down, mid = self.controlnet(noisy_latents, timesteps, encoder_hidden_states=encoder_hidden_states,
                                    controlnet_cond=feats, conditioning_scale=control_scale,
                                    return_dict=False, **controlnet_kwargs)
        return list(down), mid
