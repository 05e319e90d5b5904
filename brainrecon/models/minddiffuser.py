"""MindDiffuser as the shared pipeline's conditioner (MindDiffuser §3.3–3.4, Fig. 2).

Three ridge decoders (:class:`~brainrecon.models.ridge.RidgeDecoder`, fitted on one subject's
voxels) map a scan to

* ``c`` — the text condition (the first ``text_tokens`` tokens of the caption's text features,
  §4.2's "first 15 × 768 of 77 × 768"; the remaining positions are the training captions' mean, fixed);
* ``z`` — the VAE latent of the seen image (stage 1's img2img start, Eq. 1–2);
* ``Z^i`` — image-encoder layer ``i``'s features, only the 25 % of dimensions best predicted in
  cross-validation (§4.2), the targets of stage 2's structure loss (Eq. 5).

**Stage 1** is the pipeline's img2img at ``strength`` (``default_strength`` 0.74: the official code's
``t = 37`` of 50 DDIM steps) from ``ẑ`` under ``ĉ``; **stage 2** (:mod:`brainrecon.sampling.latent_opt`)
back-propagates :meth:`MindDiffuserModel.feature_targets`' loss, Eq. 5's
``Σ_i ‖Φ^i(Ŷ) − Z^i‖²`` on the kept dimensions, into ``c`` and ``z``. Its fitting is
:mod:`brainrecon.training.minddiffuser`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers.models.modeling_utils import ModelMixin
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError, InvalidInputError
from ..io import atomic_dir, read_json, write_json
from .conditioner import BrainConditioner, feature_distance, text_context_inputs
from .ridge import RidgeDecoder

__all__ = ["MindDiffuserModel"]

_FIX = "Write the folder again with MindDiffuserModel.save_pretrained (brainrecon train minddiffuser)."


class MindDiffuserModel(BrainConditioner, ModelMixin):
    """MindDiffuser for one subject: voxels → ``ĉ``, ``ẑ``, ``Ẑ^i`` (ridge), for the shared pipeline.

    Parameters
    ----------
    text_decoder : RidgeDecoder
        ``f_c``: voxels → the first ``T`` text tokens ``(T, d_T)``.
    latent_decoder : RidgeDecoder
        ``f_z``: voxels → the latent ``(c, h, w)``.
    feature_decoders : dict of int to RidgeDecoder
        ``f_CLIPi`` per image-encoder layer ``i`` (``Backbone.encode_image_features`` indices), each
        keeping only its selected dimensions.
    subject : str
        Whose voxels the decoders read.
    text_tail : Tensor ``(L_T − T, d_T)``, optional
        The text positions after the decoded ones (the training captions' mean); none when ``T = L_T``.
    """

    input_kind = "voxels"
    callback_tensors = ("text_condition", "init_latents")
    default_strength = 0.74        # the official Reconstruction.py: stochastic_encode at t = 37 of 50 DDIM steps

    def __init__(self, text_decoder: RidgeDecoder, latent_decoder: RidgeDecoder, feature_decoders: dict | None = None,
                 subject: str = "subj01", text_tail: torch.Tensor | None = None):
        super().__init__()
        decs = {"text": text_decoder, "latent": latent_decoder, **{f"layer {k}": d for k, d in
                                                                     (feature_decoders or {}).items()}}
        n = {name: int(d.config.n_inputs) for name, d in decs.items()}
        if len(set(n.values())) != 1:
            raise InvalidInputError(f"MindDiffuser's decoders must read one subject's voxels; their input sizes "
                                    f"differ: {n}.")
        if len(text_decoder.config.output_shape) != 2 or len(latent_decoder.config.output_shape) != 3:
            raise InvalidInputError("text_decoder must decode (tokens, dim) and latent_decoder (c, h, w); got "
                                    f"{text_decoder.config.output_shape} and {latent_decoder.config.output_shape}.")
        self.text_decoder, self.latent_decoder = text_decoder, latent_decoder
        self.feature_decoders = nn.ModuleDict({str(int(k)): v for k, v in (feature_decoders or {}).items()})
        self.subject = str(subject)
        d_t = int(text_decoder.config.output_shape[1])
        tail = torch.zeros(0, d_t) if text_tail is None else torch.as_tensor(text_tail).float()
        if tail.ndim != 2 or tail.shape[1] != d_t:
            raise InvalidInputError(f"text_tail must be (L_T - T, {d_t}); got {tuple(tail.shape)}.")
        self.register_buffer("text_tail", tail)
        self._backbone = []                       # attached, never saved

    @property
    def feature_layers(self) -> tuple:
        """The image-encoder layers stage 2 aligns (sorted)."""
        return tuple(sorted(int(k) for k in self.feature_decoders))

    # ------------------------------------------------------------------ the interface
    def input_shape(self) -> tuple:
        return (int(self.latent_decoder.config.n_inputs),)

    def check_backbone(self, backbone) -> None:
        """Refuse a backbone whose spaces do not match the decoders' (text, latent, image-encoder layers)."""
        want_text = (int(backbone.text_length), int(backbone.text_embed_dim))
        have_text = (int(self.text_decoder.config.output_shape[0]) + len(self.text_tail),
                     int(self.text_decoder.config.output_shape[1]))
        lat = tuple(int(s) for s in self.latent_decoder.config.output_shape)
        want_lat = (int(backbone.unet.config.in_channels), int(backbone.unet.config.sample_size),
                    int(backbone.unet.config.sample_size))
        if have_text != want_text or lat != want_lat:
            raise InvalidInputError(f"these MindDiffuser decoders were fitted for text {have_text} and latents {lat}; "
                                    f"the backbone has {want_text} and {want_lat}. Fit them on this backbone "
                                    "(brainrecon train minddiffuser --backbone ...).")
        if self.feature_decoders:
            if getattr(backbone, "image_encoder", None) is None:
                raise InvalidInputError("stage 2 (Eq. 5) reads the backbone's image encoder, which this backbone "
                                        "lacks: load one with an image_encoder/ folder (CLIP ViT for SD).")
            n = backbone.image_encoder_layers
            bad = [k for k in self.feature_layers if not -n <= k < n]
            if bad:
                raise InvalidInputError(f"the feature decoders read image-encoder layers {list(self.feature_layers)}; "
                                        f"this backbone's image encoder has hidden states 0..{n - 1}, so layer(s) "
                                        f"{bad} do not exist. Refit with --feature-layers within that range.")

    def attach_backbone(self, backbone) -> "MindDiffuserModel":
        """Use ``backbone``'s VAE decoder and image encoder for stage 2 (checked against the decoders)."""
        self.check_backbone(backbone)
        self._backbone[:] = [backbone]
        return self

    def encode_scans(self, scans: torch.Tensor, semantic_source: torch.Tensor | None = None) -> dict:
        """``ĉ`` (from ``semantic_source`` when given: the semantic swap), ``ẑ`` and the kept ``Ẑ^i``."""
        c = self.text_decoder(scans if semantic_source is None else semantic_source)
        if len(self.text_tail):
            c = torch.cat([c, self.text_tail.to(c.dtype)[None].expand(len(c), -1, -1)], 1)
        return {"text_condition": c, "init_latents": self.latent_decoder(scans),
                "features": {int(k): d(scans) for k, d in self.feature_decoders.items()}}

    def unet_inputs(self, state, latents, timestep, branch, step, control_scale, uncond_context) -> dict:
        return text_context_inputs(state["text_condition"], latents, branch, uncond_context)

    def initial_latents(self, state: dict) -> torch.Tensor:
        return state["init_latents"]

    def feature_targets(self, state: dict):
        """Eq. 5 per image, ``Σ_i ‖Φ^i(D(z))[kept] − Ẑ^i‖²`` ``(B,)``, as a function of latents ``z``."""
        if not state["features"]:
            return None
        if not self._backbone:
            raise InvalidInputError("stage 2 needs the backbone's VAE decoder and image encoder: call "
                                    "model.attach_backbone(backbone) first (load_reconstructor does).")
        bb, targets = self._backbone[0], state["features"]
        kept = {int(k): d.take for k, d in self.feature_decoders.items()}
        return lambda latents: feature_distance(bb, latents, targets, kept)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, save_directory) -> Path:
        """Write ``text_decoder/``, ``latent_decoder/``, ``feature_decoder_<i>/``, ``text_tail.safetensors``
        and ``minddiffuser.json`` atomically; return the folder."""
        save_directory = Path(save_directory)
        with atomic_dir(save_directory) as tmp:
            self.text_decoder.save_pretrained(tmp / "text_decoder")
            self.latent_decoder.save_pretrained(tmp / "latent_decoder")
            for k, d in self.feature_decoders.items():
                d.save_pretrained(tmp / f"feature_decoder_{k}")
            save_file({"text_tail": self.text_tail.contiguous()}, str(tmp / "text_tail.safetensors"))
            write_json(tmp / "minddiffuser.json", {"subject": self.subject, "feature_layers": list(self.feature_layers)})
        return save_directory

    @classmethod
    def from_pretrained(cls, directory, **kwargs) -> "MindDiffuserModel":
        """Load a folder written by :meth:`save_pretrained` (``kwargs`` go to each decoder's loader)."""
        directory = Path(directory)
        need = [directory / "minddiffuser.json", directory / "text_tail.safetensors",
                directory / "text_decoder" / "config.json", directory / "latent_decoder" / "config.json"]
        missing = [str(p) for p in need if not p.is_file()]
        if missing:
            raise CheckpointError(f"{directory} is not a MindDiffuser model folder; missing: {', '.join(missing)}. {_FIX}")
        meta = read_json(directory / "minddiffuser.json", _FIX)
        layers = meta.get("feature_layers") or []
        missing = [str(directory / f"feature_decoder_{k}") for k in layers
                   if not (directory / f"feature_decoder_{k}" / "config.json").is_file()]
        if missing:
            raise CheckpointError(f"{directory}/minddiffuser.json names feature layers {layers}, but "
                                  f"{', '.join(missing)} is missing. {_FIX}")
        try:
            tail = load_file(str(directory / "text_tail.safetensors"))["text_tail"]
        except Exception as err:          # safetensors raises its own error types for a damaged file
            raise CheckpointError(f"{directory / 'text_tail.safetensors'} cannot be read ({err}). {_FIX}") from None
        return cls(RidgeDecoder.from_pretrained(directory / "text_decoder", **kwargs),
                   RidgeDecoder.from_pretrained(directory / "latent_decoder", **kwargs),
                   {int(k): RidgeDecoder.from_pretrained(directory / f"feature_decoder_{k}", **kwargs) for k in layers},
                   meta.get("subject", "subj01"), tail)
