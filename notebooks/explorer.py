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
# # brainrecon explorer
# Pick a subject, a held-out test scan and a method: the page shows the image the subject saw, its
# reconstruction and the input flatmap, and below them every method's reconstruction of the same scan.
# Drive the control scale **α** (NeuroPictor Eq. 7), classifier-free guidance (**CFG**) and the
# **semantic swap** (another scan's semantics with this scan's layout). `brainrecon explore` serves
# this page with Voilà.

# %% tags=["parameters"]
RECONSTRUCTORS = [None]     # reconstructor folders; None: the shipped toy NeuroPictor one
N_TEST = 12                 # test scans offered per subject
WORLD_PRESET = None         # None: the reconstructors' toy world; "default" or "smoke"
NUM_INFERENCE_STEPS = None  # None: each reconstructor's default
SEED = 0                    # scan i always uses the generator SEED + i
THREADS = 1                 # torch threads (the toy models gain nothing from more)

# %%
import torch

from brainrecon.explorer import view_explorer

torch.set_num_threads(THREADS)
view = view_explorer(RECONSTRUCTORS, n_test=N_TEST, seed=SEED, num_inference_steps=NUM_INFERENCE_STEPS,
                     world_preset=WORLD_PRESET)
view
