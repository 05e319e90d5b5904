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
# # 09 · NeuralDiffuser: primary-visual-feature guidance (κ, η)
# Reconstruction is NeuralDiffuser's Algorithm 1 on the shared denoising loop: img2img from the decoded
# latent `ẑ` at `strength`, classifier-free guidance on the decoded text condition `ĉ`, and for the first
# share **η** of the steps the gradient of `κ · Σ_l ‖f_g^l(D(ẑ_t)) − ĝ^l‖²` — the decoded estimate's
# image-encoder features pulled towards the decoded ones `ĝ^l` (Eq. 12, 14). The paper's Tab. 2: raising
# κ from 0 raises the low-level figures (PixCorr, SSIM, AlexNet(2)); a very large κ lowers the high-level
# ones; at a fixed κ a smaller η keeps most of the low-level gain and costs less time.
# Default: the shipped toy reconstructor (`brainrecon/weights/neuraldiffuser_toy`, notebook 08's recipe).

# %% tags=["parameters"]
RECONSTRUCTOR = None      # a reconstructor folder (notebook 08's run/reconstructor); None: the shipped one
WORLD_PRESET = None       # None: the world the reconstructor names (the default toy world)
SUBJECT = None            # None: the reconstructor's subject
N_TEST = 24               # held-out scans reconstructed at every setting
NUM_INFERENCE_STEPS = 25
STRENGTH = 0.75           # Algorithm 1's img2img start from ẑ
KAPPAS = [0.0, 1e-3, 1e-2, 1e-1]
ETAS = [0.2, 1.0]
N_SHOW = 6
SEED = 0
THREADS = 1
OUTPUT_DIR = "runs/09_feature_guidance"

# %%
import time
from pathlib import Path

import pandas as pd
import torch

from brainrecon.io import write_json
from brainrecon.metrics import plot_reconstruction_grid
from brainrecon.plotting import save_figure
from brainrecon.sampling import (feature_guidance_label, load_reconstructor, make_demo_world, make_test_maps,
                                 plot_kappa_eta, reconstruct, score_trivial_baselines, sweep_feature_guidance)

torch.set_num_threads(THREADS)
out = Path(OUTPUT_DIR)
pipe = load_reconstructor(RECONSTRUCTOR, method="neuraldiffuser")   # backbone attached: D and f_g for Eq. 14
world = make_demo_world(pipe, WORLD_PRESET)
subject = SUBJECT or pipe.info.get("subject", "subj01")
test = make_test_maps(pipe, world, subject, n_test=N_TEST)
pipe.info

# %% [markdown]
# ## κ × η on held-out scans
# The same scans and seeds at every setting (κ = 0: no guidance, run once), scored by the evaluation suite
# (toy feature set); beside them the trivial baselines every reconstruction must beat.

# %%
sweep = sweep_feature_guidance(pipe, test["maps"], test["targets"], kappas=KAPPAS, etas=ETAS, strength=STRENGTH,
                               seed=SEED, num_inference_steps=NUM_INFERENCE_STEPS)
train_images = world.scenes.images[world.subjects[subject].train_images]
baselines = score_trivial_baselines(sweep["images"][(0.0, float(ETAS[0]))], test["targets"], train_images)
mean_image = baselines.pop("mean_image_pixels")
table = pd.DataFrame(sweep["rows"])
table

# %%
fig = plot_kappa_eta(sweep["rows"], baselines)
save_figure(fig, out / "kappa_eta.png")
fig

# %%
rows = {feature_guidance_label(k, e): imgs[:N_SHOW] for (k, e), imgs in sweep["images"].items()}
rows["training mean"] = mean_image[None].expand(min(N_SHOW, len(test["targets"])), -1, -1, -1)
fig = plot_reconstruction_grid(rows, test["targets"][:N_SHOW], n=N_SHOW)
save_figure(fig, out / "kappa_eta_grid.png")
fig

# %% [markdown]
# ## What guidance costs
# Only the first η of the steps run with gradients (through the VAE decoder and the image encoder); the
# others run as plain img2img. Seconds per image, the same scans, unguided and at each η:

# %%
def seconds_per_image(**kw):
    t0 = time.perf_counter()
    reconstruct(pipe, test, seed=SEED, strength=STRENGTH, num_inference_steps=NUM_INFERENCE_STEPS, progress=False,
                **kw)
    return (time.perf_counter() - t0) / len(test["targets"])

kappa = max(KAPPAS)
timing = {"unguided": seconds_per_image(feature_guidance_scale=0.0)}
steps_run, guided_steps = pipe.num_steps_run, {}
for e in ETAS:
    timing[f"eta={e:g}"] = seconds_per_image(feature_guidance_scale=kappa, feature_guidance_strength=e)
    guided_steps[f"eta={e:g}"] = pipe.num_guided_steps        # what the last call guided
print({k: f"{v:.3f} s ({v / timing['unguided']:.2f}×)" for k, v in timing.items()},
      f"guided steps of {steps_run}:", guided_steps)

# %%
write_json(out / "metrics.json", {
    "sweep": sweep["rows"], "baselines": baselines, "n_test": len(test["targets"]), "subject": subject,
    "strength": STRENGTH, "num_inference_steps": NUM_INFERENCE_STEPS, "seconds_per_image": timing,
    "steps_run": steps_run, "guided_steps": guided_steps, "reconstructor": pipe.info.get("path"),
    "figures": ["kappa_eta.png", "kappa_eta_grid.png"]})

# %% [markdown]
# ## Explore
# Move κ (log scale) and η; the status line says how many of the steps are guided. "κ × η sweep" draws a
# grid of every setting for the shown scans.

# %%
from brainrecon.widgets import view_feature_guidance

view_feature_guidance(pipe, test["maps"], targets=test["targets"], captions=test["captions"], n=4,
                      num_inference_steps=NUM_INFERENCE_STEPS, strength=STRENGTH)
