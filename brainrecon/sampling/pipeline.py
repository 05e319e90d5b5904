"""``BrainToImagePipeline``: scans → images for every method, as one diffusers pipeline.

The pipeline knows diffusion, not methods: a *conditioner* (:class:`~brainrecon.models.conditioner.
BrainConditioner`) says what input it takes (flatmaps or voxel vectors), encodes the scans once per
call, and hands the frozen U-Net its inputs at every step (context, residuals × α, time-embedding
terms); the pipeline runs the shared loop of :mod:`brainrecon.diffusion` with

* **classifier-free guidance** — ``ε = ε_u + s·(ε_c − ε_u)``, the conditioner deciding what the
  unconditional branch sees (NeuroPictor: the empty caption with the fMRI control kept);
* **semantic swap** — ``semantic_source`` gives other scans whose semantics replace the high-level
  features while ``maps`` keeps the low-level ones (NeuroPictor's official ``exchange`` hook);
* **img2img** — ``strength`` η < 1 starts from the conditioner's :meth:`initial_latents` (or from
  ``init_latents`` given to the call) noised to the matching step;
* **feature guidance** — ``feature_guidance_scale`` κ pulls each step's clean-latent estimate
  towards the conditioner's :meth:`feature_targets` (``"latents"``: a target ``z_0``) for the first
  share ``feature_guidance_strength`` of the steps.

NeuroPictor (:class:`~brainrecon.models.NeuroPictorModel`) is the first conditioner.

Saved reconstructor folders (light: ``model/`` + ``backbone.json``, as ``refine_subject`` writes them;
full: with the backbone's parts) are described in :mod:`brainrecon.sampling.folders`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from ..backbones.hub import TOY_WEIGHTS_DIR
from ..data.surface import FlatmapProjector
from ..diffusion import denoise_latents, predict_original_sample
from ..errors import InvalidInputError, check_choice, check_range
from ..models.conditioner import INPUT_KINDS, BrainConditioner
from .folders import (TOY_RECONSTRUCTOR_DIR, load_reconstructor, load_reconstructor_folder,  # noqa: F401 (re-exports)
                      save_reconstructor_folder)
from .latent_opt import optimise_latents

__all__ = ["BrainToImagePipeline", "load_reconstructor", "TOY_RECONSTRUCTOR_DIR"]

_OUTPUT_TYPES = ("pt", "np", "pil", "latent")


class BrainToImagePipeline(DiffusionPipeline):
    """Scans → images with any method's conditioner on a Stable-Diffusion-style backbone.

    Parameters
    ----------
    unet : diffusers.UNet2DConditionModel
        The frozen denoiser.
    vae : diffusers.AutoencoderKL
        Decodes latents to images.
    scheduler : diffusers scheduler
        DDIM for the toy and SD 2.1 backbones.
    conditioner : BrainConditioner
        The method (e.g. ``NeuroPictorModel``: calibrated encoder, HLGN and LLMN, §3.4, Eq. 7–8).
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

    model_cpu_offload_seq = "conditioner->unet->vae"
    _optional_components = ["text_encoder", "tokenizer"]

    def __init__(self, unet, vae, scheduler, conditioner, text_encoder=None, tokenizer=None,
                 empty_prompt_embeds: torch.Tensor | None = None, default_guidance_scale: float = 5.0,
                 default_num_inference_steps: int = 50, backbone_source: str | None = None,
                 flatmap: dict | None = None):
        super().__init__()

        if not isinstance(conditioner, BrainConditioner) or conditioner.input_kind not in INPUT_KINDS:
            raise InvalidInputError(f"conditioner must be a BrainConditioner (input_kind in {INPUT_KINDS}); got "
                                    f"{type(conditioner).__name__}.")
        self.register_modules(unet=unet, vae=vae, scheduler=scheduler, conditioner=conditioner,
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
        if flatmap is None and conditioner.input_kind == "flatmap":
            flatmap = {"resolution": list(conditioner.input_shape()[1:])}
        self.register_to_config(default_guidance_scale=float(default_guidance_scale),
                                default_num_inference_steps=int(default_num_inference_steps),
                                backbone_source=None if backbone_source is None else str(backbone_source),
                                flatmap=None if flatmap is None else dict(flatmap))
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(cls, backbone, model, guidance_scale: float | None = None,
                      num_inference_steps: int | None = None, flatmap: dict | None = None):
        """A pipeline around a loaded :class:`~brainrecon.backbones.Backbone` and a conditioner ``model``.

        ``guidance_scale`` / ``num_inference_steps`` default to the backbone's ``backbone.json``
        (toy: 5.0 and 25), else the paper's 5.0 and 50.
        """
        meta = getattr(backbone, "metadata", {}) or {}
        path = getattr(backbone, "path", None)
        source = "toy" if path is not None and Path(path).resolve() == TOY_WEIGHTS_DIR else (
            None if path is None else str(path))
        with torch.no_grad():
            empty = backbone.encode_text([""])
        model.to(device=backbone.device, dtype=next(backbone.unet.parameters()).dtype)  # as the U-Net
        unet = model.adapt_unet(backbone.unet)                 # CAD: its tuned cross-attention heads
        return cls(unet, backbone.vae, backbone.scheduler, model.eval().requires_grad_(False),
                   text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer, empty_prompt_embeds=empty,
                   default_guidance_scale=meta.get("guidance_scale", 5.0) if guidance_scale is None
                   else guidance_scale,
                   default_num_inference_steps=meta.get("num_inference_steps", 50) if num_inference_steps is None
                   else num_inference_steps, backbone_source=source, flatmap=flatmap)

    def to(self, *args, **kwargs) -> "BrainToImagePipeline":
        """Move every part like ``torch.nn.Module.to`` (a conditioner may be a plain module, which
        diffusers' own ``to`` cannot query for ``dtype``)."""
        kwargs.pop("silence_dtype_warnings", None)
        for name in ("unet", "vae", "conditioner", "text_encoder"):
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
        """Shape of one scan the conditioner reads: ``(C, H, W)`` flatmaps or ``(V,)`` voxels."""
        return tuple(int(s) for s in self.conditioner.input_shape())

    @property
    def _callback_tensor_inputs(self) -> list:
        return ["latents", *self.conditioner.callback_tensors]

    def make_projector(self):
        """The :class:`~brainrecon.data.surface.FlatmapProjector` of this reconstructor's maps."""
        if self.config.flatmap is None:
            raise InvalidInputError(f"this reconstructor reads {self.conditioner.input_kind}, not flatmaps: "
                                    "it has no flatmap projector.")
        return FlatmapProjector(**dict(self.config.flatmap))

    # ------------------------------------------------------------------ sampling
    def check_inputs(self, maps, semantic_source, latents, output_type, callback_on_step_end_tensor_inputs):
        """Validate the call's inputs; messages name both sides of every mismatch."""
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

    @property
    def num_steps_run(self) -> int:
        """Denoising steps the last call ran (``round(strength · num_inference_steps)`` for img2img)."""
        return self._num_steps_run

    @property
    def num_guided_steps(self) -> int:
        """Of those, how many carried the feature-guidance gradient (``int(steps run · η)``, the first
        ones, as the official NeuralDiffuser code counts them; 0 without guidance)."""
        return self._num_guided_steps

    @torch.no_grad()
    def __call__(self, maps, control_scale: float = 1.0, guidance_scale: float | None = None,
                 num_inference_steps: int | None = None, generator=None, semantic_source=None,
                 latents: torch.Tensor | None = None, eta: float = 0.0, output_type: str = "pt",
                 return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=("latents",), control_guidance_start: float = 0.0,
                 control_guidance_end: float = 1.0, strength: float | None = None,
                 init_latents: torch.Tensor | None = None, feature_guidance_scale: float = 0.0,
                 feature_guidance_strength: float = 0.2, latent_optimisation_steps: int = 0,
                 latent_optimisation_lr: float = 0.01):
        """Reconstruct images from scans.

        Parameters
        ----------
        maps : Tensor ``(B, *map_shape)``
            The scans as the conditioner reads them: flatmaps ``(B, 1, H, W)`` (NeuroPictor's ``S``,
            Eq. 1) or voxel vectors ``(B, V)``; one scan without the batch axis is a batch of one.
        control_scale : float
            ``α`` of NeuroPictor Eq. 7: 0 keeps only the high-level semantics, 1 the trained
            balance; above 1 pushes low-level structure harder (refused outside [0, 10]).
        guidance_scale : float, optional
            Classifier-free guidance scale ``s`` (``ε_u + s(ε_c − ε_u)``); 1 = conditional only,
            0 = unconditional only (refused outside [0, 50]). Default: ``default_guidance_scale``.
        num_inference_steps : int, optional
            Denoising steps of the full schedule (default ``default_num_inference_steps``).
        generator : torch.Generator or list of them, optional
            One per image makes every image independent of the batch it is drawn in.
        semantic_source : Tensor like ``maps``, optional
            The **semantic swap**: the semantics (NeuroPictor: ``F^sem``, Eq. 4) of these scans with the
            low-level features of ``maps`` (the LLMN copy and the U-Net both see the swapped condition).
        latents : Tensor ``(B, c, h, w)``, optional
            Initial noise.
        eta : float
            DDIM's η in [0, 1].
        output_type : {"pt", "np", "pil", "latent"}
            ``(B, 3, H, W)`` in [0, 1], ``(B, H, W, 3)`` in [0, 1], PIL images, or ``z_0``.
        return_dict : bool
            Return an :class:`~diffusers.ImagePipelineOutput` (else a tuple).
        callback_on_step_end : callable, optional
            ``fn(pipe, step, timestep, callback_kwargs) -> dict`` after every step, with the tensors
            named in ``callback_on_step_end_tensor_inputs``; what it returns replaces them.
        callback_on_step_end_tensor_inputs : sequence of str
            ``latents`` and the conditioner's own (NeuroPictor: ``semantic_condition``, ``fmri_tokens``).
        control_guidance_start, control_guidance_end : float
            The share of the steps run in which the conditioner's control (NeuroPictor: the LLMN
            residuals) is applied (diffusers' ControlNet window): step ``i`` of ``n`` uses ``α`` when
            ``start ≤ i/n`` and ``(i+1)/n ≤ end``, else 0.
        strength : float, optional
            img2img η ∈ (0, 1]: run the last ``round(strength · steps)`` steps from ``init_latents``
            (or the conditioner's :meth:`initial_latents`) noised to the first of them; 1 starts
            from noise. Default: the conditioner's ``default_strength`` (NeuroPictor 1; NeuralDiffuser
            0.75, Algorithm 1's).
        init_latents : Tensor ``(B, c, h, w)``, optional
            Clean latents img2img starts from (default: the conditioner's, if it has any).
        feature_guidance_scale : float
            κ ≥ 0: each guided step moves the model output by ``κ √(1−ᾱ_t) ∇_{x_t} L(x̂_0)``, ``L``
            the conditioner's feature loss (:meth:`feature_targets`); 0 switches it off.
        feature_guidance_strength : float
            The share of the steps run, from the first, that feature guidance acts on (NeuralDiffuser's η).
        latent_optimisation_steps : int
            MindDiffuser's stage 2 (§3.4, Eq. 5): this many Adam iterations on the decoded text condition
            and latent, back-propagating the conditioner's feature loss through the sampler
            (:func:`~brainrecon.sampling.latent_opt.optimise_latents`, which also returns the loss per
            iteration); 0 (default) is stage 1 alone. Uses ``guidance_scale``, ``num_inference_steps``,
            ``strength`` and ``generator``; the other settings keep their defaults.
        latent_optimisation_lr : float
            Adam's learning rate for it (the official code's 0.01).

        Returns
        -------
        ImagePipelineOutput or tuple
            ``.images``.
        """
        cond = self.conditioner
        maps = cond.prepare_scans(maps, "maps")
        n_opt = check_range("latent_optimisation_steps", latent_optimisation_steps, 0)
        if n_opt > 0:
            check_choice("output_type", output_type, _OUTPUT_TYPES[:2])
            given = [name for name, v in (("semantic_source", semantic_source), ("latents", latents),
                                          ("init_latents", init_latents), ("callback_on_step_end", callback_on_step_end))
                     if v is not None] + (["feature_guidance_scale"] if feature_guidance_scale else [])
            if given:
                raise InvalidInputError(f"latent_optimisation_steps runs MindDiffuser's stage 2, which does not take "
                                        f"{', '.join(given)}; call brainrecon.sampling.optimise_latents for its own "
                                        "options, or drop them.")
            out = optimise_latents(self, maps, iterations=n_opt, lr=latent_optimisation_lr,
                                   guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
                                   strength=strength, generator=generator)
            images = out.images if output_type == "pt" else out.images.permute(0, 2, 3, 1).numpy()
            return ImagePipelineOutput(images=images) if return_dict else (images,)
        if semantic_source is not None:
            semantic_source = cond.prepare_scans(semantic_source, "semantic_source")
        self.check_inputs(maps, semantic_source, latents, output_type, callback_on_step_end_tensor_inputs)
        gs = self.config.default_guidance_scale if guidance_scale is None else guidance_scale
        steps = self.config.default_num_inference_steps if num_inference_steps is None else num_inference_steps
        strength = float(getattr(cond, "default_strength", 1.0)) if strength is None else strength
        gs, steps, alpha, eta, strength, kappa, eta_fg = _check_settings(
            gs, steps, control_scale, eta, strength, feature_guidance_scale, feature_guidance_strength)
        self._guidance_scale, self._num_timesteps = gs, steps
        start, end = float(control_guidance_start), float(control_guidance_end)
        if not 0.0 <= start < end <= 1.0:
            raise InvalidInputError(f"control_guidance_start={start} and control_guidance_end={end} must satisfy "
                                    "0 <= start < end <= 1.")
        if isinstance(generator, list) and len(generator) != len(maps):
            raise InvalidInputError(f"{len(generator)} generators for {len(maps)} scans: pass one per scan "
                                    f"(or a single generator).")
        device, dtype = self._execution_device, self.dtype

        # 1. the scans, encoded once per call (NeuroPictor: S^r, Eq. 1, and F^sem, Eq. 2-4)
        state = dict(cond.encode_scans(maps.to(device), None if semantic_source is None
                                       else semantic_source.to(device)))
        state["latents"] = None
        uncond = self.empty_prompt_embeds.to(device, dtype).expand(len(maps), -1, -1)

        # 2. initial noise, and the clean latents of img2img
        if latents is None:
            latents = randn_tensor(self._latent_shape(len(maps)), generator=generator, device=device,
                                   dtype=torch.float32)
        latents = latents.to(device, torch.float32)
        if strength < 1.0 and init_latents is None:
            init_latents = cond.initial_latents(state)
            if init_latents is None:
                raise InvalidInputError(f"strength={strength} needs clean latents to start from: pass init_latents, "
                                        f"or use a method whose conditioner provides them "
                                        f"({type(cond).__name__} does not).")
        if init_latents is not None:
            init_latents = torch.as_tensor(init_latents).to(device, torch.float32)
            if tuple(init_latents.shape) != tuple(latents.shape):
                raise InvalidInputError(f"init_latents {tuple(init_latents.shape)} do not match "
                                        f"{tuple(latents.shape)} (batch, unet.in_channels, latent side).")
        n_run = steps if init_latents is None else min(steps, int(round(steps * strength)))
        self._num_steps_run, self._num_guided_steps = n_run, 0
        alphas = [alpha * (1.0 - float(i / n_run < start or (i + 1) / n_run > end)) for i in range(n_run)]

        # 3. the U-Net with what the conditioner hands it at each step
        def noise_fn(x, t, branch, step):
            kw = cond.unet_inputs(state, x.to(dtype), t, branch, step, control_scale=alphas[step],
                                  uncond_context=uncond)
            return self.unet(x.to(dtype), t, **kw).sample

        hook = None
        loss_fn = cond.feature_targets(state) if kappa > 0 else None
        if kappa > 0 and loss_fn is None:
            raise InvalidInputError(f"feature_guidance_scale={kappa} but {type(cond).__name__} has no feature "
                                    f"targets to guide towards; use 0.")
        if loss_fn is not None:
            n_guided = self._num_guided_steps = int(n_run * eta_fg)

            def hook(i, t, x, out):
                if i >= n_guided:
                    return None
                return _feature_guidance(self.scheduler, x, out, t, loss_fn, kappa, cond.guidance_estimate)

        names = list(callback_on_step_end_tensor_inputs or ())

        def callback(i, t, x):
            if not torch.isfinite(x).all():
                raise InvalidInputError(f"the latents became non-finite at step {i + 1} of {n_run} (t={int(t)}): "
                                        f"check the scans' scale and the settings (α={alpha:g}, CFG={gs:g}).")
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
                            eta=eta, init_latents=init_latents, strength=strength if init_latents is not None
                            else 1.0, step_hook=hook, callback=callback, progress_bar=self.progress_bar)
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


