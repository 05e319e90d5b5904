"""Diagnostic ladder: why does the toy U-Net draw colour but not shape? One factor per rung.

Usage::

    python benchmarks/toy_unet_ladder.py --rungs base label_global ... [--quick] [--out FILE]
    python benchmarks/toy_unet_ladder.py --list          # every rung and the factor it changes

Every rung trains a fresh denoiser on the default toy world (``make_scenes(n_train, 32, seed=0)``)
and is judged the same way: ``--n-eval`` held-out captions (``make_scenes(n, 32, seed=10_000)``),
DDIM 25 steps, classifier-free guidance 5 (and 0 at the last checkpoint), one sample per
caption with sampling seed 0, scored by the shipped attribute classifier (and by any further
judge folder given with ``--judge``) for the main object's category, colour, both, and the
place word (distance of the generated main object's centre from the captioned one, in image
sides; against another caption's box as its chance level). Figures at each ``--eval-at``
step, with the wall time to reach it; a sample grid per rung goes next to the JSON.

A rung is a dict of factors changed from :data:`BASE` (the shipped recipe), so each row of the
table differs from the base row, or from the rung it names as ``parent``, in one factor. The
VAE rungs train their own VAE (cached under ``--work`` by its settings) with the package's own
:func:`brainrecon.training.toy_backbones._train_vae` and :func:`._train_vae_decoder`; every
denoiser trains with :func:`brainrecon.training.fit` at constant learning rate after warm-up, so
a rung's 1k-step figure is the same run's state at step 1,000 (but for the ``lr_schedule="cosine"``
rungs, which anneal to their last ``--eval-at`` step and keep their checkpoints per schedule length).

Results are written as JSON (``--out``, default ``benchmarks/results/toy_unet_ladder.json``),
merged rung by rung so that rungs can be run in separate processes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

#: The shipped recipe, as the ladder trains it (constant lr after 100 warm-up steps).
BASE = dict(space="latent", vae="shipped", cond="caption", label_path="context", schedule="scaled_linear",
            prediction="epsilon", channels=(32, 64, 64), attn_levels=(0, 1), layers_per_block=1, lr=1e-3,
            batch=64, min_snr=None, ema=None, pooled_text=False,
            decoder_noise=0.0, norm_groups=None, whiten=False, max_objects=3, label_place=False, coords=False,
            clip=None, pose="random", time_shift="default", blur=False, lr_schedule="constant")

#: name -> (factors changed from the parent, parent, what the rung asks).
RUNGS: dict[str, tuple[dict, str | None, str]] = {
    "base": ({}, None, "the shipped recipe (latent 8x8x16, KL 1e-6, caption, scaled-linear, epsilon)"),
    "label_global": (dict(cond="label", label_path="class_embed"), "base",
                     "true category + colour labels through the time embedding instead of the caption"),
    "label_context": (dict(cond="label", label_path="context"), "base",
                      "true labels as context tokens for cross-attention"),
    "pixel": (dict(space="pixel", channels=(32, 64, 64, 64), attn_levels=(2, 3)), "base",
              "pixel space 32x32x3 (U-Net one level deeper so its 8x8 and 4x4 levels attend)"),
    "robust_decoder": (dict(decoder_noise=0.5), "base",
                       "the shipped latent space and base's own denoiser checkpoints (no retraining), decoded by "
                       "the shipped decoder fine-tuned 2,000 more steps on noised latents (sigma ~ U(0, 0.5) x "
                       "latent std)"),
    "v_robust_decoder": (dict(decoder_noise=0.5), "v_pred",
                         "v_pred's own denoiser checkpoints decoded by robust_decoder's decoder"),
    "robust_decoder_clean": (dict(decoder_noise=1e-9), "base",
                             "control for robust_decoder: the same 2,000 extra decoder steps without noise"),
    "vae_sampled": (dict(vae=dict(channels=(16, 32, 64), latent_channels=16, kl=1e-6, sample=True)), "base",
                    "the same 8x8x16 VAE recipe, trained as a VAE proper: it decodes a posterior sample"),
    "vae_sampled_kl1e-4": (dict(vae=dict(channels=(16, 32, 64), latent_channels=16, kl=1e-4, sample=True)),
                           "vae_sampled", "the sampled VAE with KL weight 1e-4 instead of 1e-6"),
    "vae_8x8x4": (dict(vae=dict(channels=(16, 32, 64), latent_channels=4, kl=1e-6, noise=0.0)), "base",
                  "an 8x8x4 latent (4x fewer numbers)"),
    "vae_16x16x4": (dict(vae=dict(channels=(32, 64), latent_channels=4, kl=1e-6, noise=0.0),
                         channels=(32, 64, 64, 64), attn_levels=(1, 2)), "base",
                    "a x2 VAE, 16x16x4 latent (same 1,024 numbers), U-Net one level deeper"),
    "caption_pooled": (dict(pooled_text=True), "base",
                       "the caption also enters the time embedding: attention-pooled context (diffusers "
                       "addition_embed_type='text'), as well as cross-attention"),
    "groups8": (dict(norm_groups=8), "base",
                "GroupNorm with 8 groups (4-8 channels each) instead of 32: the shipped 32 groups of 32 channels "
                "is instance norm, over 2x2 values at the innermost level"),
    "whitened": (dict(whiten=True), "base",
                 "the shipped latents rotated onto their channel principal axes and each scaled to unit variance "
                 "(the shape-bearing components 5-8 carry 2-5 % of the variance, so isotropic noise drowns them "
                 "first); decoded through the inverse map"),
    "v_pixel": (dict(space="pixel", channels=(32, 64, 64, 64), attn_levels=(2, 3)), "zero_snr",
                "zero_snr in pixel space 32x32x3 (U-Net one level deeper so its 8x8 and 4x4 levels attend)"),
    "v_16x16x4": (dict(vae=dict(channels=(32, 64), latent_channels=4, kl=1e-6, noise=0.0),
                       channels=(32, 64, 64, 64), attn_levels=(1, 2)), "zero_snr",
                  "zero_snr on a x2 VAE's 16x16x4 latent (same 1,024 numbers), U-Net one level deeper"),
    "v_wider": (dict(channels=(64, 128, 128)), "v_pred", "v_pred with a 2x wider U-Net (5.9 M parameters)"),
    "v_label_place": (dict(cond="label", label_path="context", label_place=True), "v_pred",
                      "v_pred conditioned on the true main-object category, colour and place (3 context tokens): "
                      "an oracle text encoder"),
    "v_coords": (dict(coords=True), "v_pred", "v_pred with x, y coordinate channels beside the latent (CoordConv)"),
    "v_negclip_place": (dict(clip=dict(hard_negatives=5, steps=800)), "v_pred",
                        "v_pred with toy CLIP retrained with NegCLIP hard negatives: main/any category, any/main "
                        "colour and main place swapped (800 steps)"),
    "v_vae_noise": (dict(vae=dict(channels=(16, 32, 64), latent_channels=16, kl=1e-6, latent_noise=0.5)), "v_pred",
                    "v_pred on an 8x8x16 VAE trained with its latents noised (sigma ~ U(0, 0.5) x latent std, "
                    "encoder and decoder together), then the decoder fine-tuned on clean latents"),
    "v_vae_semantic": (dict(vae=dict(channels=(16, 32, 64), latent_channels=16, kl=1e-6, semantic=0.1)), "v_pred",
                       "v_pred on an 8x8x16 VAE whose latent must also show, per cell and through a unit-norm "
                       "linear head, which category covers it (the renderer's segmentation; VA-VAE's alignment)"),
    "v_vae_both": (dict(vae=dict(channels=(16, 32, 64), latent_channels=16, kl=1e-6, latent_noise=0.5,
                                 semantic=0.1)), "v_vae_noise", "v_vae_noise with v_vae_semantic's head on the noised latent"),
    "v_clip_attr": (dict(clip=dict(hard_negatives=0, steps=450, attribute=1.0)), "v_pred",
                    "v_pred with toy CLIP retrained (shipped recipe, 450 steps) plus unit-norm heads that read the "
                    "caption's main category, colour and place from the mean U-Net context (clip_attribute_weight=1)"),
    "v_clip_attr_groups8": (dict(norm_groups=8), "v_clip_attr",
                            "v_clip_attr with GroupNorm 8 groups: the candidate default recipe (v prediction, a norm "
                            "that keeps the conditioning, loud place words) on the default world with captions"),
    "v_clip_attr_flat": (dict(channels=(64,), attn_levels=(0,), layers_per_block=2), "v_clip_attr_groups8",
                         "v_clip_attr_groups8 with placed_flat's U-Net that never downsamples: does the cure of the "
                         "one-object world carry to the default world with captions?"),
    "v_clip_attr_flat_minsnr5": (dict(min_snr=5.0), "v_clip_attr_flat",
                                 "v_clip_attr_flat with Min-SNR-5 loss weighting: the candidate default recipe"),
    "v_clip_attr_flat_cosine": (dict(lr_schedule="cosine"), "v_clip_attr_flat",
                                "v_clip_attr_flat with the shipped recipe's cosine decay (to 0.1 x lr at the last --eval-at "
                                "step) instead of a constant lr: does annealing sharpen what the constant-lr run has learnt?"),
    "v_clip_attr_flat_ema": (dict(ema=0.999), "v_clip_attr_flat",
                             "v_clip_attr_flat judged raw and with an EMA of its weights (decay 0.999, warm-up "
                             "(1+s)/(10+s)) in the same run: does weight averaging help once the U-Net learns shapes?"),
    "v_clip_attr_flat_batch32": (dict(batch=32), "v_clip_attr_flat",
                                 "v_clip_attr_flat at batch 32 instead of 64, half the CPU per step: batch 128 read "
                                 "the same as 64 at the same steps (upright_flat_batch128), so is 64 above the "
                                 "critical batch, and the curve a function of steps alone down to 32?"),
    "v_clip_attr_flat_batch16": (dict(batch=16), "v_clip_attr_flat_batch32",
                                 "v_clip_attr_flat_batch32 at batch 16: where does the curve start to follow scenes?"),
    "v_clip_attr_flat_whitened": (dict(whiten=True), "v_clip_attr_flat",
                                  "v_clip_attr_flat on channel-whitened latents (PCA, unit variance): shape lives in "
                                  "latent components of 2-5 % of the variance; retried on the recipe that learns shapes"),
    "v_clip_attr_flat_8x8x4": (dict(vae=dict(channels=(16, 32, 64), latent_channels=4, kl=1e-6, noise=0.0)),
                               "v_clip_attr_flat",
                               "v_clip_attr_flat on an 8x8x4 latent (a VAE of 4 latent channels instead of 16): "
                               "a quarter of the numbers per cell, so must a shape be a louder part of them?"),
    "v_attn_all": (dict(attn_levels=(0, 1, 2)), "v_pred", "v_pred with attention on every level"),
    "v_deeper": (dict(layers_per_block=2), "v_pred", "v_pred with two res-blocks per level"),
    "v_ema": (dict(ema=0.999), "v_pred",
              "v_pred, judged also through an exponential moving average of its weights (decay 0.999, "
              "warm-up (1+s)/(10+s)): the same training run, so raw and EMA rows differ in that alone"),
    "v_ema_lr3e-4": (dict(lr=3e-4), "v_ema", "v_ema at lr 3e-4 instead of 1e-3"),
    "v_one_object": (dict(max_objects=1), "v_pred",
                     "v_pred on a world of one object per scene (training and judged captions; same backgrounds)"),
    "v_label_one_object": (dict(cond="label", label_path="class_embed"), "v_one_object",
                           "v_one_object conditioned on the true category + colour through the time embedding: "
                           "the MNIST-like class-conditional problem (run to 8k steps)"),
    "v_label_one_object_upright": (dict(pose="upright"), "v_label_one_object",
                                   "v_label_one_object with every object upright (rotation 0): is it the rotation?"),
    "v_label_one_object_centred": (dict(pose="centred"), "v_label_one_object_upright",
                                   "v_label_one_object_upright with the object at the centre at one size (radius "
                                   "0.25): the MNIST layout; is it translation and scale?"),
    "v_label_one_object_centred_scale_shift": (
        dict(time_shift="scale_shift"), "v_label_one_object_centred",
        "v_label_one_object_centred with the time (and class) embedding applied after each ResNet block's "
        "GroupNorm as a scale and shift (ADM's AdaGN, diffusers resnet_time_scale_shift='scale_shift'): the shipped "
        "32 groups of 32 channels are instance norm, which subtracts a per-channel offset added before it"),
    "v_label_one_object_centred_groups8": (
        dict(norm_groups=8), "v_label_one_object_centred",
        "v_label_one_object_centred with GroupNorm 8 groups: 4-8 channels per group, so the embedding's "
        "per-channel offsets survive the norm as differences within a group"),
    "v_groups8": (dict(norm_groups=8), "v_pred",
                  "v_pred with GroupNorm 8 groups (the fix of v_label_one_object_centred_groups8) on the default "
                  "world with captions: does it carry over when the conditioning comes through cross-attention?"),
    "v_scale_shift": (dict(time_shift="scale_shift"), "v_pred",
                      "v_pred with the embedding as scale and shift after the norm (AdaGN) on the default world"),
    "v_label_one_object_groups8": (dict(norm_groups=8), "v_label_one_object",
                                   "v_label_one_object (random place, size, rotation) with GroupNorm 8 groups: "
                                   "does the norm fix carry over to the pose variety?"),
    "v_label_one_object_upright_groups8": (dict(pose="upright"), "v_label_one_object_groups8",
                                           "v_label_one_object_groups8 with every object upright: is the rest "
                                           "the rotation?"),
    "v_label_one_object_placed_groups8": (dict(pose="placed"), "v_label_one_object_upright_groups8",
                                          "upright at one size (radius 0.25) but a random place: is the rest of "
                                          "the centred world's lead the place (translation)?"),
    "v_label_one_object_placed_groups8_place": (dict(label_place=True), "v_label_one_object_placed_groups8",
                                                "placed_groups8 with the 3x3 place cell in the label too: is it "
                                                "deciding where the object goes that costs the shape?"),
    "placed_minsnr5": (dict(min_snr=5.0), "v_label_one_object_placed_groups8",
                       "placed_groups8 with Min-SNR-5 loss weighting (Hang et al. 2023): is the loss spent on the "
                       "wrong noise levels (fine detail and pure noise instead of the mid-noise steps where the "
                       "shape is decided)?"),
    "placed_lr3e-4": (dict(lr=3e-4), "v_label_one_object_placed_groups8",
                      "placed_groups8 at lr 3e-4 instead of 1e-3: is the constant lr too high to settle on outlines?"),
    "placed_wide8": (dict(channels=(64, 64, 64)), "v_label_one_object_placed_groups8",
                     "placed_groups8 with the 8x8 level as wide as the others (64 channels instead of 32): is the "
                     "full-resolution level, where outlines are drawn, too narrow?"),
    "placed_batch128": (dict(batch=128), "v_label_one_object_placed_groups8",
                        "placed_groups8 at batch 128 instead of 64: is it the gradient noise?"),
    "placed_gridded": (dict(pose="gridded"), "v_label_one_object_placed_groups8",
                       "placed_groups8 with each centre rounded to the latent grid (multiples of 1/8 side, 3x3 "
                       "places): is it the object's sub-cell offset (a 4x latent encodes a shape differently at "
                       "each offset) that the random place costs, rather than the place itself?"),
    "placed_16x16": (dict(vae=dict(channels=(32, 64), latent_channels=4, kl=1e-6, noise=0.0),
                          channels=(32, 64, 64, 64), attn_levels=(1, 2)), "placed_minsnr5",
                     "placed_minsnr5 on a x2 VAE's 16x16x4 latent (same 1,024 numbers; U-Net one level deeper): "
                     "is it the 4x latent's coarse cells, in which a shape's code depends on its sub-cell offset?"),
    "placed_flat": (dict(channels=(64,), attn_levels=(0,), layers_per_block=2), "placed_minsnr5",
                    "placed_minsnr5 with a U-Net that never downsamples (one 64-channel level at 8x8: 2 res-blocks "
                    "down, the attending mid block, 3 up; every block attends): is it the stride-2 levels, which "
                    "break translation equivariance, that keep a shape learnt at one place from another?"),
    "upright_flat": (dict(pose="upright"), "placed_flat",
                     "placed_flat at random sizes too (upright, random place and size): does the U-Net that never "
                     "downsamples also carry a shape across sizes?"),
    "upright_flat_wide": (dict(channels=(96,)), "upright_flat",
                          "upright_flat 1.5x as wide (96 channels, ~2.2x the CPU): does the size variety need "
                          "capacity (the placed world's 51 % with 64 channels)?"),
    "upright_flat_midattn": (dict(attn_levels=()), "upright_flat",
                             "upright_flat with attention in the mid block only (the 5 other blocks plain res-blocks; "
                             "0.44x the CPU, measured): does every block need to attend, or is one global look "
                             "enough?"),
    "v_clip_attr_flat_midattn": (dict(attn_levels=()), "v_clip_attr_flat",
                                 "v_clip_attr_flat with attention in the mid block only (0.44x the CPU on labels, "
                                 "the same category): does the caption, then read by one cross-attention, keep its "
                                 "place word and its category curve?"),
    "v_clip_attr_flat_one_size": (dict(pose="one_size"), "v_clip_attr_flat",
                                  "v_clip_attr_flat on the default world with every main object at one size (radius "
                                  "0.25; several objects, rotations, textures and captions kept): is the size variety "
                                  "what holds the default world's curve down (the one-object worlds: 51 % at one "
                                  "size, 28 % at random sizes, 2k steps)?"),
    "upright_flat_midattn_nominsnr": (dict(min_snr=None), "upright_flat_midattn",
                                      "upright_flat_midattn without Min-SNR weighting (it helped on the placed "
                                      "world at 2k but stopped the default world's curve, § 11): does it also hold "
                                      "back the random-size world's curve after 2k steps?"),
    "upright_flat_midattn_16x16": (dict(vae=dict(channels=(32, 64), latent_channels=4, kl=1e-6, noise=0.0)),
                                   "upright_flat_midattn",
                                   "upright_flat_midattn on a x2 VAE's 16x16x4 latent (the same 1,024 numbers, the "
                                   "flat U-Net at 16x16): is a shape learnt faster across sizes when it is drawn in "
                                   "cells (4 latent cells per 8 px) than when it is coded in 16 channels per cell?"),
    "upright_flat_lr2e-3": (dict(lr=2e-3), "upright_flat",
                            "upright_flat at lr 2e-3 instead of 1e-3 (3e-4 cost 9 points on the placed world): is "
                            "the flat U-Net's learning of shapes step-limited by the step size?"),
    "upright_flat_batch128": (dict(batch=128), "upright_flat",
                              "upright_flat at batch 128 (2x the scenes per step, 2x the CPU): does the category "
                              "follow the scenes seen (as batch 64 at 2x the steps) or the steps?"),
    "one_object_flat": (dict(pose="random"), "upright_flat",
                        "upright_flat with random rotations too (one object, the default world's poses): is the "
                        "rest of the default world's cost its several objects and captions?"),
    "label_flat": (dict(max_objects=3), "one_object_flat",
                   "one_object_flat on the default world (up to 3 objects, textured backgrounds), the main "
                   "object's true category and colour through the time embedding: the objects, not the captions?"),
    "caption_one_object_flat": (dict(cond="caption", label_path="context",
                                     clip=dict(hard_negatives=0, steps=450, attribute=1.0)), "one_object_flat",
                                "one_object_flat conditioned on captions through cross-attention (toy CLIP with "
                                "attribute heads, as v_clip_attr) instead of true labels: the captions, not the objects?"),
    "placed_blur": (dict(blur=True), "placed_minsnr5",
                    "placed_minsnr5 with anti-aliased resolution changes (a fixed binomial blur before every stride-2 "
                    "conv and after every upsampling; Zhang 2019): is it the aliasing of the stride-2 levels, so "
                    "that a multi-scale U-Net can keep its depth and still reuse a shape across places?"),
    "upright_blur": (dict(pose="upright"), "placed_blur",
                     "placed_blur at random sizes too: do the anti-aliased deeper levels carry a shape across sizes, "
                     "which the flat U-Net does not (upright_flat)?"),
    "placed_minsnr1": (dict(min_snr=1.0), "placed_minsnr5",
                       "placed_minsnr5 with gamma 1 instead of 5: does more of the loss on the mid-noise steps "
                       "(weight peaking at SNR 1) help further?"),
    "v_label_one_object_sized_groups8": (dict(pose="sized"), "v_label_one_object_upright_groups8",
                                         "upright at the centre but a random size: is the rest of the centred "
                                         "world's lead the size?"),
    "v_label_one_object_groups8_pixel": (dict(space="pixel", channels=(32, 64, 64, 64), attn_levels=(2, 3)),
                                         "v_label_one_object_groups8",
                                         "v_label_one_object_groups8 in pixel space (32x32x3, one level deeper): "
                                         "is it the 4x-downsampled latent, where a small shape's code depends on "
                                         "its sub-cell position?"),
    "v_label_one_object_white": (dict(whiten=True), "v_label_one_object",
                                 "v_label_one_object on whitened latents (channel PCA, unit variance): is it the "
                                 "latent's spectrum, shape in components of 2-5 % of the variance?"),
    "cosine": (dict(schedule="cosine"), "base", "cosine noise schedule"),
    "snr_shift4": (dict(schedule="shift4"), "base",
                   "scaled-linear with every timestep's SNR multiplied by 4 (an 8x8 latent holds far fewer numbers "
                   "per object than SD's 64x64 one, so the same SNR destroys its shape sooner)"),
    "cosine_shift4": (dict(schedule="cosine_shift4"), "cosine", "cosine with every timestep's SNR x 4"),
    "zero_snr": (dict(schedule="zero_snr", prediction="v_prediction"), "base",
                 "scaled-linear rescaled to zero terminal SNR, v prediction (required by zero SNR)"),
    "v_pred": (dict(prediction="v_prediction"), "base", "v prediction"),
    "attn_all": (dict(attn_levels=(0, 1, 2)), "base", "attention on every level"),
    "deeper": (dict(layers_per_block=2), "base", "two res-blocks per level"),
    "wider": (dict(channels=(64, 128, 128)), "base", "2x wider"),
}


def rung_factors(name: str) -> dict:
    """The full settings of a rung: :data:`BASE` updated along its chain of parents."""
    changes, parent, _ = RUNGS[name]
    f = dict(BASE) if parent is None else rung_factors(parent)
    f.update(changes)
    return f


# ----------------------------------------------------------------------------- data
def load_world(n_train: int, n_eval: int, seed: int = 0, heldout_seed: int = 10_000, max_objects: int = 3,
               pose: str = "random"):
    """Training scenes (as the package's trainer holds them) and the judged held-out scenes."""
    from brainrecon.backbones.toy import ToyBackboneConfig, make_toy_tokenizer
    from brainrecon.training.toy_backbones import _load_data
    from brainrecon.data.scenes import make_scenes

    tok = make_toy_tokenizer()
    data = _load_data(ToyBackboneConfig(n_train=n_train, seed=seed), tok)
    if max_objects != 3 or pose != "random":   # a simpler world: the same grammar, fewer objects or fixed poses
        sc = make_scenes(n_train, image_size=32, seed=seed, max_objects=max_objects, pose=pose)
        data.update(images=torch.from_numpy(sc.images).permute(0, 3, 1, 2).contiguous(), captions=list(sc.captions),
                    ids=tok(sc.captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                            return_tensors="pt").input_ids,
                    category=torch.from_numpy(sc.category), colour=torch.from_numpy(sc.colour),
                    bbox_frac=torch.from_numpy(sc.bbox).float() / 32)
    if heldout_seed == 0 and n_eval > n_train:
        # memorising a set smaller than the judged one: each training scene is judged several times, each
        # time from other noise (scene i of the n_eval is training scene i mod n_train)
        sc = make_scenes(n_train, image_size=32, seed=seed, max_objects=max_objects, pose=pose)
        idx = np.arange(n_eval) % n_train
        te = SimpleNamespace(images=sc.images[idx], captions=[sc.captions[i] for i in idx],
                             category=sc.category[idx], colour=sc.colour[idx], bbox=sc.bbox[idx])
        return data, te
    te = make_scenes(n_eval, image_size=32, seed=heldout_seed, max_objects=max_objects, pose=pose)
    return data, te


#: Steps of a rung's own VAE and of its decoder fine-tuning (``--vae-steps``).
VAE_STEPS = (3000, 2000)


def _vae_dir(work: Path, spec: dict, steps: int, decoder_steps: int, n_train: int) -> Path:
    key = hashlib.sha1(json.dumps([spec, steps, decoder_steps, n_train], sort_keys=True).encode()).hexdigest()[:10]
    return work / f"vae_{key}"


def get_vae(spec, data, work: Path, quick: bool, decoder_noise: float = 0.0):
    """The shipped VAE, or one trained by the package's recipe with ``spec`` (cached).

    ``decoder_noise > 0`` fine-tunes the shipped VAE's decoder further (the package's
    ``_train_vae_decoder``, ``vae_decoder_noise=decoder_noise``): same encoder, same latents.
    """
    import shutil

    from diffusers import AutoencoderKL

    from brainrecon.backbones.hub import TOY_WEIGHTS_DIR

    if spec == "shipped" and decoder_noise > 0:
        from brainrecon.backbones.toy import ToyBackboneConfig
        from brainrecon.training.toy_backbones import _train_vae_decoder

        steps = 20 if quick else 2000
        d = _vae_dir(work, {"decoder_of": "shipped", "noise": decoder_noise}, 0, steps, len(data["images"]))
        rec_path = d / "ladder_vae.json"
        if not rec_path.is_file():
            if not (d / "vae").is_dir():
                shutil.copytree(TOY_WEIGHTS_DIR / "vae", d / "vae")
            cfg = ToyBackboneConfig(vae_decoder_steps=steps, vae_decoder_noise=decoder_noise, progress=False,
                                    threads=None)
            t = time.perf_counter()
            r = _train_vae_decoder(cfg, data, d)
            rec_path.write_text(json.dumps({"decoder_of": "shipped", "noise": decoder_noise, "decoder": r,
                                            "wall_time_s": round(time.perf_counter() - t, 1)}))
        return AutoencoderKL.from_pretrained(d / "vae").eval(), json.loads(rec_path.read_text())
    if spec == "shipped":
        return AutoencoderKL.from_pretrained(TOY_WEIGHTS_DIR / "vae").eval(), {"vae": "shipped"}
    from brainrecon.backbones.toy import ToyBackboneConfig
    from brainrecon.training.toy_backbones import _train_vae, _train_vae_decoder

    steps, dsteps = (40, 20) if quick else VAE_STEPS
    d = _vae_dir(work, spec, steps, dsteps, len(data["images"]))
    cfg = ToyBackboneConfig(vae_channels=tuple(spec["channels"]), vae_latent_channels=int(spec["latent_channels"]),
                            vae_kl_weight=float(spec["kl"]), vae_steps=steps, vae_decoder_steps=dsteps,
                            vae_decoder_noise=float(spec.get("noise", 0.0)),
                            vae_latent_noise=float(spec.get("latent_noise", 0.0)),
                            vae_semantic_weight=float(spec.get("semantic", 0.0)),
                            vae_sample_posterior=bool(spec.get("sample", False)), progress=False, threads=None)
    rec_path = d / "ladder_vae.json"
    if not rec_path.is_file():
        if cfg.vae_semantic_weight > 0 and data.get("category_maps") is None:
            from brainrecon.data.scenes import make_scenes, render_category_maps

            sc = make_scenes(len(data["images"]), image_size=32, seed=0)
            data = {**data, "category_maps": torch.from_numpy(render_category_maps(sc))}
        t = time.perf_counter()
        r1 = _train_vae(cfg, data, d)
        r2 = _train_vae_decoder(cfg, data, d)
        rec_path.write_text(json.dumps({"spec": spec, "vae": r1, "decoder": r2,
                                        "wall_time_s": round(time.perf_counter() - t, 1)}))
    return AutoencoderKL.from_pretrained(d / "vae").eval(), json.loads(rec_path.read_text())


def get_text_encoder(spec, data, work: Path, quick: bool):
    """The shipped toy-CLIP text tower, or one retrained by the package's recipe with ``spec`` (cached)."""
    from transformers import CLIPTextModelWithProjection

    from brainrecon.backbones.hub import TOY_WEIGHTS_DIR

    if spec is None:
        return CLIPTextModelWithProjection.from_pretrained(TOY_WEIGHTS_DIR / "text_encoder",
                                                           use_safetensors=True), {"clip": "shipped"}
    from brainrecon.backbones.toy import ToyBackboneConfig
    from brainrecon.training.toy_backbones import _train_clip

    steps = 20 if quick else int(spec["steps"])
    # keyed by the training captions too: rungs of different worlds train their own tower
    world = hashlib.sha1(np.ascontiguousarray(np.asarray(data["ids"])).tobytes()).hexdigest()[:10]
    key = hashlib.sha1(json.dumps([spec, steps, len(data["images"]), world], sort_keys=True).encode()).hexdigest()[:10]
    d = work / f"clip_{key}"
    rec_path = d / "ladder_clip.json"
    if not rec_path.is_file():
        cfg = ToyBackboneConfig(clip_steps=steps, clip_hard_negatives=int(spec["hard_negatives"]),
                                clip_attribute_weight=float(spec.get("attribute", 0.0)), progress=False,
                                threads=None)
        t = time.perf_counter()
        r = _train_clip(cfg, data, d)
        rec_path.write_text(json.dumps({"spec": spec, "clip": r, "wall_time_s": round(time.perf_counter() - t, 1)}))
    return (CLIPTextModelWithProjection.from_pretrained(d / "text_encoder", use_safetensors=True),
            json.loads(rec_path.read_text()))


@torch.no_grad()
def text_separation(text, tok) -> dict:
    """Mean / least L2 distance between the U-Net contexts of captions that differ in one attribute.

    The shipped toy CLIP keeps category and place words quiet (small distances) and colour loud.
    """
    from brainrecon.data.scenes import CATEGORIES, COLOURS, PLACE_WORDS

    families = {"category": [f"a large red {w} at the top on a plain grey background" for w in CATEGORIES],
                "colour": [f"a large {w} ring at the top on a plain grey background" for w in COLOURS],
                "place": [f"a large red ring {w} on a plain grey background" for w in PLACE_WORDS.values()]}
    out = {}
    for kind, caps in families.items():
        ids = tok(caps, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        h = text(ids).last_hidden_state.flatten(1)
        d = torch.cdist(h, h)
        iu = torch.triu_indices(len(caps), len(caps), 1)
        v = d[iu[0], iu[1]]
        out[kind] = {"mean": round(float(v.mean()), 2), "min": round(float(v.min()), 2)}
    return out


# ----------------------------------------------------------------------------- models
def make_denoiser(f: dict, in_ch: int, side: int, ctx_dim: int):
    from diffusers import UNet2DConditionModel

    from brainrecon.backbones.toy import _groups

    ch, n = tuple(f["channels"]), len(f["channels"])
    down = tuple("CrossAttnDownBlock2D" if i in f["attn_levels"] else "DownBlock2D" for i in range(n))
    up = tuple("CrossAttnUpBlock2D" if (n - 1 - i) in f["attn_levels"] else "UpBlock2D" for i in range(n))
    kw = {}
    if f["pooled_text"]:
        kw = dict(addition_embed_type="text", addition_embed_type_num_heads=4)
    if f["label_path"] == "class_embed":
        kw = dict(class_embed_type="projection",
                  projection_class_embeddings_input_dim=27 if f["label_place"] else 18)
    unet = UNet2DConditionModel(sample_size=side, in_channels=in_ch, out_channels=in_ch,
                                layers_per_block=int(f["layers_per_block"]), block_out_channels=ch,
                                down_block_types=down, up_block_types=up, cross_attention_dim=ctx_dim,
                                attention_head_dim=4, norm_num_groups=f["norm_groups"] or _groups(ch),
                                resnet_time_scale_shift=f["time_shift"], **kw)
    if f["blur"]:
        anti_alias(unet)
    return unet


class Blur(torch.nn.Module):
    """A fixed 3x3 binomial low-pass filter ([1, 2, 1] x [1, 2, 1] / 16), per channel, reflect-padded."""

    def __init__(self):
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (k[:, None] * k[None, :] / 16)[None, None], persistent=False)

    def forward(self, x):
        c = x.shape[1]
        return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"),
                                          self.kernel.to(x.dtype).expand(c, 1, 3, 3), groups=c)


