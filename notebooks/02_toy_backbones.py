# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · What the toy backbones learned
# The toy world's stand-ins for Stable Diffusion 2.1: a tiny VAE, a toy CLIP (text + image
# towers) and a text-conditioned U-Net, trained by brainrecon on toy scenes
# (`brainrecon backbones train`). This notebook shows VAE reconstructions, toy-CLIP
# retrieval and caption→image samples at several guidance scales, on held-out scenes.
# The recipe and the reference figures are in `data_cards/toy_backbones.md`.
# A real SD checkpoint folder works the same way: set `BACKBONE` to its path.

# %% tags=["parameters"]
BACKBONE = "toy"           # "toy" (shipped weights), or a folder in diffusers' SD layout
TRAIN_PRESET = None        # "quick" / "default": first train from scratch into OUTPUT_DIR/backbones
OUTPUT_DIR = "runs/02_toy_backbones"
N_EVAL = 200               # held-out images for the VAE PSNR and attribute accuracy
N_RETRIEVAL = 100          # held-out caption-image pairs for CLIP retrieval
N_GENERATE = 100           # held-out captions for the text-to-image attribute match
NUM_INFERENCE_STEPS = 25   # DDIM steps
GUIDANCE_SCALES = [0.0, 1.0, 3.0, 5.0]   # columns of the sample grid
N_SHOW = 6                 # rows of the figures
SEED = 0

# %%
import json
from pathlib import Path

import torch

from brainrecon.backbones import ToyBackboneConfig, load_backbone
from brainrecon.metrics.backbones import (evaluate_backbone, heldout_scenes, images_to_tensor,
                                           plot_backbone_samples, plot_retrieval, plot_vae_reconstructions)
from brainrecon.training import train_toy_backbones

out = Path(OUTPUT_DIR)
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(SEED)
if TRAIN_PRESET:
    preset = ToyBackboneConfig.quick() if TRAIN_PRESET == "quick" else ToyBackboneConfig.default()
    BACKBONE = str(train_toy_backbones(preset, out / "backbones", evaluate=False))
backbone = load_backbone(BACKBONE)
print(f"image {backbone.image_size}px, latents {backbone.latent_channels}×{backbone.image_size // backbone.vae_scale_factor}², "
      f"text {backbone.text_length}×{backbone.text_embed_dim}, default guidance {backbone.guidance_scale}")

# %%
scenes = heldout_scenes(max(N_EVAL, N_RETRIEVAL, N_SHOW), backbone.image_size,
                        backbone.metadata.get("heldout_seed", 10_000))
images = images_to_tensor(scenes.images)
fig = plot_vae_reconstructions(backbone, images, n=N_SHOW)
fig.savefig(out / "vae_reconstructions.png", dpi=120)

# %%
if backbone.image_encoder is not None:
    fig = plot_retrieval(backbone, images, scenes.captions, n=min(16, N_RETRIEVAL))
    fig.savefig(out / "clip_retrieval.png", dpi=120)

# %%
fig = plot_backbone_samples(backbone, scenes.captions[:N_SHOW], GUIDANCE_SCALES,
                            num_inference_steps=NUM_INFERENCE_STEPS, seed=SEED)
fig.savefig(out / "samples.png", dpi=120)

# %% [markdown]
# The held-out figures. Besides PSNR, retrieval and the text-to-image attribute match:
# `attr_classifier_vae_*` is how the attribute classifier reads the VAE's own reconstructions (what a
# perfect generator would score), and `clip_hard_negative_category` / `_colour` how often toy CLIP
# prefers a caption to the same caption with the main object's category / colour word swapped
# (chance 0.5): whether the text features the U-Net reads know the shape at all.

# %%
metrics = evaluate_backbone(backbone, n_eval=N_EVAL, n_retrieval=N_RETRIEVAL, n_generate=N_GENERATE,
                            heldout_seed=backbone.metadata.get("heldout_seed", 10_000),
                            guidance_scales=(None, 1.0, 0.0), num_inference_steps=NUM_INFERENCE_STEPS, seed=SEED)
metrics["backbone"] = str(BACKBONE)
(out / "metrics.json").write_text(json.dumps(metrics, indent=2))
metrics
