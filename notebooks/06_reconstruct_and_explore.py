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
# # 06 · Reconstruct and explore
# A trained NeuroPictor reconstructor turns held-out fMRI scans into images through
# `BrainToImagePipeline` (a diffusers pipeline): the flatmap is encoded once (`S^r = E(S)`,
# NeuroPictor Eq. 1), the High-Level Guiding Network gives the semantic condition `F^sem`
# (Eq. 2–4) and the Low-Level Manipulation Network adds residuals to the frozen U-Net scaled by
# the **control scale α** (Eq. 7). Classifier-free guidance swaps `F^sem` for the empty caption in
# its unconditional branch and keeps the fMRI control, as the official code does. The **semantic
# swap** gives one scan's high-level features to another scan's low-level ones.
#
# `RECONSTRUCTOR` is a reconstructor folder (`model/` + `backbone.json`, as `refine_subject` in
# notebook 05 writes it); `None` is the shipped toy one (`data_cards/neuropictor_toy.md`). The
# toy world is the one it was trained on (its `run.json`), unless `WORLD_PRESET` says otherwise.
# The same report from the shell: `brainrecon demo --out DIR`.

# %% tags=["parameters"]
RECONSTRUCTOR = None        # reconstructor folder; None: brainrecon/weights/neuropictor_toy
OUTPUT_DIR = "runs/06_reconstruct_and_explore"
WORLD_PRESET = None         # None: the reconstructor's toy world; "default" or "smoke"
SUBJECT = None              # None: the subject the reconstructor was refined on
N_TEST = 24                 # held-out shared test scans scored
NUM_INFERENCE_STEPS = None  # None: the reconstructor's default
ALPHAS = [0.0, 0.5, 1.0, 1.5]  # control scales of the sweep figure
N_SHOW = 6                  # scans in the grids
N_SWAP = 4                  # layout × semantic sources in the swap grid
SEED = 0                    # scan i always uses the generator SEED + i
THREADS = 1                 # torch threads (the toy models gain nothing from more)

# %%
import time
from pathlib import Path

import torch

from brainrecon.data.surface import plot_flatmap
from brainrecon.io import write_json
from brainrecon.metrics import plot_reconstruction_grid
from brainrecon.plotting import save_figure
from brainrecon.sampling import (evaluate_reconstructor, load_reconstructor, make_test_maps, plot_control_sweep,
                                 plot_swap_grid, reconstruct, swap_grid, sweep_control_scale)
from brainrecon.sampling.demo import make_demo_world
from brainrecon.widgets import view_reconstruction

torch.set_num_threads(THREADS)
out = Path(OUTPUT_DIR)
out.mkdir(parents=True, exist_ok=True)
t0 = time.perf_counter()
pipe = load_reconstructor(RECONSTRUCTOR)
world = make_demo_world(pipe, WORLD_PRESET)
subject = SUBJECT or pipe.info.get("subject") or world.subject_ids[0]
steps = NUM_INFERENCE_STEPS or pipe.config.default_num_inference_steps
data = make_test_maps(pipe, world, subject, N_TEST)
print(f"reconstructor: {pipe.info.get('path')} (stage {pipe.info.get('stage')}, maps {pipe.map_shape}, "
      f"CFG {pipe.config.default_guidance_scale}, {steps} steps); {subject}: {len(data['maps'])} test scans")

# %% [markdown]
# ## The input: flatmaps of held-out scans
# Repeat-averaged responses of the shared test images, projected with the reconstructor's own
# flatmap settings (`pipe.make_projector()`).

# %%
from brainrecon.figures import Figure

fig_maps = Figure(figsize=(3.2 * min(N_SHOW, 4), 2.6))
for ax, m, cap in zip(fig_maps.subplots(1, min(N_SHOW, 4)), data["maps"], data["captions"]):
    plot_flatmap(m, pipe.make_projector(), ax=ax, colorbar=False)
    ax.set_title(cap[:36], fontsize=7)
save_figure(fig_maps, out / "flatmaps.png")
fig_maps

# %% [markdown]
# ## Reconstructions
# One pipeline call per batch; every scan has its own seeded generator, so an image does not
# depend on the batch it was drawn in.

# %%
images = reconstruct(pipe, data, indices=range(min(N_SHOW, len(data["maps"]))), seed=SEED,
                     num_inference_steps=steps)["images"]
fig_rec = plot_reconstruction_grid({"NeuroPictor": images}, data["targets"][:len(images)], titles=data["captions"])
save_figure(fig_rec, out / "reconstructions.png")
fig_rec

# %% [markdown]
# ## Control scale α (Eq. 7, Fig. 6 of the paper)
# α = 0 keeps only the high-level semantics; larger α lets the LLMN impose the scan's low-level
# layout. Same scans, same seeds in every row.

# %%
sweep = sweep_control_scale(pipe, data["maps"][:N_SHOW], alphas=ALPHAS, seed=SEED, num_inference_steps=steps)
fig_sweep = plot_control_sweep(sweep, data["targets"][:N_SHOW])
save_figure(fig_sweep, out / "alpha_sweep.png")
fig_sweep

# %% [markdown]
# ## Acceptance figures: α = 1 vs 0, CFG 0 vs default, and the semantic swap
# Scored with `brainrecon.metrics.evaluate` (toy feature set, exact attribute scores from the
# scenes' ground truth). For the swap, each scan gets a partner of another category whose main
# object sits elsewhere; the share of swaps whose category follows the semantic source and whose
# position stays with the low-level (layout) source says whether the two pathways separate.

# %%
res = evaluate_reconstructor(pipe, world, subject, alphas=(0.0, 1.0), guidance_scales=(0.0, None), n_test=N_TEST,
                             seed=SEED, num_inference_steps=steps)
figures = res["metrics"]
keep = ["ssim", "pixcorr", "clip", "category_acc", "colour_acc", "position_error"]
table = res["table"][res["table"].metric.isin(keep)].pivot(index="condition", columns="metric", values="value")
print(table[keep].round(3).to_string())
print({k: round(v, 3) for k, v in figures["swap"].items()})

# %%
partners = res["swap_partners"]
a_idx = list(range(min(N_SWAP, len(data["maps"]))))
b_idx = [int(partners[i]) for i in a_idx]
grid = swap_grid(pipe, data["maps"][a_idx], data["maps"][b_idx], seed=SEED, num_inference_steps=steps)
fig_swap = plot_swap_grid(grid, data["targets"][a_idx], data["targets"][b_idx])
save_figure(fig_swap, out / "swap_grid.png")
fig_swap

# %% [markdown]
# ## Explore interactively
# α and CFG sliders resample a live grid (same seeds); the pickers choose the layout and the
# semantic source of a swap, next to the input flatmap. (Not asserted in CI: executed notebooks
# keep no widget state.)

# %%
view = view_reconstruction(pipe, data, n=min(4, N_SHOW), seed=SEED, num_inference_steps=steps)
view

# %%
files = ["flatmaps.png", "reconstructions.png", "alpha_sweep.png", "swap_grid.png"]
write_json(out / "metrics.json", {**figures, "reconstructor": pipe.info.get("path"), "map_shape": list(pipe.map_shape),
                                  "image_shape": list(images.shape[1:]), "alphas_swept": ALPHAS,
                                  "sweep_alpha_change": {f"{a:g}": float((sweep[a] - sweep[ALPHAS[0]]).abs().mean())
                                                         for a in sweep},
                                  "figures": files, "seconds": time.perf_counter() - t0})
print(f"wrote {out}/metrics.json in {time.perf_counter() - t0:.0f} s")
