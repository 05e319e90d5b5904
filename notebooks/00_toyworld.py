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
# # 00 · The toy world
# brainrecon's embedded default world: procedural scenes with captions, and a simulated
# multi-subject fMRI experiment on the real fsaverage5 cortical surface (retinotopic early
# visual cortex, category/colour-selective higher areas, per-subject anatomy, gain and noise,
# 3 repeats per image, a shared test set). See `data_cards/toyworld.md`.

# %% tags=["parameters"]
PRESET = "default"   # "default" (the documented world, ~1 min) or "smoke" (seconds)
SEED = 0             # the world is deterministic given the seed
N_SUBJECTS = 8       # at least 8 in the default world
RESOLUTION = 128     # flatmap side in pixels
OUTPUT_DIR = "runs/00_toyworld"

# %%
from pathlib import Path

from brainrecon.data.scenes import CATEGORIES, plot_scenes
from brainrecon.data.surface import FlatmapProjector
from brainrecon.data.toyworld import (ToyWorldConfig, make_toyworld, plot_noise_ceiling,
                                      plot_subject_vertices)
from brainrecon.io import write_json
from brainrecon.plotting import plot_subject_flatmaps, save_figure

out = Path(OUTPUT_DIR)
config = ToyWorldConfig.smoke if PRESET == "smoke" else ToyWorldConfig
world = make_toyworld(config(seed=SEED, n_subjects=N_SUBJECTS))
world

# %% [markdown]
# ## Scenes and captions
# 1–3 objects of several shape categories, colours, positions, sizes and rotations on varied
# backgrounds; the caption mentions the main (largest) object first.

# %%
fig_scenes = plot_scenes(world.scenes.subset(world.test_images[:8]))
save_figure(fig_scenes, out / "scenes.png")
fig_scenes

# %% [markdown]
# ## Subjects: native vertices and responses on the flatmap
# Each subject samples its own subset of fsaverage5 vertices (voxel counts differ), so only
# the flatmap puts every subject in one space.

# %%
fig_vertices = plot_subject_vertices(world, world.subject_ids[0])
save_figure(fig_vertices, out / "subject_vertices.png")
fig_flatmaps = plot_subject_flatmaps(world, FlatmapProjector(RESOLUTION, crop="visual"))
save_figure(fig_flatmaps, out / "flatmaps.png")
fig_flatmaps

# %% [markdown]
# ## Signal-to-noise per area
# NSD-style noise ceiling (Allen et al. 2022): NC = 100 · ncsnr² / (ncsnr² + 1/n), for one trial
# and for the average of the repeats.

# %%
nc = world.noise_ceiling()
fig_nc = plot_noise_ceiling(world)
save_figure(fig_nc, out / "noise_ceiling.png")
nc.groupby("area", sort=False)[["n_vox", "nc", "nc_avg"]].mean().round(1)

# %%
counts = [world.subject(s).n_vox for s in world.subject_ids]
mean_nc = nc.groupby("area")["nc"].mean()
write_json(out / "metrics.json", {
    "n_subjects": len(world.subject_ids),
    "voxel_counts": counts,
    "voxel_count_spread": (max(counts) - min(counts)) / min(counts),
    "repeats": world.config.n_repeats,
    "n_test_images": len(world.test_images),
    "n_images": len(world.scenes),
    "n_categories": len(CATEGORIES),
    "noise_ceiling": {a: float(v) for a, v in mean_nc.items()},
    "figures": ["scenes.png", "subject_vertices.png", "flatmaps.png", "noise_ceiling.png"],
})