def anti_alias(unet):
    """Zhang (2019)'s anti-aliasing on every resolution change: blur before each stride-2 convolution
    (so it subsamples a low-passed map) and after each nearest-neighbour upsampling (≈ interpolation).
    No parameters change; a one-cell shift at 8x8 then moves the deeper levels' maps smoothly."""
    for block in unet.down_blocks:
        for ds in block.downsamplers or []:
            ds.conv = torch.nn.Sequential(Blur(), ds.conv)
    for block in unet.up_blocks:
        for us in block.upsamplers or []:
            us.conv = torch.nn.Sequential(Blur(), us.conv)


def make_schedulers(f: dict):
    from diffusers import DDIMScheduler, DDPMScheduler

    kw = dict(num_train_timesteps=1000, prediction_type=f["prediction"], clip_sample=False)
    sched = f["schedule"]
    if sched.startswith("cosine"):
        kw.update(beta_schedule="squaredcos_cap_v2")
    else:
        kw.update(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    if "shift" in sched:                           # SNR(t) x k, as trained betas
        k = float(sched.split("shift")[1])
        ab = DDPMScheduler(**kw).alphas_cumprod.double()
        ab = ab * k / (ab * k + 1 - ab)
        betas = 1 - ab / torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
        kw = dict(kw, trained_betas=betas.clamp(max=0.999).tolist())
    zs = f["schedule"] == "zero_snr"
    train = DDPMScheduler(rescale_betas_zero_snr=zs, **kw)
    sample = DDIMScheduler(rescale_betas_zero_snr=zs, set_alpha_to_one=zs, steps_offset=1,
                           timestep_spacing="trailing" if zs else "leading", **kw)
    return train, sample


class Whitening:
    """Per-position channel whitening of latents: ``z' = diag(ev)^-1/2 V^T (z - m)`` and back."""

    def __init__(self, mean, vecs, ev):
        self.mean, self.vecs, self.scale = mean, vecs, ev.clamp(min=1e-8).sqrt()

    @classmethod
    def fit(cls, z):
        m = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).double()
        mean = m.mean(0)
        ev, V = torch.linalg.eigh((m - mean).T @ (m - mean) / len(m))
        return cls(mean.float(), V.flip(1).float(), ev.flip(0).float())

    def forward(self, z):
        c = (z.permute(0, 2, 3, 1) - self.mean) @ self.vecs / self.scale
        return c.permute(0, 3, 1, 2).contiguous()

    def inverse(self, w):
        z = (w.permute(0, 2, 3, 1) * self.scale) @ self.vecs.T + self.mean
        return z.permute(0, 3, 1, 2).contiguous()


