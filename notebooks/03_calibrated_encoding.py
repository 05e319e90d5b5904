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
# # 03 · Stage i: calibrated encoding
# NeuroPictor (§3.1) first learns one fMRI latent space for every subject: a masked
# auto-encoder over the 2-D cortical flatmaps whose decoder sees **only the guide token** — every
# patch position is a mask token — so the whole map must pass through that one token. Afterwards
# the decoder is dropped and the encoder's tokens `S^r = E(S)` (Eq. 1) feed stages ii and iii.
#
# `pretrain_encoder` trains it on all subjects' flatmaps (the loss counts cortex pixels only)
# and writes `encoder/` (decoder kept, so we can look at rebuilt maps), `metrics.json`
# (held-out r / MSE against the training mean map) and a run record. Rerun the cell after an
# interruption: training resumes from its last checkpoint.

# %% tags=["parameters"]
PRESET = "default"      # "default" (the shipped recipe, a few minutes) or "smoke" (seconds)
STEPS = None            # optimizer steps; None: the preset's
SEED = 0
THREADS = 1             # torch threads (1 is fastest on a busy 2-core machine)
N_SHOW = 4              # held-out maps shown next to their rebuilds
OUTPUT_DIR = "runs/03_calibrated_encoding"

# %%
from pathlib import Path

from brainrecon.data.pairs import make_toy_dataset
from brainrecon.data.surface import FlatmapProjector
from brainrecon.data.toyworld import ToyWorldConfig, make_toyworld
from brainrecon.io import write_json
from brainrecon.plotting import save_figure
from brainrecon.training.plots import plot_rebuilt_flatmaps, plot_stage_losses
from brainrecon.training.neuropictor import EncoderPretrainConfig, pretrain_encoder

out = Path(OUTPUT_DIR)
preset = getattr(EncoderPretrainConfig, PRESET)
config = preset(output_dir=str(out / "stage_i"), seed=SEED, threads=THREADS,
                **({} if STEPS is None else {"steps": STEPS}))
world = make_toyworld(ToyWorldConfig.smoke(seed=SEED) if PRESET == "smoke" else ToyWorldConfig(seed=SEED))
config

# %% [markdown]
# ## Train
# Encoder and decoder are small ViTs (`patch_size`, `embed_dim`, `depth` in the config);
# every subject's maps share one projector, so one model serves them all.

# %%
stage_dir = pretrain_encoder(config, world=world)
metrics = (stage_dir / "metrics.json").read_text()
print(metrics)

# %% [markdown]
# ## Held-out maps and their rebuilds from the guide token
# Shared test images, repeat-averaged responses of each subject. The rebuilt map keeps the
# smooth, stimulus-driven pattern; trial noise cannot pass through the token.

# %%
import json

import torch

m = json.loads(metrics)
projector = FlatmapProjector(config.resolution, crop=config.crop)
test = make_toy_dataset(world, split="test", projector=projector)
picks = [i * (len(test) // N_SHOW) for i in range(N_SHOW)]   # spread over subjects
maps = torch.stack([test.brain(i) for i in picks])
titles = [test.subjects[test.locate(i)[0]] for i in picks]
fig_maps = plot_rebuilt_flatmaps(stage_dir, maps, n=N_SHOW, titles=titles)
save_figure(fig_maps, out / "rebuilt_flatmaps.png")
fig_maps

# %% [markdown]
# ## Training curve
# Masked MSE on cortex pixels of single-trial maps (its floor is the trial noise).

# %%
fig_loss = plot_stage_losses({"stage i": stage_dir}, keys=("loss",))
save_figure(fig_loss, out / "loss.png")
fig_loss

# %%
loss = m["losses"]["main"]
summary = {
    "r": m["r"], "mse": m["mse"], "baseline_r": m["baseline_r"], "baseline_mse": m["baseline_mse"],
    "r2": m["r2"], "n_maps": m["n_maps"], "subjects": m["subjects"],
    "loss_first": loss["loss_first"], "loss_final": loss["loss_final"], "steps": loss["steps"],
    "wall_time_s": json.loads((stage_dir / "run.json").read_text())["wall_time_s"],
    "stage_dir": str(stage_dir), "figures": ["rebuilt_flatmaps.png", "loss.png"],
}
write_json(out / "metrics.json", summary)
print(json.dumps(summary, indent=1))
