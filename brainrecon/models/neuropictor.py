"""NeuroPictor as one module: calibrated encoder + HLGN + LLMN around a frozen U-Net (§3).

:class:`NeuroPictorModel` holds the three trainable parts and offers the few calls that the
training stages and the pipeline need:

* :meth:`~NeuroPictorModel.encode` — ``S^r = E(S)`` (Eq. 1);
* :meth:`~NeuroPictorModel.semantic_condition` — ``F^sem`` (Eq. 2–4);
* :meth:`~NeuroPictorModel.control_residuals` — ``α·Z(E_U(E_ft(S^r)))`` (Eq. 5–7);
* :meth:`~NeuroPictorModel.predict_noise` — ``ε_θ(z_t, t, S^r, F^sem)`` of Eq. 8 with the frozen U-Net.

It is also the pipeline's first *conditioner* (:class:`~brainrecon.models.conditioner.BrainConditioner`):
flatmaps in, ``S^r`` and ``F^sem`` encoded once per call (:meth:`~NeuroPictorModel.encode_scans`), and at
every step ``F^sem`` as the U-Net's cross-attention context plus the LLMN residuals × α
(:meth:`~NeuroPictorModel.unet_inputs`, Eq. 7–8).

Every call takes an optional ``semantic_condition``: pass the empty caption's text embedding for
the unconditional branch of classifier-free guidance, or another scan's ``F^sem`` for the
**semantic swap** (high-level features of one scan, low-level features of another; as in the
official ``exchange`` hook, both the U-Net and its trainable copy then see the swapped context).
The U-Net is never stored here: it belongs to the backbone and stays frozen.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from ..errors import CheckpointError, InvalidInputError
from ..io import atomic_dir
from .conditioner import BrainConditioner
from .fmri_encoder import CalibratedEncoder
from .hlgn import HighLevelGuidingNetwork, semantic_loss
from .llmn import LowLevelManipulationNetwork, match_device_dtype

__all__ = ["NeuroPictorModel", "NeuroPictorOutput"]

PARTS = ("encoder", "hlgn", "llmn")


@dataclass
class NeuroPictorOutput(BaseOutput):
    """What one NeuroPictor denoising pass produced (for the losses of Eq. 8–9).

    Attributes
    ----------
    noise_pred : Tensor ``(B, c, h, w)``
        ``ε_θ``, the frozen U-Net's prediction with the LLMN residuals.
    semantic_condition : Tensor ``(B, L_T, d_T)``
        The cross-attention context used (``F^sem`` or the one passed in).
    text_features : Tensor ``(B, L_T, d_T)`` or None
        ``F̃^txt`` for the semantic loss; None when a semantic condition was passed in.
    fmri_tokens : Tensor ``(B, L_r, d_r)``
        ``S^r``.
    """

    noise_pred: torch.Tensor
    semantic_condition: torch.Tensor
    text_features: torch.Tensor | None
    fmri_tokens: torch.Tensor


class NeuroPictorModel(BrainConditioner, ModelMixin):
    """Calibrated encoder, High-Level Guiding Network and Low-Level Manipulation Network.

    Parameters
    ----------
    encoder : CalibratedEncoder
        Stage-i encoder (its decoder may be dropped).
    hlgn : HighLevelGuidingNetwork
    llmn : LowLevelManipulationNetwork

    Build a fresh one around a backbone with :meth:`from_backbone`; save and load with
    :meth:`save_pretrained` / :meth:`from_pretrained` (one diffusers sub-folder per part). Like
    diffusers' ``MultiControlNetModel`` it is a ``ModelMixin`` (``.device``, ``.dtype``,
    ``num_parameters()``) whose configs live in its parts, each a ``ModelMixin``/``ConfigMixin``.
    """

    def __init__(self, encoder: CalibratedEncoder, hlgn: HighLevelGuidingNetwork,
                 llmn: LowLevelManipulationNetwork):
        super().__init__()
        e, h, l = encoder.config, hlgn.config, llmn.config
        for part, cfg in (("hlgn", h), ("llmn", l)):
            if (cfg.num_tokens, cfg.token_dim) != (encoder.num_tokens, e.embed_dim):
                raise InvalidInputError(
                    f"{part} reads fMRI tokens ({cfg.num_tokens}, {cfg.token_dim}) but the encoder "
                    f"gives ({encoder.num_tokens}, {e.embed_dim}); rebuild {part} for this encoder.")
        cross = l.controlnet_config.get("cross_attention_dim")
        if cross is not None and int(cross) != h.text_embed_dim:
            raise InvalidInputError(f"HLGN text_embed_dim={h.text_embed_dim} differs from the U-Net's "
                                    f"cross_attention_dim={cross}.")
        self.encoder, self.hlgn, self.llmn = encoder, hlgn, llmn

    # ------------------------------------------------------------------ the conditioner interface
    input_kind = "flatmap"
    callback_tensors = ("semantic_condition", "fmri_tokens")

    def input_shape(self) -> tuple:
        """``(C, H, W)`` of the flatmaps the calibrated encoder reads."""
        return (int(self.encoder.config.in_channels), *(int(s) for s in self.encoder.image_hw))

    def encode_scans(self, scans: torch.Tensor, semantic_source: torch.Tensor | None = None) -> dict:
        """``S^r = E(S)`` (Eq. 1) of the scans and ``F^sem`` (Eq. 2–4) of ``semantic_source`` or of them.

        With ``semantic_source`` (the **semantic swap**) the high-level features come from those scans
        and the low-level ones (``S^r`` for the LLMN) from ``scans``, as the official ``exchange`` hook.
        """
        dtype = next(self.encoder.parameters()).dtype
        tokens = self.encode(scans.to(dtype))
        sem_tokens = tokens if semantic_source is None else self.encode(semantic_source.to(dtype))
        return {"fmri_tokens": tokens, "semantic_condition": self.semantic_condition(fmri_tokens=sem_tokens)}

    def unet_inputs(self, state: dict, latents: torch.Tensor, timestep, branch: str, step: int,
                    control_scale: float, uncond_context: torch.Tensor) -> dict:
        """``F^sem`` as context and the LLMN residuals × α (Eq. 7–8) for one step.

        Classifier-free guidance replaces ``F^sem`` with the empty caption in the unconditional branch and
        keeps the fMRI control in both (official ``reconstruction.py``: ``uc_cat = c_cat``).
        """
        tok, sem = state["fmri_tokens"], state["semantic_condition"].to(latents.dtype)
        if branch == "both":
            tok, sem = torch.cat([tok, tok]), torch.cat([uncond_context.to(latents.dtype), sem])
        elif branch == "uncond":
            sem = uncond_context.to(latents.dtype)
        if control_scale == 0:  # Eq. 7 with α = 0: the copy need not run at all
            down = mid = None
        else:
            down, mid = self.llmn(latents, timestep, sem, tok, control_scale=control_scale)
        return {"encoder_hidden_states": sem, "down_block_additional_residuals": down,
                "mid_block_additional_residual": mid}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(cls, backbone, encoder: CalibratedEncoder, *, use_auxiliary: bool = False,
                      hlgn_hidden_tokens: int = 128, llmn_hidden_tokens: int | None = None,
                      load_weights_from_unet: bool = True) -> "NeuroPictorModel":
        """Fresh HLGN and LLMN for ``encoder`` and a backbone (stage ii's starting point).

        Parameters
        ----------
        backbone : Backbone
            Anything with ``unet``, ``text_length`` and ``text_embed_dim`` (``L_T``, ``d_T``).
        encoder : CalibratedEncoder
            The stage-i encoder; it is used as is (call ``drop_decoder`` first to save memory).
        use_auxiliary : bool
            Build HLGN's auxiliary encoder now (official: only for single-subject refining).
        hlgn_hidden_tokens, llmn_hidden_tokens : int
            Widths between the token convolutions (official 128 and ``2·L_r``).
        load_weights_from_unet : bool
            Initialise the LLMN's encoder copy from the U-Net (the paper's setting).
        """
        unet = backbone.unet
        L_T, d_T = int(backbone.text_length), int(backbone.text_embed_dim)
        cross = unet.config.cross_attention_dim
        if int(cross) != d_T:
            raise InvalidInputError(f"The backbone's text features are {d_T} wide but its U-Net's "
                                    f"cross_attention_dim is {cross}; they must agree.")
        L_r, d_r = encoder.num_tokens, encoder.config.embed_dim
        hlgn = HighLevelGuidingNetwork(L_r, d_r, L_T, d_T, hidden_tokens=hlgn_hidden_tokens,
                                       use_auxiliary=use_auxiliary)
        llmn = LowLevelManipulationNetwork.from_unet(unet, L_r, d_r, hidden_tokens=llmn_hidden_tokens,
                                                     load_weights_from_unet=load_weights_from_unet)
        return cls(match_device_dtype(encoder, unet), match_device_dtype(hlgn, unet), llmn)

    def save_pretrained(self, save_directory) -> Path:
        """Write ``encoder/``, ``hlgn/``, ``llmn/`` (diffusers folders) atomically; return the folder."""
        save_directory = Path(save_directory)
        with atomic_dir(save_directory) as tmp:
            for name in PARTS:
                getattr(self, name).save_pretrained(tmp / name)
        return save_directory

    @classmethod
    def from_pretrained(cls, directory, **kwargs) -> "NeuroPictorModel":
        """Load a folder written by :meth:`save_pretrained` (``kwargs`` go to each part's loader)."""
        directory = Path(directory)
        missing = [directory / n / "config.json" for n in PARTS
                   if not (directory / n / "config.json").is_file()]
        if missing:
            raise CheckpointError(
                f"{directory} is not a NeuroPictor model folder; missing: "
                + ", ".join(str(m) for m in missing)
                + ". Expected sub-folders encoder/, hlgn/, llmn/ from NeuroPictorModel.save_pretrained.")
        return cls(CalibratedEncoder.from_pretrained(directory / "encoder", **kwargs),
                   HighLevelGuidingNetwork.from_pretrained(directory / "hlgn", **kwargs),
                   LowLevelManipulationNetwork.from_pretrained(directory / "llmn", **kwargs))

    # ------------------------------------------------------------------ the calls
    def encode(self, maps: torch.Tensor) -> torch.Tensor:
        """``S^r = E(S)`` (Eq. 1): ``(B, L_r, d_r)`` from flatmaps ``(B, 1, H, W)``."""
        return self.encoder.encode(maps)

    def _tokens(self, maps, fmri_tokens):
        if fmri_tokens is not None:
            return fmri_tokens
        if maps is None:
            raise InvalidInputError("Pass flatmaps (maps=...) or precomputed fMRI tokens (fmri_tokens=...).")
        return self.encode(maps)

    def semantic_condition(self, maps: torch.Tensor | None = None, fmri_tokens: torch.Tensor | None = None,
                           return_text_features: bool = False):
        """``F^sem`` (Eq. 4), ``(B, L_T, d_T)``; with ``return_text_features`` also ``F̃^txt`` (Eq. 2)."""
        sem, text = self.hlgn(self._tokens(maps, fmri_tokens), return_dict=False)
        return (sem, text) if return_text_features else sem

    def control_residuals(self, noisy_latents: torch.Tensor, timesteps, maps: torch.Tensor | None = None,
                          control_scale: float = 1.0, semantic_condition: torch.Tensor | None = None,
                          fmri_tokens: torch.Tensor | None = None):
        """LLMN residuals ``(down_residuals, mid_residual)`` scaled by ``α`` (Eq. 5–7).

        ``semantic_condition`` (the copy's cross-attention context) defaults to this scan's ``F^sem``.
        """
        tokens = self._tokens(maps, fmri_tokens)
        if semantic_condition is None:
            semantic_condition = self.semantic_condition(fmri_tokens=tokens)
        return self.llmn(noisy_latents, timesteps, semantic_condition, tokens, control_scale=control_scale)

    def predict_noise(self, unet, noisy_latents: torch.Tensor, timesteps, maps: torch.Tensor | None = None,
                      control_scale: float = 1.0, semantic_condition: torch.Tensor | None = None,
                      fmri_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """``ε_θ(z_t, t, S^r, F^sem)`` (Eq. 8): the frozen U-Net with the LLMN residuals added (Eq. 7).

        Parameters
        ----------
        unet : diffusers.UNet2DConditionModel
            The frozen denoiser (``Backbone.unet``).
        noisy_latents, timesteps
            ``z_t`` and ``t``.
        maps : Tensor ``(B, 1, H, W)``, optional
            Flatmaps; or give ``fmri_tokens`` (``S^r``, e.g. computed once before a sampling loop).
        control_scale : float
            ``α`` of Eq. 7 (0 gives the U-Net conditioned on semantics only).
        semantic_condition : Tensor ``(B, L_T, d_T)``, optional
            Replaces ``F^sem``: the empty-caption embedding (CFG) or another scan's (swap).
        """
        return self(unet, noisy_latents, timesteps, maps, control_scale=control_scale,
                    semantic_condition=semantic_condition, fmri_tokens=fmri_tokens).noise_pred

    def forward(self, unet, noisy_latents: torch.Tensor, timesteps, maps: torch.Tensor | None = None,
                control_scale: float = 1.0, semantic_condition: torch.Tensor | None = None,
                fmri_tokens: torch.Tensor | None = None) -> NeuroPictorOutput:
        """One denoising pass; arguments as :meth:`predict_noise`. Returns :class:`NeuroPictorOutput`."""
        tokens = self._tokens(maps, fmri_tokens)
        text = None
        if semantic_condition is None:
            semantic_condition, text = self.semantic_condition(fmri_tokens=tokens, return_text_features=True)
        semantic_condition = semantic_condition.to(noisy_latents.dtype)
        if control_scale == 0:  # Eq. 7 with α = 0: the copy need not run at all
            down = mid = None
        else:
            down, mid = self.llmn(noisy_latents, timesteps, semantic_condition, tokens,
                                  control_scale=control_scale)
        pred = unet(noisy_latents, timesteps, encoder_hidden_states=semantic_condition,
                    down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        return NeuroPictorOutput(noise_pred=pred, semantic_condition=semantic_condition,
                                 text_features=text, fmri_tokens=tokens)

    semantic_loss = staticmethod(semantic_loss)
