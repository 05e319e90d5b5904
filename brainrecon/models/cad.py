"""Contrast, Attend and Diffuse, phase 3: the FRL's fMRI encoder conditions the LDM (CAD §3.3, §4.2.2).

:class:`CADModel` is the method's *conditioner* (:class:`~brainrecon.models.conditioner.BrainConditioner`):
a subject's voxel vector ``v`` is encoded by the FRL encoder ``E_F`` (phase 2's
:class:`~brainrecon.models.dcmae.DoubleContrastiveMAE`, no mask) into tokens, and the tokens condition the
U-Net twice (§3.3, "double conditioning"):

* **cross-attention** — a token mapper (the official ``cond_stage_model``: Conv1d over the token axis
  ``L_r → L_r/2 → L_T``, then Linear to the U-Net's context width) gives the context ``E_F(v)`` of Eq. 9;
* **the time embedding** — the mean token, projected to the time-embedding width, is added to it
  (passed as ``class_labels`` to a U-Net whose ``class_embed_type`` is ``"identity"``).

§4.2.2 tunes the LDM's cross-attention heads together with the encoder, the rest of the LDM frozen. The
tuned heads live here, in :class:`CADConditionHead` (``attn2`` of every transformer block), never in the
shared backbone: :meth:`CADModel.adapt_unet` returns a U-Net that shares every other weight with the
backbone's and uses these heads, so one loaded backbone serves every method at once.

The official code has no classifier-free guidance (peers.md §2.2): the shipped toy model samples at
guidance 1; trained with ``cond_drop > 0`` the empty caption and a zero time term form the unconditional
branch, so guidance > 1 is available too.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..errors import CheckpointError, InvalidInputError
from ..io import atomic_dir, read_json, write_json
from .conditioner import BrainConditioner
from .dcmae import DoubleContrastiveMAE
from .hlgn import TokenMapper

__all__ = ["CADModel", "CADConditionHead", "cross_attention_parameters"]

_FIX = "Retrain it with brainrecon train cad, or copy the folder again from where it came from."


def cross_attention_parameters(unet) -> dict:
    """``{name: parameter}`` of every cross-attention module (``attn2``) of a diffusers U-Net: what §4.2.2
    tunes."""
    return {n: p for n, p in unet.named_parameters() if ".attn2." in n}


def _key(name: str) -> str:
    return name.replace(".", "__")           # ParameterDict keys may not hold dots


class CADConditionHead(ModelMixin, ConfigMixin):
    r"""
    What phase 3 adds to the FRL encoder: the token mapper, the time-embedding projection and the tuned
    cross-attention heads of the U-Net.

    Parameters:
        num_tokens (`int`): ``L_r``, tokens of the FRL encoder (class token + patches).
        token_dim (`int`): ``d_r``, their width.
        text_length (`int`): ``L_T``, the U-Net's context length (SD 2.1: 77).
        context_dim (`int`): ``d_T``, its ``cross_attention_dim`` (SD 2.1: 1024).
        time_embed_dim (`int`): width of the U-Net's time embedding.
        attn2_shapes (`dict`): ``{parameter name: shape}`` of the U-Net's ``attn2`` parameters.
    """

    @register_to_config
    def __init__(self, num_tokens: int, token_dim: int, text_length: int, context_dim: int, time_embed_dim: int,
                 attn2_shapes: dict | None = None):
        super().__init__()
        self.mapper = TokenMapper(num_tokens, max(1, num_tokens // 2), text_length, token_dim, context_dim)
        self.time_proj = nn.Linear(token_dim, time_embed_dim)
        nn.init.zeros_(self.time_proj.weight)              # starts as the pre-trained U-Net's time embedding
        nn.init.zeros_(self.time_proj.bias)
        self.attn2 = nn.ParameterDict({_key(n): nn.Parameter(torch.zeros(tuple(s)))
                                       for n, s in (attn2_shapes or {}).items()})


class CADModel(BrainConditioner, ModelMixin):
    """CAD for one subject: FRL encoder + phase-3 head, for the shared pipeline (voxels in).

    Parameters
    ----------
    fmri : DoubleContrastiveMAE
        The FRL encoder ``E_F`` (phase 2's; its decoder is kept, unused at sampling).
    head : CADConditionHead
    subject : str
        Whose voxels ``fmri`` reads.

    Build one around a backbone with :meth:`from_backbone`; save and load with :meth:`save_pretrained` /
    :meth:`from_pretrained` (sub-folders ``fmri/``, ``head/`` and ``cad.json``).
    """

    input_kind = "voxels"
    callback_tensors = ("context", "time_term")

    def __init__(self, fmri: DoubleContrastiveMAE, head: CADConditionHead, subject: str = "subj01"):
        super().__init__()
        if not isinstance(fmri, DoubleContrastiveMAE):
            raise InvalidInputError(f"CAD conditions on an FRL encoder (DoubleContrastiveMAE); got {type(fmri).__name__}.")
        h = head.config
        if (int(h.num_tokens), int(h.token_dim)) != (fmri.num_tokens, int(fmri.config.embed_dim)):
            raise InvalidInputError(f"the head reads tokens ({h.num_tokens}, {h.token_dim}) but the FRL encoder gives "
                                    f"({fmri.num_tokens}, {fmri.config.embed_dim}); rebuild it with "
                                    "CADModel.from_backbone.")
        self.fmri, self.head, self.subject = fmri, head, str(subject)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(cls, backbone, fmri: DoubleContrastiveMAE, subject: str = "subj01") -> "CADModel":
        """A fresh phase-3 head for ``fmri`` and a backbone; its cross-attention heads start as the
        backbone U-Net's (§4.2.2 tunes them from the pre-trained LDM)."""
        unet = backbone.unet
        if int(unet.config.cross_attention_dim) != int(backbone.text_embed_dim):
            raise InvalidInputError(f"the backbone's text features are {backbone.text_embed_dim} wide but its U-Net's "
                                    f"cross_attention_dim is {unet.config.cross_attention_dim}.")
        attn2 = cross_attention_parameters(unet)
        if not attn2:
            raise InvalidInputError("the backbone's U-Net has no cross-attention (attn2) layers for CAD to condition.")
        head = CADConditionHead(num_tokens=fmri.num_tokens, token_dim=int(fmri.config.embed_dim),
                                text_length=int(backbone.text_length), context_dim=int(backbone.text_embed_dim),
                                time_embed_dim=int(unet.time_embedding.linear_2.out_features),
                                attn2_shapes={n: list(p.shape) for n, p in attn2.items()})
        with torch.no_grad():
            for n, p in attn2.items():
                head.attn2[_key(n)].copy_(p.float())
        return cls(fmri, head, subject)

    def check_backbone(self, unet) -> None:
        """Refuse a U-Net whose cross-attention layers are not the ones the head was tuned for."""
        have = {n: list(p.shape) for n, p in cross_attention_parameters(unet).items()}
        want = {n: list(s) for n, s in self.head.config.attn2_shapes.items()}
        if have != want or int(unet.config.cross_attention_dim) != int(self.head.config.context_dim):
            raise InvalidInputError("this CAD model was tuned on another U-Net (its cross-attention layers differ "
                                    "from the backbone's); load it with the backbone it was trained on.")

    def adapt_unet(self, unet):
        """The U-Net CAD samples with: ``unet`` with this model's cross-attention heads and an identity class
        embedding (the time-embedding term), every other weight shared with ``unet`` (not copied)."""
        self.check_backbone(unet)
        if getattr(unet, "_cad_head", [None])[0] is self.head:
            return unet
        if unet.config.class_embed_type not in (None, "identity"):
            raise InvalidInputError(f"CAD adds its term to the time embedding, but this U-Net already has a class "
                                    f"embedding ({unet.config.class_embed_type!r}).")
        own = cross_attention_parameters(unet)
        memo = {id(p): p for n, p in unet.named_parameters() if n not in own}
        memo.update({id(b): b for b in unet.buffers()})
        memo.update({id(p): self.head.attn2[_key(n)] for n, p in own.items()})
        adapted = copy.deepcopy(unet, memo)
        adapted.class_embedding = nn.Identity()
        adapted.register_to_config(class_embed_type="identity")
        adapted._cad_head = [self.head]       # a list: not registered as a submodule (never saved with the U-Net)
        return adapted

    # ------------------------------------------------------------------ the conditioner interface
    def input_shape(self) -> tuple:
        return self.fmri.input_shape()

    def encode_tokens(self, scans: torch.Tensor) -> torch.Tensor:
        """``E_F(v)``: the FRL encoder's tokens of unmasked responses ``(B, L_r, d_r)``."""
        return self.fmri.encode(scans.to(self.fmri.patch_embed.weight.dtype), 0.0)[0]

    def condition(self, tokens: torch.Tensor) -> tuple:
        """``(context (B, L_T, d_T), time term (B, d_time))`` of fMRI tokens (§3.3's double conditioning)."""
        return self.head.mapper(tokens), self.head.time_proj(tokens.mean(1))

    def encode_scans(self, scans: torch.Tensor, semantic_source: torch.Tensor | None = None) -> dict:
        """The context and time term of the scans; with ``semantic_source`` the context (what the image shows)
        comes from those scans and the time term from ``scans``."""
        tok = self.encode_tokens(scans)
        context, time_term = self.condition(tok)
        if semantic_source is not None:
            context = self.condition(self.encode_tokens(semantic_source))[0]
        return {"context": context, "time_term": time_term}

    def unet_inputs(self, state, latents, timestep, branch, step, control_scale, uncond_context) -> dict:
        """The mapped tokens as context and the time term as ``class_labels``; the unconditional branch has the
        empty caption and no time term."""
        c, t = state["context"].to(latents.dtype), state["time_term"].to(latents.dtype)
        u = uncond_context.to(latents.dtype)
        ctx = {"cond": c, "uncond": u, "both": torch.cat([u, c])}[branch]
        tt = {"cond": t, "uncond": torch.zeros_like(t), "both": torch.cat([torch.zeros_like(t), t])}[branch]
        return {"encoder_hidden_states": ctx, "class_labels": tt}

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, save_directory) -> Path:
        """Write ``fmri/``, ``head/`` (diffusers folders) and ``cad.json`` atomically; return the folder."""
        save_directory = Path(save_directory)
        with atomic_dir(save_directory) as tmp:
            self.fmri.save_pretrained(tmp / "fmri")
            self.head.save_pretrained(tmp / "head")
            write_json(tmp / "cad.json", {"method": "cad", "subject": self.subject})
        return save_directory

    @classmethod
    def from_pretrained(cls, directory, **kwargs) -> "CADModel":
        """Load a folder written by :meth:`save_pretrained` (``kwargs`` go to each part's loader)."""
        directory = Path(directory)
        need = [directory / "cad.json", directory / "fmri" / "config.json", directory / "head" / "config.json"]
        missing = [str(p) for p in need if not p.is_file()]
        if missing:
            other = [m for m in ("encoder", "hlgn", "llmn", "text_decoder", "latent_decoder")
                     if (directory / m).is_dir()]
            hint = f" It holds {', '.join(other)}/: a checkpoint of another method." if other else ""
            raise CheckpointError(f"{directory} is not a CAD model folder; missing: {', '.join(missing)}.{hint} {_FIX}")
        meta = read_json(directory / "cad.json", _FIX)
        return cls(DoubleContrastiveMAE.from_pretrained(directory / "fmri", **kwargs),
                   CADConditionHead.from_pretrained(directory / "head", **kwargs), meta.get("subject", "subj01"))
