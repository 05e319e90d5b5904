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
# # 07 · Evaluating reconstructions
# The field's standard metrics, computed exactly as MindEye / brain-diffuser compute them
# (`data_cards/metrics.md`): PixCorr and SSIM on the 256→425 resize chain, two-way
# identification with AlexNet(2), AlexNet(5), Inception and CLIP, EffNet-B and SwAV
# correlation distances, an n-way semantic score, brain correlation per visual area and —
# in the toy world — exact attribute scores (category, colour, position) from the scenes'
# ground truth. Without the published network weights the toy-CLIP stand-ins answer for
# them (`FEATURE_SET = "toy"`; `"auto"` picks the real networks when every file is in
# `WEIGHTS_DIR`).
#
# `RESULTS_DIR` is a results folder written by any reconstruction stage
# (`brainrecon.metrics.save_results`); left at `None`, the notebook makes one from the toy
# world's test images, blurred, noised and partly shuffled, so there is something to score.
# The same evaluation runs from the shell: `brainrecon evaluate DIR`.

# %% tags=["parameters"]
RESULTS_DIR = None          # a results folder; None: build a degraded toy one in OUTPUT_DIR/results
OUTPUT_DIR = "runs/07_evaluate"
FEATURE_SET = "auto"        # "auto", "real" (published weights from WEIGHTS_DIR) or "toy"
WEIGHTS_DIR = None          # folder with the real networks' weights (data_cards/metrics.md)
BACKBONE = "toy"            # toy feature set backbone: "toy" for the shipped weights, or a folder
PROTOCOL = "mindeye"        # "mindeye", "neuropictor" or "brain-diffuser"
N_IMAGES = 100              # toy test images when RESULTS_DIR is None
BLUR = 1.5                  # degradation of the toy results: Gaussian blur (px)
NOISE = 0.08                # ... pixel noise SD
SHUFFLE = 0.25              # ... share of reconstructions swapped with other test images
N_SHOW = 8                  # columns of the reconstruction grid
SEED = 0

# %%
import json
import time
from pathlib import Path

import numpy as np

from brainrecon.io import write_json
from brainrecon.metrics import (evaluate, evaluate_folder, load_results, make_degraded_results, metrics_dict,
                                plot_metrics, plot_reconstruction_grid)
from brainrecon.plotting import save_figure

out = Path(OUTPUT_DIR)
out.mkdir(parents=True, exist_ok=True)
world = None
if RESULTS_DIR is None:
    from brainrecon.data.toyworld import ToyWorldConfig, make_toyworld

    world = make_toyworld(ToyWorldConfig.smoke(n_test=N_IMAGES, n_subjects=1), progress=False)
    RESULTS_DIR = make_degraded_results(out / "results", world=world, blur=BLUR, noise=NOISE, shuffle=SHUFFLE,
                                        seed=SEED)
results = load_results(RESULTS_DIR)
print(f"{len(results)} reconstructions of {results.meta['method']!r} ({results.meta['world']} world, "
      f"subject {results.meta['subject']})")

# %% [markdown]
# ## The metric table
# One row per metric: the mean over images, a 95% normal confidence interval (over the 30
# retrieval batches for retrieval), chance where it is defined, and whether higher is better.

# %%
t0 = time.perf_counter()
table = evaluate_folder(RESULTS_DIR, out=out / "results_metrics.json", feature_set=FEATURE_SET,
                        weights_dir=WEIGHTS_DIR, backbone=BACKBONE, protocol=PROTOCOL, world=world)
seconds = time.perf_counter() - t0
feature_set = next(iter(table.feature_set.dropna()), None)
print(f"feature set: {feature_set}; {seconds:.1f} s for {len(results)} images")
table[["label", "group", "value", "ci_low", "ci_high", "chance", "higher_is_better"]].round(4)

# %% [markdown]
# ## Where the numbers sit: identical images and shuffled pairs
# The same suite on the targets themselves (the best possible score) and on targets paired
# with the wrong reconstructions (chance level for identification).

# %%
rng = np.random.default_rng(SEED)
kw = dict(feature_set=FEATURE_SET, weights_dir=WEIGHTS_DIR, backbone=BACKBONE, protocol=PROTOCOL,
          metrics=["pixcorr", "ssim", "alexnet2", "alexnet5", "inception", "clip", "effnet", "swav"])
identity = evaluate(results.targets, results.targets, **kw)
shuffled = evaluate(results.reconstructions[rng.permutation(len(results))], results.targets, **kw)
fig = plot_metrics({"identical": identity, results.meta["method"] or "results": table, "shuffled": shuffled},
                   title="Evaluation suite")
save_figure(fig, out / "metrics.png")
fig

# %%
fig = plot_reconstruction_grid({"reconstruction": results.reconstructions}, results.targets, n=N_SHOW,
                               seed=SEED)
save_figure(fig, out / "reconstructions.png")
fig

# %%
summary = {
    "metrics": metrics_dict(table),
    "identity": metrics_dict(identity),
    "shuffled": metrics_dict(shuffled),
    "n": len(results),
    "feature_set": feature_set,
    "protocol": PROTOCOL,
    "seconds": seconds,
    "results_dir": str(RESULTS_DIR),
}
write_json(out / "metrics.json", summary)
print(json.dumps(summary["metrics"], indent=1))