class LabelContext(torch.nn.Module):
    """The true main-object labels as conditioning: 2 (or, with place, 3) context tokens, or an 18-d one-hot."""

    def __init__(self, dim: int):
        super().__init__()
        self.cat, self.col = torch.nn.Embedding(11, dim), torch.nn.Embedding(9, dim)   # last index: "none"
        self.place = torch.nn.Embedding(10, dim)                                      # 3x3 grid + "none"

    def tokens(self, cat, col, place=None):
        toks = [self.cat(cat), self.col(col)] + ([] if place is None else [self.place(place)])
        return torch.stack(toks, 1)


def place_index(bbox_frac) -> torch.Tensor:
    """The 3x3 grid cell (row * 3 + column) of each box's centre, boxes as fractions of the side."""
    b = torch.as_tensor(np.asarray(bbox_frac, np.float32))
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    return (torch.clamp((cy * 3).long(), 0, 2) * 3 + torch.clamp((cx * 3).long(), 0, 2)).long()


class CoordUNet(torch.nn.Module):
    """A U-Net that sees two coordinate channels (x, y in [-1, 1]) beside its input (CoordConv)."""

    def __init__(self, unet):
        super().__init__()
        self.inner = unet

    def forward(self, x, t, **kw):
        n, _, h, w = x.shape
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        grid = torch.stack([xs, ys])[None].expand(n, -1, -1, -1).to(device=x.device, dtype=x.dtype)
        return self.inner(torch.cat([x, grid], 1), t, **kw)


