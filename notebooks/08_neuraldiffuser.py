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
# # 08 · NeuralDiffuser: voxel decoders and primary-visual-feature guidance
# NeuralDiffuser (§4) reads a subject's **voxels** (no flatmap): a subject-specific linear layer maps them
# into a shared space, and three decoders map that space to the text condition `ĉ` (`f_c`), the VAE
# latent `ẑ` (`f_z`) and image-encoder features `ĝ^l` (`f_g^l`, Eq. 13). Training: multi-subject
# pre-training on the other subjects, then fine-tuning on this one (§4.2.3). Reconstruction
# (Algorithm 1) starts img2img from `ẑ`, conditions on `ĉ`, and for the first share **η** of the steps
# pulls the decoded estimate's features towards `ĝ` with scale **κ** (Eq. 12, 14).

# %% tags=["parameters"]
PRESET = "default"        # "default" (toy recipe) or "smoke" (seconds)
RUN_DIR = None            # a finished train_neuraldiffuser folder; None: train here
SUBJECT = "subj01"
N_TEST = 24               # held-out scans reconstructed
NUM_INFERENCE_STEPS = 25
STRENGTH = 0.75           # Algorithm 1's img2img start from ẑ (the paper's strength)
KAPPAS = [0.0, 1e-4, 1e-3, 1e-2]
ETAS = [0.2, 1.0]
N_SHOW = 6
SEED = 0
THREADS = 1
OUTPUT_DIR = "runs/08_neuraldiffuser"

# %%
import json
from pathlib import Path

from brainrecon.backbones import load_backbone
from brainrecon.data.toyworld import ToyWorldConfig, make_toyworld
from brainrecon.io import write_json
from brainrecon.metrics import plot_reconstruction_grid
from brainrecon.plotting import save_figure
from brainrecon.sampling import load_reconstructor, make_test_maps, sweep_feature_guidance
from brainrecon.training.neuraldiffuser import NeuralDiffuserConfig, plot_decoder_scores, train_neuraldiffuser

out = Path(OUTPUT_DIR)
world = make_toyworld(ToyWorldConfig.smoke(seed=SEED) if PRESET == "smoke" else ToyWorldConfig(seed=SEED))
if RUN_DIR is None:
    RUN_DIR = train_neuraldiffuser(getattr(NeuralDiffuserConfig, PRESET)(
        output_dir=str(out / "run"), subject=SUBJECT, seed=SEED, threads=THREADS), world=world)
run = json.loads((Path(RUN_DIR) / "metrics.json").read_text())

# %% [markdown]
# ## The decoders on held-out scans
# Each decoder's error on the subject's test scans against two baselines: predicting the training mean,
# and the right prediction for the wrong scan (shuffled). Lower is better; a decoder that reads the brain
# beats both.

# %%
fig = plot_decoder_scores(run)
save_figure(fig, out / "decoder_scores.png")
fig

# %% [markdown]
# ## Feature guidance: κ × η
# The same scans and seeds at every setting (κ = 0: no guidance), scored by the evaluation suite.

# %%
bb = load_backbone("toy")
pipe = load_reconstructor(Path(RUN_DIR) / "reconstructor")
pipe.conditioner.attach_backbone(bb)
test = make_test_maps(pipe, world, SUBJECT, n_test=N_TEST)
sweep = sweep_feature_guidance(pipe, test["maps"], test["targets"], kappas=KAPPAS, etas=ETAS, strength=STRENGTH,
                               seed=SEED, num_inference_steps=NUM_INFERENCE_STEPS)
rows = {("κ = 0" if k == 0 else f"κ = {k:g}, η = {e:g}"): imgs[:N_SHOW] for (k, e), imgs in sweep["images"].items()}
fig = plot_reconstruction_grid(rows, test["targets"][:N_SHOW], n=N_SHOW)
save_figure(fig, out / "kappa_eta_grid.png")
fig

# %%
import pandas as pd

table = pd.DataFrame(sweep["rows"])
write_json(out / "metrics.json", {"decoders": {k: run[k] for k in run if isinstance(run[k], dict) and "error" in run[k]},
                                  "retrieval": {k: run.get(k) for k in ("brain_to_image_top1", "image_to_brain_top1",
                                                                        "two_way", "chance_top1")},
                                  "sweep": sweep["rows"], "n_test": len(test["targets"])})
table

# %% [markdown]
# ## Explore
# Move κ (log scale) and η; the status line says how many steps are guided. "κ × η sweep" draws a grid.

# %%
from brainrecon.widgets import view_feature_guidance

view_feature_guidance(pipe, test["maps"], targets=test["targets"], captions=test["captions"], n=4,
                      num_inference_steps=NUM_INFERENCE_STEPS, strength=STRENGTH)
