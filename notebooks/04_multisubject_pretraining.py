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
# # 04 · Stage ii: multi-subject pre-training
# With every subject in one flatmap space (stage i), NeuroPictor trains one fMRI-to-image model
# on all subjects' pairs (§3.4): the calibrated encoder, the **High-Level Guiding Network**
# (fMRI → text-condition space, Eq. 2) and the **Low-Level Manipulation Network** (a trainable
# copy of the U-Net encoder fed by the feature transformation, Eq. 5–7) learn together, while
# the U-Net, VAE and text encoder stay frozen. Loss: the denoising error `L_dif` (Eq. 8) plus
# `λ·L_sem`, the MSE between the fMRI-to-text features and the caption's text features
# (Eq. 3, 9). A last phase replaces 5 % of semantic conditions with the empty caption's
# embedding so that classifier-free guidance works at sampling time (§4.1).

# %% tags=["parameters"]
PRESET = "default"        # "default" (the shipped recipe, ~6 min) or "smoke" (seconds)
ENCODER_DIR = None        # a stage-i folder (notebook 03); None: train stage i here first
EXCLUDE_SUBJECTS = []     # subjects left out (e.g. ["subj08"] for a held-out subject)
STEPS = None              # main-phase steps; None: the preset's
CFG_STEPS = None          # CFG-phase steps; None: the preset's
SEMANTIC_WEIGHT = 0.1     # λ of Eq. 9 (the official code uses 0 in this stage)
SEED = 0
THREADS = 1
SHOW_SUBJECT = "subj01"   # whose held-out scans are reconstructed below
N_SHOW = 6
NUM_INFERENCE_STEPS = 25
OUTPUT_DIR = "runs/04_multisubject_pretraining"

# %%
import json
from pathlib import Path

from brainrecon.data.toyworld import ToyWorldConfig, make_toyworld
from brainrecon.io import write_json
from brainrecon.plotting import save_figure
from brainrecon.training.plots import plot_denoising_scores, plot_stage_losses
from brainrecon.training.neuropictor import (EncoderPretrainConfig, MultisubjectConfig, pretrain_encoder,
                                        pretrain_multisubject)

out = Path(OUTPUT_DIR)
world = make_toyworld(ToyWorldConfig.smoke(seed=SEED) if PRESET == "smoke" else ToyWorldConfig(seed=SEED))
if ENCODER_DIR is None:
    ENCODER_DIR = pretrain_encoder(getattr(EncoderPretrainConfig, PRESET)(
        output_dir=str(out / "stage_i"), seed=SEED, threads=THREADS, exclude_subjects=tuple(EXCLUDE_SUBJECTS)),
        world=world)
overrides = {k: v for k, v in dict(steps=STEPS, cfg_steps=CFG_STEPS).items() if v is not None}
config = getattr(MultisubjectConfig, PRESET)(
    output_dir=str(out / "stage_ii"), encoder_dir=str(ENCODER_DIR), exclude_subjects=tuple(EXCLUDE_SUBJECTS),
    semantic_weight=SEMANTIC_WEIGHT, seed=SEED, threads=THREADS, **overrides)
config

# %% [markdown]
# ## Train
# The frozen parts run once before training (flatmaps, VAE latents of the 32-px images, caption
# text features, the empty-caption embedding); every step then samples a batch from all subjects.

# %%
stage_dir = pretrain_multisubject(config, world=world)
m = json.loads((stage_dir / "metrics.json").read_text())
run = json.loads((stage_dir / "run.json").read_text())
print(json.dumps(m["losses"], indent=1))

# %% [markdown]
# ## Loss curves
# Total loss, its denoising part (Eq. 8) and the semantic MSE (Eq. 3, before weighting by λ);
# dashed: the CFG phase.

# %%
fig_loss = plot_stage_losses({"stage ii": stage_dir}, keys=("loss", "diffusion", "semantic", "layout"))
save_figure(fig_loss, out / "loss_curves.png")
fig_loss

# %% [markdown]
# ## Does the brain help the frozen U-Net denoise?
# Held-out scans of the training subjects, fixed noise and timesteps: the U-Net alone with the
# empty caption knows nothing about the scan; with the true caption it knows the scene's words.
# NeuroPictor's prediction uses only the scan. One more bar feeds the LLMN *another* scan's tokens
# (each scan keeps its own semantic condition): if that bar equals NeuroPictor's, the low-level
# pathway has learned a correction that ignores the scan. The toy recipe before its layout probe and
# x0 weighting did exactly that (the bars differed by 0.01 %); the shipped stage ii's differ by 2.5 %
# (`data_cards/neuropictor_toy.md`).

# %%
fig_scores = plot_denoising_scores({"stage ii": stage_dir})
save_figure(fig_scores, out / "denoising.png")
fig_scores

# %% [markdown]
# ## A first look at reconstructions
# The pre-trained model is already a reconstructor (`BrainToImagePipeline`; stage iii refines it
# per subject). Top: seen images; below: reconstructions from the scans.

# %%
from brainrecon.metrics import plot_reconstruction_grid
from brainrecon.sampling import BrainToImagePipeline
from brainrecon.sampling.explore import make_test_maps, reconstruct

pipe = BrainToImagePipeline.from_pretrained(stage_dir)
test = make_test_maps(pipe, world, SHOW_SUBJECT, N_SHOW)
images = reconstruct(pipe, test, seed=SEED, num_inference_steps=NUM_INFERENCE_STEPS)["images"]
fig_recon = plot_reconstruction_grid({"stage ii": images}, test["targets"], n=N_SHOW)
save_figure(fig_recon, out / "reconstructions.png")
fig_recon

# %%
summary = {
    "losses": m["losses"],
    "noise_mse": m["noise_mse"], "noise_mse_semantic_only": m["noise_mse_semantic_only"],
    "noise_mse_shuffled_scan": m["noise_mse_shuffled_scan"],
    "noise_mse_no_brain": m["noise_mse_no_brain"], "noise_mse_true_caption": m["noise_mse_true_caption"],
    "semantic_mse": m["semantic_mse"], "semantic_mse_baseline": m["semantic_mse_baseline"],
    "semantic_cos": m["semantic_cos"], "semantic_cos_baseline": m["semantic_cos_baseline"],
    "subjects": m["subjects"], "wall_time_s": run["wall_time_s"], "steps": run["steps"],
    "stage_dir": str(stage_dir), "encoder_dir": str(ENCODER_DIR),
    "n_reconstructions": int(len(images)), "image_shape": list(images.shape[1:]),
    "figures": ["loss_curves.png", "denoising.png", "reconstructions.png"],
}
write_json(out / "metrics.json", summary)
print(json.dumps({k: v for k, v in summary.items() if k != "losses"}, indent=1))