def onehot(cat, col, place=None):
    """Category (10) and colour (8) one-hots, and with ``place`` the 3x3 cell (9 more); dropped rows
    (``cat >= 10``) all zeros."""
    v = torch.zeros(len(cat), 18 if place is None else 27, device=cat.device)
    keep = cat < 10
    v[keep, cat[keep]] = 1
    v[keep, 10 + col[keep]] = 1
    if place is not None:
        v[keep, 18 + place.to(cat.device)[keep]] = 1
    return v


# ----------------------------------------------------------------------------- one rung
def run_rung(name: str, data, te, judges: dict, args, on_update=None) -> dict:
    from brainrecon.diffusion import denoise_latents, denoising_target, min_snr_weight
    from brainrecon.training import FitConfig, fit, latest_checkpoint
    from brainrecon.metrics import attribute_scores_per_image
    from brainrecon.metrics.backbones import attribute_accuracy

    f = rung_factors(name)
    if f["max_objects"] != 3 or f["pose"] != "random":
        data, te = load_world(len(data["images"]), len(te.images), heldout_seed=args.heldout_seed,
                              max_objects=f["max_objects"], pose=f["pose"])
    torch.manual_seed(0)
    t_start = time.perf_counter()
    images = data["images"]
    if f["space"] == "pixel":
        vae, vae_rec = None, {"vae": None}
        x0_all = images.float() / 127.5 - 1
    else:
        vae, vae_rec = get_vae(f["vae"], data, Path(args.work), args.quick, f["decoder_noise"])
        from brainrecon.training.toy_backbones import _encode_all

        x0_all = _encode_all(vae, images) * float(vae.config.scaling_factor)
        if f["whiten"]:
            white = Whitening.fit(x0_all)
            x0_all = white.forward(x0_all)
    t_vae = time.perf_counter() - t_start
    # the judges' ceiling for this rung: their reading of the held-out images after this space's round trip
    x_te = torch.from_numpy(te.images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        rt = x_te if vae is None else ((vae.decode(vae.encode(x_te * 2 - 1).latent_dist.mean).sample + 1) / 2).clamp(0, 1)
    psnr = float((10 * torch.log10(1 / ((rt - x_te) ** 2).flatten(1).mean(1).clamp(min=1e-10))).mean())
    ceiling = {jn: {k: round(v, 4) for k, v in attribute_accuracy(j, rt, te.category, te.colour).items() if k != "n"}
               for jn, j in judges.items()}
    # the main object's size (the longer side of its box, in image sides), split into terciles of the held-out
    # set: category by size says whether small or large objects lose their shape; the round trips' own
    # reading per tercile is the judge's ceiling there
    side_frac = np.maximum(te.bbox[:, 2] - te.bbox[:, 0], te.bbox[:, 3] - te.bbox[:, 1]) / 32
    size_edges = np.quantile(side_frac, [1 / 3, 2 / 3])
    size_bin = np.digitize(side_frac, size_edges)

    def by_size(judge, imgs, n):
        ok = attribute_scores_per_image(imgs, te.category[:n], te.colour[:n], te.bbox[:n], judge, 32)["category_ok"]
        ok, b_ = np.asarray(ok), size_bin[:n]
        return [round(float(ok[b_ == b].mean()), 4) if (b_ == b).any() else None for b in range(3)]

    size_record = {"edges_image_sides": [round(float(e), 3) for e in size_edges],
                   "ceiling_category": {jn: by_size(j, rt, len(rt)) for jn, j in judges.items()}}
    # fragility: the first judge's category reading of decode(z + sigma * std(z) * n), the generator's error model
    fragility = {}
    if vae is not None:
        with torch.no_grad():
            mu = vae.encode(x_te * 2 - 1).latent_dist.mean
            g = torch.Generator().manual_seed(1)
            for sg in (0.1, 0.3, 0.5):
                zn = mu + sg * mu.std() * torch.randn(mu.shape, generator=g)
                xn = ((vae.decode(zn).sample + 1) / 2).clamp(0, 1)
                fragility[f"sigma{sg:g}"] = round(attribute_accuracy(next(iter(judges.values())), xn, te.category,
                                                                     te.colour)["category"], 4)
    in_ch, side = x0_all.shape[1], x0_all.shape[-1]
    text, clip_rec = get_text_encoder(f["clip"], data, Path(args.work), args.quick)
    text = text.eval().requires_grad_(False)
    clip_rec = {**clip_rec, "separation": text_separation(text, data["tokenizer"])}
    text = text.to(args.device)          # contexts are computed where the denoiser runs
    width = text.config.hidden_size
    unet = make_denoiser(f, in_ch, side, width)
    if f["coords"]:
        from diffusers import UNet2DConditionModel

        cfg = dict(unet.config)
        cfg["in_channels"] = in_ch + 2
        unet = CoordUNet(UNet2DConditionModel.from_config(cfg))
    labels = LabelContext(width)
    model = torch.nn.ModuleDict({"unet": unet, "labels": labels})
    train_s, sample_s = make_schedulers(f)
    ids, empty = data["ids"], data["empty_ids"]
    cat, col = data["category"].long(), data["colour"].long()
    pla, pla_te = place_index(data["bbox_frac"]), place_index(np.asarray(te.bbox, np.float32) / 32)
    rng_pick = lambda step: np.random.default_rng([0, 4, step]).integers(0, len(x0_all), f["batch"])

    def context(m, t_ids, c, k, pl=None):
        """(encoder_hidden_states, class_labels) of a batch; dropped rows carry the null condition."""
        if f["cond"] == "caption":
            with torch.no_grad():
                return text(t_ids).last_hidden_state, None
        if f["label_path"] == "class_embed":
            return torch.zeros(len(c), 1, width, device=c.device), onehot(c, k, pl if f["label_place"] else None)
        return m["labels"].tokens(c, k, pl if f["label_place"] else None), None

    def batches(step):
        i = rng_pick(step)
        return x0_all[i], ids[i], cat[i], col[i], pla[i]

    def loss_fn(m, batch, step):
        z, t_ids, c, k, pl = batch
        drop = torch.rand(len(z), device=z.device) < 0.1
        t_ids = torch.where(drop[:, None], empty.to(z.device)[None], t_ids)
        c, k, pl = torch.where(drop, 10, c), torch.where(drop, 8, k), torch.where(drop, 9, pl)
        ehs, cl = context(m, t_ids, c, k, pl)
        noise = torch.randn_like(z)
        t = torch.randint(0, 1000, (len(z),), device=z.device)
        xt = train_s.add_noise(z, noise, t)
        target = denoising_target(train_s, z, noise, t)
        pred = m["unet"](xt, t, encoder_hidden_states=ehs, class_labels=cl).sample
        w = min_snr_weight(train_s, t, f["min_snr"]) if f["min_snr"] else torch.ones(len(z), device=z.device)
        return (w * ((pred - target) ** 2).flatten(1).mean(1)).mean()

    @torch.no_grad()
    def generate(m, gs: float, n: int):
        m.eval()
        dev = next(m.parameters()).device
        g = torch.Generator().manual_seed(0)
        x = torch.randn((n, in_ch, side, side), generator=g).to(dev)      # the same noise on any device
        caps = list(te.captions[:n])
        c, k = torch.as_tensor(te.category[:n]).long().to(dev), torch.as_tensor(te.colour[:n]).long().to(dev)
        tok = data["tokenizer"]
        t_ids = tok(caps, padding="max_length", max_length=tok.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(dev)
        cond = context(m, t_ids, c, k, pla_te[:n].to(dev))
        full = lambda v: torch.full((n,), v, device=dev)
        unc = context(m, empty.to(dev)[None].expand(n, -1), full(10), full(8), full(9))

        def noise_fn(xin, t, branch, step):
            parts = {"cond": [cond], "uncond": [unc], "both": [unc, cond]}[branch]
            ehs = torch.cat([p[0] for p in parts])
            cl = None if parts[0][1] is None else torch.cat([p[1] for p in parts])
            return m["unet"](xin, t, encoder_hidden_states=ehs, class_labels=cl).sample

        z = denoise_latents(sample_s, noise_fn, x, 25, gs).cpu()
        if f["whiten"]:
            z = white.inverse(z)
        img = (z + 1) / 2 if vae is None else (vae.decode(z / vae.config.scaling_factor).sample + 1) / 2
        m.train()
        return img.clamp(0, 1)

    # held-out targets in the denoiser's space, for the x0-error-by-timestep diagnostic
    if vae is None:
        z_te = x_te * 2 - 1
    else:
        from brainrecon.training.toy_backbones import _encode_all as _enc

        z_te = _enc(vae, torch.from_numpy(te.images).permute(0, 3, 1, 2).contiguous()) * float(vae.config.scaling_factor)
        if f["whiten"]:
            z_te = white.forward(z_te)

    @torch.no_grad()
    def x0_error(m) -> dict:
        """MSE of the denoiser's x0 estimate from x_t (true caption) against predicting the mean, per t."""
        m.eval()
        dev = next(m.parameters()).device
        tok = data["tokenizer"]
        t_ids = tok(list(te.captions[:len(z_te)]), padding="max_length", max_length=tok.model_max_length,
                    truncation=True, return_tensors="pt").input_ids.to(dev)
        ehs, cl = context(m, t_ids, torch.as_tensor(te.category).long().to(dev),
                          torch.as_tensor(te.colour).long().to(dev), pla_te.to(dev))
        g = torch.Generator().manual_seed(2)
        ab = train_s.alphas_cumprod
        zt = z_te.to(dev)
        out = {"mean_baseline": round(float(((z_te - z_te.mean(0)) ** 2).mean()), 4)}
        for t in (961, 800, 600, 400, 200):
            n = torch.randn(z_te.shape, generator=g).to(dev)
            a = ab[t].to(dev)
            xt = a.sqrt() * zt + (1 - a).sqrt() * n
            pred = m["unet"](xt, torch.full((len(xt),), t, device=dev), encoder_hidden_states=ehs,
                             class_labels=cl).sample
            x0 = (xt - (1 - a).sqrt() * pred) / a.sqrt() if f["prediction"] == "epsilon" else a.sqrt() * xt - (1 - a).sqrt() * pred
            out[f"t{t}"] = round(float(((x0 - zt) ** 2).mean()), 4)
        m.train()
        return out

    ema_model = None
    if f["ema"]:
        import copy

        ema_model = copy.deepcopy(model).requires_grad_(False)

    def ema_update(step, logs):
        """Polyak average of the weights, with the usual warm-up so early averages are not stuck at init."""
        if ema_model is None:
            return
        d = min(float(f["ema"]), (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema_model.parameters(), model.parameters()):
                pe.lerp_(p.detach(), 1 - d)

    curve, t_fit = [], [time.perf_counter(), time.process_time()]   # CPU time: fair when rungs share the machine
    eval_at = sorted(args.eval_at)

    def score(imgs, n):
        out = {}
        for jn, judge in judges.items():
            a = attribute_accuracy(judge, imgs, te.category[:n], te.colour[:n], te.bbox[:n], 32)
            sh = attribute_accuracy(judge, imgs, te.category[:n], te.colour[:n], np.roll(te.bbox[:n], n // 2, 0), 32)
            out[jn] = {k: round(a[k], 4) for k in ("category", "colour", "both", "position_error")}
            out[jn]["position_error_shuffled"] = round(sh["position_error"], 4)
            out[jn]["category_by_size"] = by_size(judge, imgs, n)
        return out

    def cb(step, logs):
        if step not in eval_at:
            return
        train_time = time.perf_counter() - t_fit[0]
        train_cpu = time.process_time() - t_fit[1]
        te0, tc0 = time.perf_counter(), time.process_time()
        imgs = generate(model, args.guidance, args.n_eval)
        row = {"step": step, "train_wall_s": round(train_time, 1), "train_cpu_s": round(train_cpu, 1), "gs5": score(imgs, args.n_eval),
               "loss_recent": float(np.mean([h["loss"] for h in hist[-100:]])) if hist else None,
               "x0_mse_by_t": x0_error(model)}
        if ema_model is not None:
            eimgs = generate(ema_model, args.guidance, args.n_eval)
            row["ema"] = {"gs5": score(eimgs, args.n_eval), "x0_mse_by_t": x0_error(ema_model)}
        if step == eval_at[-1]:
            row["gs0"] = score(generate(model, 0.0, args.n_eval), args.n_eval)
            if ema_model is not None:
                row["ema"]["gs0"] = score(generate(ema_model, 0.0, args.n_eval), args.n_eval)
            o = Path(args.out)                        # the figure sits beside its JSON
            png = o.with_name(f"toy_unet_ladder_{name}.png") if o.stem == "toy_unet_ladder" else o.with_suffix(".png")
            save_grid(imgs[:24], png, name, step, args.guidance)
            if ema_model is not None:
                save_grid(eimgs[:24], png.with_name(png.stem + "_ema.png"), name + " (EMA weights)", step, args.guidance)
        from safetensors.torch import save_file

        (Path(args.work) / name).mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(Path(args.work) / name / f"denoiser-{step}.safetensors"))
        if ema_model is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema_model.state_dict().items()},
                      str(Path(args.work) / name / f"denoiser-ema-{step}.safetensors"))
        row["eval_wall_s"] = round(time.perf_counter() - te0, 1)
        curve.append(row)
        print(json.dumps({"rung": name, **row}), flush=True)
        if on_update is not None:
            on_update(finish())                       # a killed rung keeps its finished rows
        t_fit[0] += time.perf_counter() - te0        # training time excludes evaluation
        t_fit[1] += time.process_time() - tc0

    def finish():
        return {"factors": {k: (list(v) if isinstance(v, tuple) else v) for k, v in f.items()},
                "parent": RUNGS[name][1], "question": RUNGS[name][2], "vae": vae_rec, "text_encoder": clip_rec,
                "vae_and_cache_wall_s": round(t_vae, 1), "curve": curve, "round_trip_psnr_db": round(psnr, 2),
                "judge_ceiling_round_trip": ceiling, "latent_fragility_category": fragility,
                "main_object_size_terciles": size_record,
                "unet_params_m": round(sum(p.numel() for p in unet.parameters()) / 1e6, 3),
                "threads": torch.get_num_threads()}

    hist = []
    if f["decoder_noise"] > 0 or args.rescore:
        # decoder rungs: the parent's denoiser, checkpoint by checkpoint (only the decoder differs);
        # --rescore: this rung's own saved checkpoints, scored again by the current code and judges
        from safetensors.torch import load_file

        src = Path(args.work) / (name if args.rescore and not f["decoder_noise"] else RUNGS[name][1])
        steps = sorted(int(c.stem.split("-")[1]) for c in src.glob("denoiser-[0-9]*.safetensors"))
        eval_at[:] = [s_ for s_ in steps if args.rescore or s_ in eval_at]
        for step in eval_at:
            model.load_state_dict(load_file(str(src / f"denoiser-{step}.safetensors")),
                                  strict=False)             # checkpoints from before LabelContext.place
            cb(step, {})
        return finish()
    # resumable (but for EMA rungs, whose average is not checkpointed): a rerun with a later --eval-at
    # continues the same run from its newest checkpoint, exactly (constant lr), keeping the earlier rows
    # (a cosine rung's schedule depends on its last step, so its checkpoints are kept per schedule length)
    ckpt_dir = None if ema_model is not None else Path(args.work) / name / (
        "fit" if f["lr_schedule"] == "constant" else f"fit-{f['lr_schedule']}-{eval_at[-1]}")
    resumed = latest_checkpoint(ckpt_dir) if ckpt_dir is not None else None
    if resumed is not None:
        start = int(resumed.name.split("-")[1])
        old = json.loads(Path(args.out).read_text())["rungs"].get(name, {}) if Path(args.out).is_file() else {}
        curve.extend(r for r in old.get("curve", []) if r["step"] <= start)
        done = curve[-1] if curve else {"step": 0, "train_wall_s": 0.0, "train_cpu_s": 0.0}
        rate = [done[k] / max(1, done["step"]) for k in ("train_wall_s", "train_cpu_s")]
        # earlier calls' training time: recorded up to the last scored row, estimated from its rate after it
        t_fit[0] -= done["train_wall_s"] + rate[0] * (start - done["step"])
        t_fit[1] -= done["train_cpu_s"] + rate[1] * (start - done["step"])
        print(f"resuming {name} from step {start} ({len(curve)} earlier rows kept)", flush=True)
    cfg = FitConfig(max_steps=eval_at[-1], lr=f["lr"], warmup_steps=100, lr_schedule=f["lr_schedule"], grad_clip=1.0,
                    seed=0, progress=False, weight_decay=0.01, cpu=args.device == "cpu",
                    checkpoint_every=0 if ckpt_dir is None else 500)
    fit(model, loss_fn, batches, cfg, ckpt_dir, callbacks=[lambda s, l: hist.append(l), ema_update, cb])
    return finish()

def save_grid(imgs, path: Path, name: str, step: int, guidance: float = 5.0):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 8, figsize=(8, 3.3))
    for a, im in zip(axes.flat, imgs):
        a.imshow(im.permute(1, 2, 0).numpy())
        a.set_axis_off()
    fig.suptitle(f"{name}, step {step}, guidance {guidance:g} (first 24 judged captions)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def merge(out: Path, name: str, res: dict, meta: dict, keep_training_record: bool = False):
    data = json.loads(out.read_text()) if out.is_file() else {"rungs": {}}
    if keep_training_record and name in data["rungs"]:
        old = {r["step"]: r for r in data["rungs"][name].get("curve", [])}
        for row in res["curve"]:
            for k in ("train_wall_s", "train_cpu_s", "loss_recent"):
                if row["step"] in old and k in old[row["step"]]:
                    row[k] = old[row["step"]][k]
                elif k != "loss_recent":
                    row.pop(k, None)                  # a rescore's own timing is not a training time
        res = {**data["rungs"][name], **res, "rescored": True}
    data["rungs"][name] = res
    data["meta"] = meta
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, out)


def table(files) -> str:
    """Markdown: one row per rung, category / colour / place at each evaluated step (first judge)."""
    rungs = {}
    for f in files:
        rungs.update(json.loads(Path(f).read_text())["rungs"])
    lines = ["| rung | changes (from) | round trip: PSNR, judge category | category @1k / 2k / 4k | colour @ last "
             "| place error (shuffled) @ last | category at guidance 0 | x0 MSE t=961 / 600 (mean) @ last "
             "| train s @ last |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rungs.items():
        curve = r.get("curve", [])
        if not curve:
            continue
        j = next(iter(curve[0]["gs5"]))
        cats = " / ".join(f"{c['gs5'][j]['category']:.1%}" for c in curve)
        last = curve[-1]
        g0 = f"{last['gs0'][j]['category']:.1%}" if "gs0" in last else "–"
        ceil = r.get("judge_ceiling_round_trip", {}).get(j, {}).get("category")
        rt = f"{r['round_trip_psnr_db']:.1f} dB, {ceil:.1%}" if ceil is not None else "–"
        ch = RUNGS.get(name, ({}, None, ""))
        x0 = last.get("x0_mse_by_t")
        x0s = f"{x0['t961']:.2f} / {x0['t600']:.2f} ({x0['mean_baseline']:.2f})" if x0 else "–"
        lines.append(f"| {name} | {ch[2]} ({r.get('parent')}) | {rt} | {cats} | {last['gs5'][j]['colour']:.1%} | "
                     f"{last['gs5'][j]['position_error']:.3f} ({last['gs5'][j]['position_error_shuffled']:.3f}) | "
                     f"{g0} | {x0s} | {last['train_wall_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    global VAE_STEPS
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rungs", nargs="+", default=["base"], help="rung names (see --list)")
    p.add_argument("--list", action="store_true", help="print the rungs and exit")
    p.add_argument("--table", nargs="*", metavar="JSON",
                   help="print the markdown table of these result files (default: every ladder JSON next to --out)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs (seconds)")
    p.add_argument("--eval-at", type=int, nargs="+", default=None,
                   help="steps at which to score (default 1000 2000 4000; --quick: 4 8). A later call with more "
                        "steps resumes the rung from its newest checkpoint in --work and keeps the earlier rows")
    p.add_argument("--n-train", type=int, default=20_000)
    p.add_argument("--n-eval", type=int, default=200)
    p.add_argument("--heldout-seed", type=int, default=10_000,
                   help="seed of the judged captions' scenes; 0 judges the first --n-eval training scenes "
                        "(a memorisation check: can the recipe redraw what it was trained on?)")
    p.add_argument("--judge", nargs="*", default=[], help="extra attribute-classifier folders to judge with")
    p.add_argument("--rescore", action="store_true",
                   help="no training: score each rung's saved checkpoints again (keeps the recorded training times)")
    p.add_argument("--vae-steps", type=int, nargs=2, default=list(VAE_STEPS), metavar=("VAE", "DECODER"),
                   help="steps of a rung's own VAE and of its decoder fine-tuning (default %(default)s)")
    p.add_argument("--guidance", type=float, default=5.0,
                   help="classifier-free guidance of the judged samples (the 'gs5' rows; default %(default)s)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where the denoiser trains and samples (the VAE, text encoder cache and judges stay on "
                        "the CPU except the text encoder, which follows the denoiser)")
    p.add_argument("--work", default="runs/toy_unet_ladder")
    p.add_argument("--out", default="benchmarks/results/toy_unet_ladder.json")
    args = p.parse_args(argv)
    if args.list:
        for k, (ch, parent, q) in RUNGS.items():
            print(f"{k:14s} (from {parent}): {q}")
        return
    if args.table is not None:
        files = args.table or sorted(Path(args.out).parent.glob("toy_unet_ladder*.json"))
        print(table(files))
        return
    unknown = [r for r in args.rungs if r not in RUNGS]
    if unknown:
        p.error(f"unknown rung(s) {unknown}; known: {sorted(RUNGS)}")
    if args.quick:
        args.eval_at, args.n_train, args.n_eval = args.eval_at or [4, 8], 256, 16
        args.out = str(Path(args.work) / "quick.json")
    args.eval_at = args.eval_at or [1000, 2000, 4000]
    torch.set_num_threads(args.threads)
    VAE_STEPS = tuple(args.vae_steps)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    from brainrecon.backbones.attributes import AttributeClassifier
    from brainrecon.backbones.hub import TOY_WEIGHTS_DIR

    judges = {"shipped": AttributeClassifier.from_pretrained(TOY_WEIGHTS_DIR / "attribute_classifier").eval()}
    for j in args.judge:
        judges[Path(j).name] = AttributeClassifier.from_pretrained(j).eval()
    data, te = load_world(args.n_train, args.n_eval, heldout_seed=args.heldout_seed)
    meta = {"platform": platform.platform(), "torch": torch.__version__, "eval_at": args.eval_at,
            "n_train": args.n_train, "n_eval": args.n_eval, "heldout_seed": args.heldout_seed, "guidance": args.guidance, "ddim_steps": 25,
            "judges": list(judges), "device": args.device, "vae_steps": list(VAE_STEPS), "base": {k: (list(v) if isinstance(v, tuple) else v) for k, v in BASE.items()}}
    for name in args.rungs:
        out = Path(args.out)
        if args.rescore and out.name == "toy_unet_ladder.json":      # the rung's own file, as the runs wrote them
            out = out.with_name(f"toy_unet_ladder_{name}.json")
        res = run_rung(name, data, te, judges, args,
                       on_update=None if args.rescore else (lambda r, n=name, o=out: merge(o, n, r, meta)))
        merge(out, name, res, meta, keep_training_record=args.rescore)


if __name__ == "__main__":
    sys.exit(main())
