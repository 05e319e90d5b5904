"""The per-method interface of the shared brain→image pipeline: a *conditioner*.

:class:`~brainrecon.sampling.BrainToImagePipeline` runs any method through one denoising loop
(:mod:`brainrecon.diffusion`); what differs between NeuroPictor, NeuralDiffuser, MindDiffuser and
Contrast-Attend-Diffuse is only what this interface answers:

* **what input it takes** — :attr:`BrainConditioner.input_kind` (``"flatmap"``: ``(B, C, H, W)`` maps;
  ``"voxels"``: a subject's ``(B, V)`` response vectors) and :meth:`~BrainConditioner.input_shape`;
* **how it encodes a scan** — :meth:`~BrainConditioner.encode_scans`, once per call, into a *state*
  (a dict of tensors; a semantic source's scans give the semantics of the swap);
* **what it hands the U-Net at each step** — :meth:`~BrainConditioner.unet_inputs`: the cross-attention
  context (text space), ControlNet-style residuals scaled by α, time-embedding terms
  (``class_labels``, ``added_cond_kwargs``) — whatever keyword arguments the U-Net takes;
* **where sampling starts** — :meth:`~BrainConditioner.initial_latents` (img2img: latents decoded
  from the scan, run at the pipeline's ``strength``; ``None``: pure noise);
* **what feature guidance pulls towards** — :meth:`~BrainConditioner.feature_targets` (κ, η).

A conditioner is a ``torch.nn.Module`` (normally a diffusers ``ModelMixin``/``ConfigMixin`` with
``save_pretrained``/``from_pretrained``); the pipeline holds it as its ``conditioner`` component.
"""
from __future__ import annotations

import torch

from ..errors import InvalidInputError, check_finite

__all__ = ["BrainConditioner", "INPUT_KINDS", "text_context_inputs", "feature_distance"]

INPUT_KINDS = ("flatmap", "voxels")