def _check_settings(gs, steps, alpha, eta, strength, kappa, eta_fg):
    """The call's scalar settings, refused (named, with the range) before any compute."""
    steps = check_range("num_inference_steps", steps, 1)
    strength = check_range("strength", strength, 1e-6, 1.0, float)
    if round(steps * strength) < 1:
        raise InvalidInputError(f"strength={strength:g} with num_inference_steps={steps} runs no step; raise either "
                                f"so that strength x steps >= 0.5.")
    return (check_range("guidance_scale", gs, 0.0, 50.0, float), steps,
            check_range("control_scale", alpha, 0.0, 10.0, float), check_range("eta", eta, 0.0, 1.0, float),
            strength, check_range("feature_guidance_scale", kappa, 0.0, None, float),
            check_range("feature_guidance_strength", eta_fg, 0.0, 1.0, float))


def _feature_guidance(scheduler, x, out, t, loss_fn, kappa: float, estimate=None):
    """``out`` moved by ``κ √(1−ᾱ_t) ∇_x L(x̂_0)``, in the units of the scheduler's prediction type.

    The clean-latent estimate ``x̂_0`` (:func:`~brainrecon.diffusion.predict_original_sample`) is
    differentiated through its dependence on ``x_t`` with the model output held fixed (no second U-Net
    pass); ``estimate`` (the conditioner's :meth:`guidance_estimate`) may blend it with ``x_t`` first
    (NeuralDiffuser Eq. 12). For ε prediction the shift is added to ε; for v prediction it is converted
    (``δv = δε / √ᾱ_t``).
    """
    ab = scheduler.alphas_cumprod.to(x.device)[int(t)].float()
    with torch.enable_grad():
        xg = x.detach().float().requires_grad_(True)
        x0 = predict_original_sample(scheduler, xg, out.detach().float(), t)
        loss = loss_fn(x0 if estimate is None else estimate(x0, xg, ab)).sum()     # a scalar, or one per image
        (grad,) = torch.autograd.grad(loss, xg)
    d_eps = kappa * (1 - ab).sqrt() * grad
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return out + d_eps
    if kind == "v_prediction":
        return out + d_eps / ab.sqrt()
    raise InvalidInputError(f"feature guidance needs epsilon or v_prediction, not {kind!r}.")


def _encode_empty(text_encoder, tokenizer) -> torch.Tensor:
    """The empty caption's last hidden states ``(1, L_T, d_T)`` (as ``Backbone.encode_text``)."""
    ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(next(text_encoder.parameters()).device)
    mask = (ids != tokenizer.pad_token_id).long() if getattr(text_encoder.config, "use_attention_mask",
                                                             False) else None
    with torch.no_grad():
        return text_encoder(ids, attention_mask=mask, return_dict=True).last_hidden_state
