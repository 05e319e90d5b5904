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
# # 08 · NeuralDiffuser: voxel decoders and bidirectional retrieval
# NeuralDiffuser (§4) reads a subject's **voxels** (no flatmap): a subject-specific linear layer maps them
# into a shared space, and three decoders map that space to the text condition `ĉ` (`f_c`), the VAE
# latent `ẑ` (`f_z`) and image-encoder features `ĝ^l` (`f_g^l`, Eq. 13). Training: multi-subject
# pre-training on the other subjects, then fine-tuning on this one (§4.2.3), with MixCo (Eq. 1) and then
# soft-CLIP (Eq. 2) contrastive terms beside the MSE / MAE ones. This notebook trains them and checks
# each decoder against trivial baselines on held-out scans; notebook 09 reconstructs with them
# (Algorithm 1, feature guidance κ × η).

# %% tags=["parameters"]
PRESET = "default"        # "default" (toy recipe, ~5 min on one thread) or "smoke" (seconds)
RUN_DIR = None            # a finished train_neuraldiffuser folder; None: train here (resumes)
SUBJECT = "subj01"
SEED = 0
THREADS = 1
OUTPUT_DIR = "runs/08_neuraldiffuser_decoders"

# %%
import json
from pathlib import Path

from brainrecon.data.toyworld import ToyWorldConfig, make_toyworld
from brainrecon.io import write_json
from brainrecon.plotting import save_figure
from brainrecon.sampling import evaluate_retrieval, load_reconstructor, make_test_maps
from brainrecon.training.neuraldiffuser import NeuralDiffuserConfig, plot_decoder_scores, train_neuraldiffuser
from brainrecon.training.plots import plot_stage_losses

out = Path(OUTPUT_DIR)
world = make_toyworld(ToyWorldConfig.smoke(seed=SEED) if PRESET == "smoke" else ToyWorldConfig(seed=SEED))
if RUN_DIR is None:
    RUN_DIR = train_neuraldiffuser(getattr(NeuralDiffuserConfig, PRESET)(
        output_dir=str(out / "run"), subject=SUBJECT, seed=SEED, threads=THREADS), world=world)
run = json.loads((Path(RUN_DIR) / "metrics.json").read_text())
{k: run["losses"][k] for k in run["losses"]}

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
# ## Bidirectional retrieval
# Brain → image: which of the candidate images a scan's decoded embedding is nearest to; image → brain:
# the reverse. The field's protocol (MindEye's, the evaluation suite's): 30 draws of min(300, N)
# candidates, top-1. On the scans the training run scored, the saved reconstructor reproduces its figures.

# %%
pipe = load_reconstructor(Path(RUN_DIR) / "reconstructor")       # its backbone attached (image encoder)
test = make_test_maps(pipe, world, SUBJECT, n_test=run["n_test"])
retrieval = evaluate_retrieval(pipe, test)
retrieval.pop("table")
print(json.dumps(retrieval, indent=1))

# %%
write_json(out / "metrics.json", {
    "decoders": {k: run[k] for k in run if isinstance(run[k], dict) and "error" in run[k]},
    "retrieval": retrieval, "retrieval_in_training": run.get("retrieval"), "n_test": len(test["targets"]),
    "reconstructor": str(Path(RUN_DIR) / "reconstructor"), "figures": ["decoder_scores.png"]})
