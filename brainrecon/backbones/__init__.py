"""Pretrained latent-diffusion parts: the shipped toy backbones and local SD checkpoints.

* :func:`load_backbone` — ``"toy"`` (shipped), a local diffusers SD folder, or a hub id.
* :class:`Backbone` — unet, vae, text_encoder, tokenizer, image_encoder, scheduler and the
  helpers ``encode_text``, ``encode_image_features``, ``encode_latents``, ``decode_latents``,
  ``generate``.
* :class:`ToyBackboneConfig` — the recipe of the toy parts (trained by
  :func:`brainrecon.training.train_toy_backbones`).
* :class:`AttributeClassifier` — judges category, colour and box of the main object.
"""
from .attributes import AttributeClassifier
from .hub import TOY_WEIGHTS_DIR, Backbone, load_backbone
from .toy import ToyBackboneConfig, make_toy_tokenizer

__all__ = ["Backbone", "load_backbone", "TOY_WEIGHTS_DIR", "ToyBackboneConfig",
           "make_toy_tokenizer", "AttributeClassifier"]
