"""``BrainToImagePipeline``: NeuroPictor's fMRI→image sampler as a diffusers pipeline (§3.4).

One call encodes the flatmaps once (``S^r = E(S)``, NeuroPictor Eq. 1), derives the semantic
condition ``F^sem`` (Eq. 2–4) and runs the frozen U-Net with the LLMN residuals scaled by the
control scale ``α`` (Eq. 7) through the shared loop of :mod:`brainrecon.diffusion`:

* **classifier-free guidance** — the unconditional branch replaces ``F^sem`` with the empty
  caption's text embedding and *keeps the fMRI control* (official ``reconstruction.py``:
  ``uc_cat = c_cat``), ``ε = ε_u + s·(ε_c − ε_u)``;
* **semantic swap** — ``semantic_source`` gives other scans whose ``F^sem`` replaces the
  high-level features while ``maps`` keeps the low-level ones (official ``exchange`` hook).

Saved reconstructor folders (light: ``model/`` + ``backbone.json``, as ``refine_subject`` writes them;
full: with the backbone's parts) are described in :mod:`brainrecon.sampling.folders`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from ..errors import InvalidInputError, check_choice, check_finite
from ..diffusion import denoise_latents
from .folders import (TOY_RECONSTRUCTOR_DIR, load_reconstructor, load_reconstructor_folder,  # noqa: F401 (re-exports)
                      save_reconstructor_folder)

__all__ = ["BrainToImagePipeline", "load_reconstructor", "TOY_RECONSTRUCTOR_DIR"]

_OUTPUT_TYPES = ("pt", "np", "pil", "latent")


def _as_maps(maps, name: str) -> torch.Tensor:
    if maps is None:
        raise InvalidInputError(f"{name} is required: flatmaps (B, 1, H, W).")
    x = maps if isinstance(maps, torch.Tensor) else torch.as_tensor(maps)
    if x.ndim == 3:                      # one map (1, H, W): make it a batch of one
        x = x[None]
    check_finite(x, name)
    return x.float().contiguous()  # strided views (e.g. expand) would slow every later conv


class BrainToImagePipeline(DiffusionPipeline):
    """Flatmaps → images with NeuroPictor (NeuroPictor §3.4, Eq. 7–8) on a Stable-Diffusion-style backbone.

    Parameters
    ----------
    unet : diffusers.UNet2DConditionModel
        The frozen denoiser.
    vae : diffusers.AutoencoderKL
        Decodes latents to images.
    scheduler : diffusers scheduler
        DDIM for the toy and SD 2.1 backbones.
    neuropictor : NeuroPictorModel
        Calibrated encoder, HLGN and LLMN.
    text_encoder, tokenizer : optional
        Only used to compute the empty-caption embedding.
    empty_prompt_embeds : Tensor ``(1, L_T, d_T)``, optional
        The empty caption's text features (the unconditional branch of classifier-free guidance);
        computed from the text encoder when not given.
    default_guidance_scale : float
        Used when ``guidance_scale=None`` (paper: 5.0).
    default_num_inference_steps : int
        Used when ``num_inference_steps=None``.
    backbone_source : str, optional
        ``"toy"`` or the backbone folder (for light saving).
    flatmap : dict, optional
        ``FlatmapProjector`` keywords of the maps the model was trained on (default: whole cortex
        at the encoder's map size); :meth:`make_projector` builds it.

    Build one with :meth:`from_backbone` or load a saved reconstructor with :meth:`from_pretrained`
    / :func:`~brainrecon.sampling.load_reconstructor`.
    """

    model_cpu_offload_seq = "neuropictor->unet->vae"
    _optional_components = ["text_encoder", "tokenizer"]
    _callback_tensor_inputs = ["latents", "semantic_condition", "fmri_tokens"]

    def __init__(self, unet, vae, scheduler, neuropictor, text_encoder=None, tokenizer=None,
                 empty_prompt_embeds: torch.Tensor | None = None, default_guidance_scale: float = 5.0,
                 default_num_inference_steps: int = 50, backbone_source: str | None = None,
                 flatmap: dict | None = None):
        super().__init__()
        self.register_modules(unet=unet, vae=vae, scheduler=scheduler, neuropictor=neuropictor,
                              text_encoder=text_encoder, tokenizer=tokenizer)
        if empty_prompt_embeds is None:
            if text_encoder is None or tokenizer is None:
                raise InvalidInputError("BrainToImagePipeline needs the empty caption's text features for "
                                        "classifier-free guidance: pass text_encoder and tokenizer, or "
                                        "empty_prompt_embeds (1, L_T, d_T).")
            empty_prompt_embeds = _encode_empty(text_encoder, tokenizer)
        want = (unet.config.cross_attention_dim,)
        if empty_prompt_embeds.ndim != 3 or tuple(empty_prompt_embeds.shape[2:]) != want:
            raise InvalidInputError(f"empty_prompt_embeds must be (1, L_T, {want[0]}) (the U-Net's "
                                    f"cross_attention_dim); got {tuple(empty_prompt_embeds.shape)}.")
        self.empty_prompt_embeds = empty_prompt_embeds.detach()[:1].float().cpu()
        #: what the reconstructor's folder says besides the known settings (e.g. ``toyworld``, ``subject``)
        self.info = {}
        if flatmap is None:
            flatmap = {"resolution": list(neuropictor.encoder.image_hw)}
        self.register_to_config(default_guidance_scale=float(default_guidance_scale),
                                default_num_inference_steps=int(default_num_inference_steps),
                                backbone_source=None if backbone_source is None else str(backbone_source),
                                flatmap=dict(flatmap))
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(cls, backbone, model, guidance_scale: float | None = None,
                      num_inference_steps: int | None = None, flatmap: dict | None = None):
        """A pipeline around a loaded :class:`~brainrecon.backbones.Backbone` and a ``NeuroPictorModel``.

        ``guidance_scale`` / ``num_inference_steps`` default to the backbone's ``backbone.json``
        (toy: 5.0 and 25), else the paper's 5.0 and 50.
        """
        from ..backbones.hub import TOY_WEIGHTS_DIR

        meta = getattr(backbone, "metadata", {}) or {}
        path = getattr(backbone, "path", None)
        source = "toy" if path is not None and Path(path).resolve() == TOY_WEIGHTS_DIR else (
            None if path is None else str(path))
        with torch.no_grad():
            empty = backbone.encode_text([""])
        model.to(device=backbone.device, dtype=next(backbone.unet.parameters()).dtype)  # as the U-Net
        return cls(backbone.unet, backbone.vae, backbone.scheduler, model.eval().requires_grad_(False),
                   text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer, empty_prompt_embeds=empty,
                   default_guidance_scale=meta.get("guidance_scale", 5.0) if guidance_scale is None
                   else guidance_scale,
                   default_num_inference_steps=meta.get("num_inference_steps", 50) if num_inference_steps is None
                   else num_inference_steps, backbone_source=source, flatmap=flatmap)

    def to(self, *args, **kwargs) -> "BrainToImagePipeline":
        """Move every part like ``torch.nn.Module.to`` (``NeuroPictorModel`` is a plain module, which
        diffusers' own ``to`` cannot query for ``dtype``)."""
        kwargs.pop("silence_dtype_warnings", None)
        for name in ("unet", "vae", "neuropictor", "text_encoder"):
            part = getattr(self, name, None)
            if part is not None:
                part.to(*args, **kwargs)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def map_shape(self) -> tuple:
        """``(C, H, W)`` of the flatmaps the calibrated encoder reads."""
        enc = self.neuropictor.encoder
        return (int(enc.config.in_channels), *(int(s) for s in enc.image_hw))

    def make_projector(self):
        """The :class:`~brainrecon.data.surface.FlatmapProjector` of this reconstructor's maps."""
        from ..data.surface import FlatmapProjector

        return FlatmapProjector(**dict(self.config.flatmap))

    # ------------------------------------------------------------------ sampling
    def check_inputs(self, maps, semantic_source, latents, output_type, callback_on_step_end_tensor_inputs):
        """Validate the call's inputs; messages name both sides of every mismatch."""
        want = self.map_shape
        if maps.ndim != 4 or tuple(maps.shape[1:]) != want:
            raise InvalidInputError(f"maps must be flatmaps of shape (B, {', '.join(map(str, want))}) (the "
                                    f"calibrated encoder's input); got {tuple(maps.shape)}. Project responses "
                                    f"with pipe.make_projector().transform(...).")
        if semantic_source is not None and tuple(semantic_source.shape) != tuple(maps.shape):
            raise InvalidInputError(f"semantic_source {tuple(semantic_source.shape)} must match maps "
                                    f"{tuple(maps.shape)}: one semantic source scan per target scan.")
        check_choice("output_type", output_type, _OUTPUT_TYPES)
        bad = [k for k in callback_on_step_end_tensor_inputs or () if k not in self._callback_tensor_inputs]
        if bad:
            raise InvalidInputError(f"callback_on_step_end_tensor_inputs {bad} are not available; choose "
                                    f"from {self._callback_tensor_inputs}.")
        if latents is not None:
            shape = self._latent_shape(len(maps))
            if tuple(latents.shape) != shape:
                raise InvalidInputError(f"latents {tuple(latents.shape)} do not match {shape} "
                                        f"(batch, unet.in_channels, latent side).")

    def _latent_shape(self, batch: int) -> tuple:
        s = self.unet.config.sample_size
        h, w = (s, s) if isinstance(s, int) else tuple(s)
        return (batch, int(self.unet.config.in_channels), int(h), int(w))

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @torch.no_grad()
    def __call__(self, maps, control_scale: float = 1.0, guidance_scale: float | None = None,
                 num_inference_steps: int | None = None, generator=None, semantic_source=None,
                 latents: torch.Tensor | None = None, eta: float = 0.0, output_type: str = "pt",
                 return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=("latents",), control_guidance_start: float = 0.0,
                 control_guidance_end: float = 1.0):
        """Reconstruct images from flatmaps.

        Parameters
        ----------
        maps : Tensor ``(B, 1, H, W)``
            The scans' flatmaps (``S`` of NeuroPictor Eq. 1); one ``(1, H, W)`` map is a batch of one.
        control_scale : float
            ``α`` of NeuroPictor Eq. 7: 0 keeps only the high-level semantics, 1 the trained
            balance; above 1 pushes low-level structure harder.
        guidance_scale : float, optional
            Classifier-free guidance scale ``s`` (``ε_u + s(ε_c − ε_u)``); 1 = conditional only,
            0 = empty caption only (with the fMRI control kept). Default: ``default_guidance_scale``.
        num_inference_steps : int, optional
            Denoising steps (default ``default_num_inference_steps``).
        generator : torch.Generator or list of them, optional
            One per image makes every image independent of the batch it is drawn in.
        semantic_source : Tensor ``(B, 1, H, W)``, optional
            The **semantic swap**: ``F^sem`` (Eq. 4) of these scans with the low-level features of
            ``maps`` (the LLMN copy and the U-Net both see the swapped condition, as officially).
        latents : Tensor ``(B, c, h, w)``, optional
            Initial noise.
        eta : float
            DDIM's η.
        output_type : {"pt", "np", "pil", "latent"}
            ``(B, 3, H, W)`` in [0, 1], ``(B, H, W, 3)`` in [0, 1], PIL images, or ``z_0``.
        return_dict : bool
            Return an :class:`~diffusers.ImagePipelineOutput` (else a tuple).
        callback_on_step_end : callable, optional
            ``fn(pipe, step, timestep, callback_kwargs) -> dict`` after every step, with the tensors
            named in ``callback_on_step_end_tensor_inputs``; what it returns replaces them.
        callback_on_step_end_tensor_inputs : sequence of str
            From ``latents``, ``semantic_condition``, ``fmri_tokens``.
        control_guidance_start, control_guidance_end : float
            The share of the steps in which the LLMN residuals are applied (diffusers' ControlNet
            window): step ``i`` of ``n`` uses ``α`` when ``start ≤ i/n`` and ``(i+1)/n ≤ end``, else 0
            (e.g. ``end=0.5``: low-level control early, semantics alone late).

        Returns
        -------
        ImagePipelineOutput or tuple
            ``.images``.
        """
        maps = _as_maps(maps, "maps")
        if semantic_source is not None:
            semantic_source = _as_maps(semantic_source, "semantic_source")
        self.check_inputs(maps, semantic_source, latents, output_type, callback_on_step_end_tensor_inputs)
        gs = self.config.default_guidance_scale if guidance_scale is None else float(guidance_scale)
        steps = self.config.default_num_inference_steps if num_inference_steps is None else int(num_inference_steps)
        self._guidance_scale, self._num_timesteps = gs, steps
        start, end = float(control_guidance_start), float(control_guidance_end)
        if not 0.0 <= start < end <= 1.0:
            raise InvalidInputError(f"control_guidance_start={start} and control_guidance_end={end} must satisfy "
                                    "0 <= start < end <= 1.")
        alphas = [float(control_scale) * (1.0 - float(i / steps < start or (i + 1) / steps > end))
                  for i in range(steps)]
        device, dtype, model = self._execution_device, self.dtype, self.neuropictor
        enc_dtype = next(model.encoder.parameters()).dtype

        # 1. S^r once per call (Eq. 1), F^sem of the maps or of the semantic source (Eq. 2-4)
        tokens = model.encode(maps.to(device, enc_dtype))
        sem_tokens = tokens if semantic_source is None else model.encode(semantic_source.to(device, enc_dtype))
        state = {"fmri_tokens": tokens, "semantic_condition": model.semantic_condition(fmri_tokens=sem_tokens),
                 "latents": None}
        uncond = self.empty_prompt_embeds.to(device, dtype).expand(len(maps), -1, -1)

        # 2. initial noise
        if latents is None:
            latents = randn_tensor(self._latent_shape(len(maps)), generator=generator, device=device,
                                   dtype=torch.float32)
        latents = latents.to(device, torch.float32)

        # 3. ε_θ with the fMRI control in both guidance branches (Eq. 7-8)
        def noise_fn(x, t, branch, step):
            tok, sem = state["fmri_tokens"], state["semantic_condition"].to(dtype)
            if branch == "both":
                tok, sem = torch.cat([tok, tok]), torch.cat([uncond, sem])
            elif branch == "uncond":
                sem = uncond
            return model.predict_noise(self.unet, x.to(dtype), t, fmri_tokens=tok,
                                       control_scale=alphas[step], semantic_condition=sem)

        names = list(callback_on_step_end_tensor_inputs or ())

        def callback(i, t, x):
            state["latents"] = x
            if callback_on_step_end is None:
                return x
            out = callback_on_step_end(self, i, t, {k: state[k] for k in names}) or {}
            for k in self._callback_tensor_inputs:
                if k in out:
                    state[k] = out[k]
            return state["latents"]

        # 4. denoise (shared loop), 5. decode
        z = denoise_latents(self.scheduler, noise_fn, latents, steps, gs, device=device, generator=generator,
                            eta=eta, callback=callback, progress_bar=self.progress_bar)
        if output_type == "latent":
            images = z
        else:
            vae = self.vae
            shift = getattr(vae.config, "shift_factor", None) or 0.0
            decoded = vae.decode(z.to(vae.dtype) / vae.config.scaling_factor + shift).sample.float()
            images = self.image_processor.postprocess(decoded, output_type=output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    # ------------------------------------------------------------------ saving and loading
    def save_pretrained(self, save_directory, save_backbone: bool | None = None, **kwargs) -> Path:
        """Write the reconstructor to ``save_directory`` atomically and return the folder.

        Parameters
        ----------
        save_directory : path-like
        save_backbone : bool, optional
            ``False``: only ``model/`` + ``backbone.json`` pointing at ``config.backbone_source``
            (``"toy"`` or the backbone folder); ``True``: also the backbone's parts. Default: light
            for the shipped toy backbone, full otherwise (layouts: :mod:`brainrecon.sampling.folders`).
        """
        return save_reconstructor_folder(self, save_directory, save_backbone)

    @classmethod
    def from_pretrained(cls, directory, device=None, dtype: torch.dtype | None = None, **kwargs):
        """Load a reconstructor folder (light or full layout, :mod:`brainrecon.sampling.folders`).

        Parameters
        ----------
        directory : path-like
        device, dtype : optional
            Where to put the parts (default CPU, stored dtype).
        **kwargs
            ``guidance_scale``, ``num_inference_steps`` or ``flatmap`` override the saved defaults.
        """
        return load_reconstructor_folder(cls, directory, device=device, dtype=dtype, **kwargs)


def _encode_empty(text_encoder, tokenizer) -> torch.Tensor:
    """The empty caption's last hidden states ``(1, L_T, d_T)`` (as ``Backbone.encode_text``)."""
    ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(next(text_encoder.parameters()).device)
    mask = (ids != tokenizer.pad_token_id).long() if getattr(text_encoder.config, "use_attention_mask",
                                                             False) else None
    with torch.no_grad():
        return text_encoder(ids, attention_mask=mask, return_dict=True).last_hidden_state
