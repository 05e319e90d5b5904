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
# # 11 · Contrast, Attend and Diffuse: DC-MAE, cross-modal tuning, LDM conditioning
# CAD (Sun et al. 2023) learns an fMRI representation in two phases before any image is generated.
# **Phase 1**, a double-contrastive MAE (DC-MAE), rebuilds masked voxels of a subject's response vector while
# two InfoNCE terms pull two augmented views of one response together (Eq. 1–3). **Phase 2** tunes it beside an
# image MAE: each auto-encoder's decoder also attends to the other modality's tokens (Eq. 4–7). **Phase 3**
# conditions the LDM on the tuned encoder twice — its tokens, mapped to the U-Net's context, through
# cross-attention, and their mean added to the time embedding — training the encoder and the U-Net's
# cross-attention heads on the denoising loss (Eq. 9), the rest of the LDM frozen. The paper's claim
# (Tab. 2): each phase raises the n-way accuracy of the generated images.
# Default: the shipped toy model (`brainrecon/weights/cad_toy`); `PRESET = "smoke"` trains one here first in about
# a minute (`"default"`: the shipped model's recipe, about 40 minutes on one core).

# %% tags=["parameters"]
RECONSTRUCTOR = None      # a reconstructor folder; None: the shipped one (or the run below when PRESET is set)
PRESET = None             # None: no training; "smoke" / "default": train_cad into OUTPUT_DIR/run first
N_TEST = 12               # held-out scans reconstructed
NUM_INFERENCE_STEPS = 25
N_SHOW = 6
SEED = 0
THREADS = 1
OUTPUT_DIR = "runs/11_contrast_attend_diffuse"

# %%
from pathlib import Path

import pandas as pd
import torch

from brainrecon.backbones import load_backbone
from brainrecon.io import read_json, write_json
from brainrecon.metrics import plot_reconstruction_grid
from brainrecon.plotting import save_figure
from brainrecon.sampling import load_reconstructor, make_demo_world, make_test_maps
from brainrecon.sampling.demo import run_record
from brainrecon.sampling import reconstruct, score_reconstructions
from brainrecon.training.cad import CADConfig
from brainrecon.training.cad_ldm import train_cad

torch.set_num_threads(THREADS)
out = Path(OUTPUT_DIR)
if PRESET is not None:
    fit = getattr(CADConfig, PRESET)(output_dir=str(out / "run"), threads=THREADS)
    RECONSTRUCTOR = str(train_cad(fit) / "reconstructor")               # resumes when rerun
pipe = load_reconstructor(RECONSTRUCTOR, method="cad")
run = read_json(run_record(pipe.info, "metrics.json"), "Train the run again (PRESET).")
world = make_demo_world(pipe)
subject = pipe.info.get("subject", "subj01")
test = make_test_maps(pipe, world, subject, n_test=N_TEST)
pipe.info

# %% [markdown]
# ## Phases 1 and 2: the fMRI auto-encoder
# Held-out masked-voxel error after each phase (the same masks in every row) against predicting the training
# mean response there: what the representation itself learnt.

# %%
pd.DataFrame({k: run[k] for k in ("phase1", "phase2") if k in run}).T

# %% [markdown]
# ## Phase 3: the conditioned U-Net
# Held-out denoising error (Eq. 9, the same noise and timesteps in every column) with each scan's own
# condition, with another scan's, with no brain (the pre-trained U-Net and the empty caption) and with the
# image's true caption (what the text pathway alone can do).

# %%
pd.Series({k: v for k, v in run["ldm"].items() if k.startswith("noise_mse")}).to_frame("noise MSE")

# %% [markdown]
# ## Reconstructions
# Scan `i` from seed `SEED + i`, scored by the evaluation suite (toy feature set; n-way is 10-way, the toy
# judge's categories) and the toy judge, beside the shuffled-scan and training-mean baselines.

# %%
images = reconstruct(pipe, test, seed=SEED, num_inference_steps=NUM_INFERENCE_STEPS, progress=False)["images"]
train_images = world.scenes.images[world.subjects[subject].train_images]
scores = score_reconstructions(images, test, train_images, judge=load_backbone("toy").attribute_classifier)
pd.DataFrame(scores).T

# %%
k = min(N_SHOW, len(test["targets"]))
fig = plot_reconstruction_grid({"CAD": images[:k]}, test["targets"][:k], n=k, titles=test["captions"][:k])
save_figure(fig, out / "reconstructions.png")
fig

# %%
write_json(out / "metrics.json", {
    "frl": {k: run.get(k) for k in ("phase1", "phase2")}, "ldm": run["ldm"], "reconstructions": scores,
    "n_test": int(len(images)), "subject": subject, "num_inference_steps": NUM_INFERENCE_STEPS,
    "guidance_scale": pipe.config.default_guidance_scale, "reconstructor": pipe.info.get("path"),
    "figures": ["reconstructions.png"]})
