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
# # 01 · Cortical flatmaps
# NeuroPictor (§3.1) feeds the fMRI encoder 2-D maps of the cortical surface, so that every
# subject lands in one input space. brainrecon projects fsaverage5 vertex values onto nilearn's
# flat meshes with a precomputed sparse barycentric matrix — the same projector for the toy
# world and for NSD's surface betas. Visual areas: Benson-2014 when `neuropythy` is installed,
# else a geometric model fitted to it (`brainrecon.data.fsaverage`).

# %% tags=["parameters"]
PRESET = "default"     # toy world size: "default" or "smoke"
SEED = 0
SUBJECT = "subj01"     # whose responses to show
RESOLUTION = 128       # flatmap side in pixels (64-256); both hemispheres side by side
SHOW_NSD = True        # also project a miniature NSD tree (official file formats) with the same code
OUTPUT_DIR = "runs/01_flatmaps"

# %%
from pathlib import Path

import numpy as np

from brainrecon.data.fsaverage import load_visual_areas
from brainrecon.data.pairs import make_toy_dataset
from brainrecon.data.surface import FlatmapProjector, plot_flatmap
from brainrecon.data.toyworld import ToyWorldConfig, make_toyworld
from brainrecon.io import write_json
from brainrecon.plotting import save_figure

out = Path(OUTPUT_DIR)
config = ToyWorldConfig.smoke if PRESET == "smoke" else ToyWorldConfig
world = make_toyworld(config(seed=SEED))
areas = load_visual_areas("geometric")
projector = FlatmapProjector(RESOLUTION)
crop = FlatmapProjector(RESOLUTION, crop="visual")
projector, crop

# %% [markdown]
# ## Visual areas and retinotopy on the flat surface
# Left hemisphere on the left; the posterior cut (calcarine sulcus) is where V1 lies.

# %%
fig_areas = plot_flatmap(np.nan_to_num(np.log(areas.eccentricity)),
                         projector, title="log eccentricity (deg) with visual areas", cmap="magma")
save_figure(fig_areas, out / "areas.png")
fig_areas

# %% [markdown]
# ## Contralateral retinotopy
# A disc in the right visual field drives the *left* hemisphere's early visual cortex.

# %%
size = world.config.image_size
yy, xx = np.mgrid[:size, :size]
disc = ((xx - 0.75 * size) ** 2 + (yy - size / 2) ** 2) < (size / 7) ** 2
stimuli = np.full((2, size, size, 3), 128, np.uint8)
stimuli[0][disc] = 255                       # right-field disc
stimuli[1][disc[:, ::-1]] = 255              # mirrored: left-field disc
resp = world.encoding_model(stimuli) - world.encoding_model(np.full((1, size, size, 3), 128, np.uint8))
early = areas.mask("early")
left, right = early.copy(), early.copy()
left[10242:], right[:10242] = False, False
contralateral_ratio = float(np.abs(resp[0, left]).mean() / np.abs(resp[0, right]).mean())
fig_disc = plot_flatmap(resp[0], crop, title=f"right-field disc (L/R early = {contralateral_ratio:.1f})")
save_figure(fig_disc, out / "contralateral.png")
fig_disc

# %% [markdown]
# ## A subject's responses: projection and back-projection
# Each subject has its own vertex subset; `vertices=` places it on the shared map. The
# back-projection (image → vertices) recovers the subject's noise-free response map the
# better, the finer the map: at 64² a whole-cortex pixel spans about 10 mm of flat cortex.

# %%
s = world.subject(SUBJECT)
image = int(world.test_images[0])
x = s.responses[s.trial_image == image].mean(0)
signal = s.encode(world.scenes.images[[image]])[0]
roundtrip = {}
for r in (RESOLUTION, 2 * RESOLUTION):
    p = FlatmapProjector(r)
    covered = p.vertex_mask[s.vertices]
    back = p.inverse(p.transform(signal, vertices=s.vertices))[s.vertices]
    roundtrip[r] = float(np.corrcoef(signal[covered], back[covered])[0, 1])
print({f"{r}px": round(c, 3) for r, c in roundtrip.items()})
flat = projector.transform(x, vertices=s.vertices)
fig_subject = plot_flatmap(flat, projector, title=f"{SUBJECT}, test image {image} (mean of repeats)")
save_figure(fig_subject, out / "subject_flatmap.png")
fig_subject

# %% [markdown]
# ## The same projector on NSD-format data
# A miniature NSD tree in the official layout (fsaverage `.mgh` betas, `nsd_expdesign.mat`,
# `nsd_stimuli.hdf5`) is read with `load_nsd` and projected by the same code. Point
# `load_nsd` at a real NSD root for real data (`data_cards/nsd.md`).

# %%
nsd_shape = None
if SHOW_NSD:
    from brainrecon.data.nsd import load_nsd
    from brainrecon.data.nsd_fixture import make_nsd_fixture

    root = make_nsd_fixture(out / "nsd_fixture", n_sessions=1, spaces=("fsaverage",), overwrite=True)
    nsd = load_nsd(root, subject=1, space="fsaverage", sessions=[1])
    nsd_maps = projector.transform(nsd.betas[:4], vertices=nsd.vertices)
    nsd_shape = list(nsd_maps.shape)
    save_figure(plot_flatmap(nsd_maps[0], projector, title="NSD-format subj01, first row"),
                out / "nsd_flatmap.png")

# %%
write_json(out / "metrics.json", {
    "resolution": list(projector.resolution),
    "crop_resolution": list(crop.resolution),
    "pixel_coverage": float(projector.pixel_mask.mean()),
    "contralateral_ratio": contralateral_ratio,
    "roundtrip_corr": roundtrip[RESOLUTION],
    "roundtrip_corr_2x": roundtrip[2 * RESOLUTION],
    "nsd_map_shape": nsd_shape,
    "figures": ["areas.png", "contralateral.png", "subject_flatmap.png"]
               + (["nsd_flatmap.png"] if SHOW_NSD else []),
})

# %% [markdown]
# ## Explore
# Pick a subject and an image; toggle the visual-area outlines. (Interactive only: papermill
# does not keep widget state, so CI asserts on `metrics.json` above.)

# %%
from brainrecon.widgets import view_flatmap

view_flatmap(make_toy_dataset(world, split="test", projector=projector))