class BrainConditioner:
    """Mixin that makes a method's model usable by ``BrainToImagePipeline`` (see the module text).

    Subclasses set :attr:`input_kind` and implement :meth:`input_shape`, :meth:`encode_scans` and
    :meth:`unet_inputs`; :meth:`initial_latents`, :meth:`feature_targets`, :meth:`attach_backbone`, :meth:`adapt_unet`,
    :meth:`retrieval_embeddings` and :attr:`callback_tensors` have neutral defaults.
    """

    #: ``"flatmap"`` or ``"voxels"``.
    input_kind: str = "flatmap"

    def to(self, *args, **kwargs):
        """``torch.nn.Module.to``: a composite conditioner has no fp32-only modules, so diffusers'
        ``ModelMixin.to`` check (which warns on every dtype cast) does not apply."""
        return torch.nn.Module.to(self, *args, **kwargs)
    #: names of state tensors a ``callback_on_step_end`` may read and replace (besides ``latents``).
    callback_tensors: tuple = ()
    #: the pipeline's ``strength`` when a call gives none (1: from noise; < 1: img2img from
    #: :meth:`initial_latents`).
    default_strength: float = 1.0

    def input_shape(self) -> tuple:
        """Shape of one scan: ``(C, H, W)`` for flatmaps, ``(V,)`` for voxels."""
        raise NotImplementedError

    def prepare_scans(self, scans, name: str = "maps") -> torch.Tensor:
        """``scans`` as a float batch of :meth:`input_shape`, refused (named) when it is not one."""
        if scans is None:
            raise InvalidInputError(f"{name} is required: {self._describe()}.")
        x = scans if isinstance(scans, torch.Tensor) else torch.as_tensor(scans)
        want = tuple(int(s) for s in self.input_shape())
        if x.ndim == len(want):                          # one scan: a batch of one
            x = x[None]
        if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want:
            raise InvalidInputError(f"{name} must be {self._describe()}; got {tuple(x.shape)}."
                                    + (" Project responses with pipe.make_projector().transform(...)."
                                       if self.input_kind == "flatmap" else ""))
        if len(x) < 1:
            raise InvalidInputError(f"{name} is an empty batch; pass at least one scan.")
        check_finite(x, name)
        return x.float().contiguous()  # strided views (e.g. expand) would slow every later conv

    def _describe(self) -> str:
        want = ", ".join(str(int(s)) for s in self.input_shape())
        what = "flatmaps" if self.input_kind == "flatmap" else "voxel response vectors"
        return f"{what} of shape (B, {want})"

    def encode_scans(self, scans: torch.Tensor, semantic_source: torch.Tensor | None = None) -> dict:
        """The state of one pipeline call (tensors computed once, before the denoising loop)."""
        raise NotImplementedError

    def unet_inputs(self, state: dict, latents: torch.Tensor, timestep, branch: str, step: int,
                    control_scale: float, uncond_context: torch.Tensor) -> dict:
        """Keyword arguments of the U-Net call at one step.

        Parameters
        ----------
        state : dict
            :meth:`encode_scans` output (possibly replaced by a step callback).
        latents : Tensor
            The U-Net's input at this step; for ``branch="both"`` the batch is ``[uncond; cond]``.
        timestep
        branch : {"cond", "uncond", "both"}
            Classifier-free guidance branch(es).
        step : int
            Index of the step among those run.
        control_scale : float
            ``α`` at this step (0 outside the control window).
        uncond_context : Tensor ``(B, L_T, d_T)``
            The empty caption's text features (the unconditional context).
        """
        raise NotImplementedError

    def attach_backbone(self, backbone):
        """Hand the conditioner the loaded backbone (what guidance or retrieval reads, e.g. its image
        encoder); never saved with it. :func:`~brainrecon.sampling.load_reconstructor` calls it on
        light folders. The default keeps nothing; returns self."""
        return self

    def adapt_unet(self, unet):
        """The U-Net this method samples with, given the backbone's (CAD: one with its tuned cross-attention
        heads, sharing every other weight). The default uses the backbone's U-Net as it is."""
        return unet

    def initial_latents(self, state: dict) -> torch.Tensor | None:
        """Clean latents img2img starts from (``None``: sampling starts from noise)."""
        return None

    def feature_targets(self, state: dict):
        """Feature guidance's loss, a function of the step's estimate (``None``: this method has none)."""
        return None

    def guidance_estimate(self, x0: torch.Tensor, latents: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """What :meth:`feature_targets`' loss is evaluated on at a step: by default the clean-latent
        estimate ``x̂_0`` (``latents`` is ``x_t``, ``alpha_bar`` its ``ᾱ_t``)."""
        return x0

    def retrieval_embeddings(self, scans: torch.Tensor, images: torch.Tensor) -> tuple:
        """``(brain, image)`` embeddings ``(N, D)`` in one space, for brain ↔ image retrieval.

        ``scans`` are a batch of :meth:`input_shape`, ``images`` their seen images ``(N, 3, S, S)`` in
        [0, 1]. Methods without a retrieval space refuse (the default).
        """
        raise InvalidInputError(f"{type(self).__name__} has no retrieval embeddings; bidirectional retrieval "
                                "needs a method with a brain-to-image-embedding decoder (e.g. NeuralDiffuser).")


def text_context_inputs(text_condition: torch.Tensor, latents: torch.Tensor, branch: str,
                        uncond_context: torch.Tensor) -> dict:
    """``unet_inputs`` of a method whose only condition is a decoded text context (NeuralDiffuser,
    MindDiffuser): the context for ``branch``, the empty caption's for the unconditional half."""
    c = text_condition.to(latents.dtype)
    return {"encoder_hidden_states": {"cond": c, "uncond": uncond_context,
                                      "both": torch.cat([uncond_context, c])}[branch]}


def feature_distance(backbone, latents: torch.Tensor, targets: dict, select: dict | None = None) -> torch.Tensor:
    """Per image ``Σ_l ‖Φ^l(D(latents)) − targets[l]‖²`` ``(B,)``: the backbone's VAE decoder, then its
    image encoder's layer ``l`` (NeuralDiffuser Eq. 14, MindDiffuser Eq. 5). ``select[l]`` maps a layer's
    features to the compared dimensions (MindDiffuser's kept 25 %); default all of them."""
    feats = backbone.encode_image_features(backbone.decode_latents(latents), layers=tuple(targets))
    pick = select or {}
    return sum(((pick.get(k, lambda f: f)(feats[k]).float() - t.detach().float()) ** 2).flatten(1).sum(1)
               for k, t in targets.items())
