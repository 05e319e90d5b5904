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
# # 05 · Stage iii: single-subject refining
# NeuroPictor refines the multi-subject model on one subject (§3.4) with the same objective,
# now with HLGN's **auxiliary encoder** switched on (Eq. 4: `F^sem = F̃^txt + F^au`, its last
# layer a zero convolution, so refining starts exactly at the stage-ii model) and `λ = 0.1`,
# then the classifier-free-guidance phase. The paper's ablation (Tab. 2) compares this with
# training the same network on that subject alone. We do both at the same steps and score the
# reconstructions of the subject's held-out scans with `brainrecon.metrics.evaluate`.

# %% tags=["parameters"]
PRESET = "default"        # "default" (shipped recipe: stage iii ~3 min per model) or "smoke"
INIT_FROM = None          # a stage-ii folder (notebook 04); None: train stages i and ii here first
SUBJECT = "subj01"
TRAIN_FRACTION = 1.0      # share of the subject's training scans (e.g. 0.1 for a new subject)
STEPS = None              # refining steps (both models); None: the preset's
CFG_STEPS = None
N_TEST = 100              # held-out scans reconstructed (the shared test set has 100)
NUM_INFERENCE_STEPS = 25
GUIDANCE_SCALE = None     # None: the backbone's default (toy: 5)
N_SHOW = 8
SEED = 0
THREADS = 1
OUTPUT_DIR = "runs/05_single_subject_refining"

# %%
import json
from pathlib import Path

from brainrecon.data.toyworld import ToyWorldConfig, make_toyworld
from brainrecon.io import write_json
from brainrecon.metrics import evaluate, metrics_dict, plot_metrics, plot_reconstruction_grid
from brainrecon.plotting import save_figure
from brainrecon.sampling import BrainToImagePipeline, make_test_maps, reconstruct
from brainrecon.training.plots import plot_denoising_scores, plot_stage_losses
from brainrecon.training.neuropictor import (EncoderPretrainConfig, MultisubjectConfig, RefineConfig,
                                        pretrain_encoder, pretrain_multisubject, refine_subject)

out = Path(OUTPUT_DIR)
world = make_toyworld(ToyWorldConfig.smoke(seed=SEED) if PRESET == "smoke" else ToyWorldConfig(seed=SEED))
if INIT_FROM is None:
    enc = pretrain_encoder(getattr(EncoderPretrainConfig, PRESET)(
        output_dir=str(out / "stage_i"), seed=SEED, threads=THREADS), world=world)
    INIT_FROM = pretrain_multisubject(getattr(MultisubjectConfig, PRESET)(
        output_dir=str(out / "stage_ii"), encoder_dir=str(enc), seed=SEED, threads=THREADS), world=world)
encoder_dir = json.loads((Path(INIT_FROM) / "config.json").read_text())["encoder_dir"]
overrides = {k: v for k, v in dict(steps=STEPS, cfg_steps=CFG_STEPS).items() if v is not None}
common = dict(subject=SUBJECT, train_fraction=TRAIN_FRACTION, seed=SEED, threads=THREADS, **overrides)
refined_cfg = getattr(RefineConfig, PRESET)(output_dir=str(out / "refined"), init_from=str(INIT_FROM), **common)
scratch_cfg = getattr(RefineConfig, PRESET)(output_dir=str(out / "scratch"), init_from=None,
                                            encoder_dir=encoder_dir, **common)
refined_cfg

# %% [markdown]
# ## Refine, and train the from-scratch baseline at the same steps
# The baseline starts from the stage-i encoder (as the paper's "full" encoder rows) but fresh
# HLGN and LLMN, and sees only this subject.

# %%
runs = {"refined": refine_subject(refined_cfg, world=world), "scratch": refine_subject(scratch_cfg, world=world)}
fig_loss = plot_stage_losses(runs, keys=("loss", "diffusion", "semantic"))
save_figure(fig_loss, out / "loss_curves.png")
fig_loss

# %%
fig_scores = plot_denoising_scores(runs, title=f"{SUBJECT}: held-out denoising error")
save_figure(fig_scores, out / "denoising.png")
fig_scores

# %% [markdown]
# ## Reconstructions of held-out scans
# Each run folder is a reconstructor (`model/` + `backbone.json`); the same seeds for both.

# %%
images, tables = {}, {}
for name, d in runs.items():
    pipe = BrainToImagePipeline.from_pretrained(d)
    if name == "refined":
        test = make_test_maps(pipe, world, SUBJECT, N_TEST)
    kw = {} if GUIDANCE_SCALE is None else {"guidance_scale": GUIDANCE_SCALE}
    images[name] = reconstruct(pipe, test, seed=SEED, num_inference_steps=NUM_INFERENCE_STEPS, **kw)["images"]
    tables[name] = evaluate(images[name], test["targets"], feature_set="toy", attributes=test["attributes"],
                            seed=SEED)
fig_grid = plot_reconstruction_grid(images, test["targets"], n=N_SHOW, seed=SEED)
save_figure(fig_grid, out / "reconstructions.png")
fig_grid

# %% [markdown]
# ## Metrics: refined vs scratch
# The field's metrics with the toy feature set (toy-CLIP stand-ins) plus the toy world's exact
# attribute scores (category, colour, position of the main object).

# %%
fig_metrics = plot_metrics(tables, title=f"{SUBJECT}: refined from stage ii vs from scratch")
save_figure(fig_metrics, out / "metrics.png")
comparison = {name: metrics_dict(t) for name, t in tables.items()}
higher = {r.metric: bool(r.higher_is_better) for r in tables["refined"].itertuples()}
wins = {k: (v > comparison["scratch"][k]) == higher[k] for k, v in comparison["refined"].items()
        if v is not None and comparison["scratch"].get(k) is not None and v != comparison["scratch"][k]}
print(json.dumps(comparison, indent=1))
fig_metrics

# %%
stage_metrics = {name: json.loads((d / "metrics.json").read_text()) for name, d in runs.items()}
summary = {
    "subject": SUBJECT, "train_fraction": TRAIN_FRACTION, "n_test": int(len(test["targets"])),
    "metrics": comparison, "refined_wins": wins, "refined_win_share": sum(wins.values()) / max(1, len(wins)),
    "noise_mse": {k: m["noise_mse"] for k, m in stage_metrics.items()},
    "noise_mse_no_brain": stage_metrics["refined"]["noise_mse_no_brain"],
    "losses": {k: m["losses"] for k, m in stage_metrics.items()},
    "init": {k: m["init"] for k, m in stage_metrics.items()},
    "n_train_rows": stage_metrics["refined"]["n_train_rows"],
    "run_dirs": {k: str(d) for k, d in runs.items()}, "init_from": str(INIT_FROM),
    "figures": ["loss_curves.png", "denoising.png", "reconstructions.png", "metrics.png"],
}
write_json(out / "metrics.json", summary)
print(json.dumps({k: summary[k] for k in ("refined_win_share", "noise_mse", "noise_mse_no_brain")}, indent=1))
