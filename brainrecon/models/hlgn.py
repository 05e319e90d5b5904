"""NeuroPictor's High-Level Guiding Network: fMRI latent → text-condition space (§3.2).

Two branches read the fMRI latent ``S^r`` (``B × L_r × d_r``):

* the **fMRI-to-text encoder** ``E_txt`` (Eq. 2): two 1-D convolutions over the token axis
  (``L_r → hidden_tokens → L_T``, kernel 1) then a projection ``d_r → d_T`` and a LayerNorm, giving
  ``F̃^txt`` (``B × L_T × d_T``), trained towards the caption's text features with the semantic
  loss (Eq. 3);
* the optional **auxiliary encoder** (Eq. 4): the same stack followed by a zero-initialised
  1-D convolution (``L_T → L_T``, kernel 3), so ``F^sem = F̃^txt + F^au`` equals ``F̃^txt`` at
  initialisation.

Layer order and sizes follow the official ``FMRIToSemanticModel`` (reference/peers.md §1.4);
``L_T`` and ``d_T`` always come from the backbone (SD 2.1: 77 × 1024), never from constants.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from ..errors import InvalidInputError

__all__ = ["HighLevelGuidingNetwork", "HighLevelGuidingOutput", "TokenMapper", "semantic_loss",
           "zero_module"]


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (ControlNet's zero convolution) and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def semantic_loss(pred: torch.Tensor, text_features: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """``λ · MSE(F̃^txt, F^txt)``, the semantic loss of NeuroPictor Eq. 3 (weighted as in Eq. 9).

    The mean runs over every element, as in the official code. Eq. 3 as printed sums over the
    ``d_T`` channels of each token before averaging over tokens, i.e. it is ``d_T`` times this value;
    fold that factor into ``lam`` if you want the printed scale.

    Parameters
    ----------
    pred : Tensor ``(B, L_T, d_T)``
        The fMRI-to-text prediction ``F̃^txt`` (not ``F^sem``).
    text_features : Tensor ``(B, L_T, d_T)``
        The frozen text encoder's features of the caption.
    lam : float
        Loss weight ``λ`` (official: 0 in multi-subject pre-training, 0.1 in refining).
    """
    if pred.shape != text_features.shape:
        raise InvalidInputError(f"semantic loss: prediction {tuple(pred.shape)} and text features "
                                f"{tuple(text_features.shape)} differ in shape.")
    return lam * F.mse_loss(pred, text_features.to(pred.dtype))


class TokenMapper(nn.Module):
    """``(B, L_in, d_in) -> (B, L_out, d_out)``: Conv1d over tokens (twice), then Linear over width.

    The token axis is the Conv1d channel axis (kernel 1), as in the official code.
    """

    def __init__(self, in_tokens: int, hidden_tokens: int, out_tokens: int, in_dim: int, out_dim: int):
        super().__init__()
        self.token_conv1 = nn.Conv1d(in_tokens, hidden_tokens, kernel_size=1)
        self.token_conv2 = nn.Conv1d(hidden_tokens, out_tokens, kernel_size=1)
        self.proj = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(self.token_conv2(self.token_conv1(tokens))))


@dataclass
class HighLevelGuidingOutput(BaseOutput):
    """Outputs of :class:`HighLevelGuidingNetwork`.

    Attributes
    ----------
    semantic_condition : Tensor ``(B, L_T, d_T)``
        ``F^sem = F̃^txt + F^au`` (Eq. 4), the cross-attention context of the U-Net.
    text_features : Tensor ``(B, L_T, d_T)``
        ``F̃^txt`` (Eq. 2), what the semantic loss (Eq. 3) compares with the caption's features.
    """

    semantic_condition: torch.Tensor
    text_features: torch.Tensor


class HighLevelGuidingNetwork(ModelMixin, ConfigMixin):
    r"""
    fMRI latent → semantic condition in the backbone's text space (NeuroPictor §3.2, Eq. 2–4).

    Parameters:
        num_tokens (`int`):
            ``L_r``, tokens of the fMRI latent (encoder's ``num_tokens``, guide token included).
        token_dim (`int`):
            ``d_r``, width of the fMRI latent.
        text_length (`int`):
            ``L_T``, tokens of the text condition (``Backbone.text_length``).
        text_embed_dim (`int`):
            ``d_T``, width of the text condition (``Backbone.text_embed_dim``).
        hidden_tokens (`int`, defaults to `128`):
            Tokens between the two 1-D convolutions (official: 257 → 128 → 77).
        use_auxiliary (`bool`, defaults to `False`):
            Build the auxiliary encoder (Eq. 4). Official: off in multi-subject pre-training, on
            in single-subject refining; see :meth:`add_auxiliary`.
    """

    @register_to_config
    def __init__(self, num_tokens: int, token_dim: int, text_length: int, text_embed_dim: int,
                 hidden_tokens: int = 128, use_auxiliary: bool = False):
        super().__init__()
        for name, v in (("num_tokens", num_tokens), ("token_dim", token_dim), ("text_length", text_length),
                        ("text_embed_dim", text_embed_dim), ("hidden_tokens", hidden_tokens)):
            if int(v) < 1:
                raise InvalidInputError(f"HighLevelGuidingNetwork: {name} must be >= 1; got {v}.")
        self.text_encoder = self._mapper()
        if use_auxiliary:
            self._build_auxiliary()

    def _mapper(self) -> TokenMapper:
        c = self.config
        return TokenMapper(c.num_tokens, c.hidden_tokens, c.text_length, c.token_dim, c.text_embed_dim)

    def _build_auxiliary(self):
        L_T = self.config.text_length
        self.auxiliary_encoder = self._mapper()
        self.auxiliary_out = zero_module(nn.Conv1d(L_T, L_T, kernel_size=3, padding=1))

    def add_auxiliary(self) -> "HighLevelGuidingNetwork":
        """Add a freshly initialised auxiliary encoder (pre-training → refining hand-off).

        The new branch adds exactly zero until it is trained; ``use_auxiliary`` becomes True in the
        config so that ``save_pretrained``/``from_pretrained`` keep it.
        """
        if not self.config.use_auxiliary:
            p = next(self.parameters())
            self._build_auxiliary()
            for m in (self.auxiliary_encoder, self.auxiliary_out):
                m.to(device=p.device, dtype=p.dtype)  # plain nn.Modules: no ModelMixin dtype warning
            self.register_to_config(use_auxiliary=True)
        return self

    def forward(self, fmri_tokens: torch.Tensor, return_dict: bool = True):
        """Map ``S^r`` to the semantic condition (Eq. 2 and 4).

        Parameters
        ----------
        fmri_tokens : Tensor ``(B, L_r, d_r)``
            The calibrated encoder's output.
        return_dict : bool
            Return a :class:`HighLevelGuidingOutput` (default) instead of the tuple
            ``(semantic_condition, text_features)``.
        """
        c = self.config
        if fmri_tokens.ndim != 3 or tuple(fmri_tokens.shape[1:]) != (c.num_tokens, c.token_dim):
            raise InvalidInputError(
                f"HighLevelGuidingNetwork expects fMRI tokens (B, {c.num_tokens}, {c.token_dim}) "
                f"(its num_tokens, token_dim); got {tuple(fmri_tokens.shape)}.")
        text = self.text_encoder(fmri_tokens)                                   # Eq. 2
        sem = text
        if c.use_auxiliary:
            sem = text + self.auxiliary_out(self.auxiliary_encoder(fmri_tokens))  # Eq. 4
        if not return_dict:
            return sem, text
        return HighLevelGuidingOutput(semantic_condition=sem, text_features=text)

    @staticmethod
    def semantic_loss(pred: torch.Tensor, text_features: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
        """See :func:`semantic_loss` (NeuroPictor Eq. 3)."""
        return semantic_loss(pred, text_features, lam)
