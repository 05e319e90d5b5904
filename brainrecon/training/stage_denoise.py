"""The objective and the two training phases shared by stages ii and iii (NeuroPictor Eq. 8, 9, 3).

:func:`train_denoiser` runs the main phase (``L_dif + λ·L_sem``) and then the classifier-free-guidance
phase, in which ``cfg_drop`` of the semantic conditions are replaced by the empty caption's embedding
(NeuroPictor §4.1), each a resumable :func:`~brainrecon.training.fit` call, and scores the result on
held-out scans (:func:`~brainrecon.training.stage_eval.score_denoiser`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import stage_data as sd
from .stage_eval import score_denoiser

__all__ = ["DenoisingObjective", "train_denoiser"]


class DenoisingObjective(nn.Module):
    """``L = L_dif + λ·L_sem`` (NeuroPictor Eq. 8, 9, 3) with CFG dropout of ``F^sem``.

    Holds the trainable :class:`~brainrecon.models.NeuroPictorModel`; the frozen U-Net is kept
    outside the module tree (never checkpointed, never handed to the optimizer).
    """

    def __init__(self, model, unet, scheduler, empty_text, semantic_weight: float, drop: float):
        super().__init__()
        self.model = model
        self.frozen = {"unet": unet, "scheduler": scheduler}
        self.register_buffer("empty_text", empty_text.float(), persistent=False)
        self.semantic_weight, self.drop = float(semantic_weight), float(drop)

    def forward(self, maps, latents, text):
        unet, sched = self.frozen["unet"], self.frozen["scheduler"]
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(latents),), device=latents.device)
        noisy = sched.add_noise(latents, noise, t)
        tokens = self.model.encode(maps)                                        # Eq. 1
        sem, txt = self.model.semantic_condition(fmri_tokens=tokens, return_text_features=True)  # Eq. 2, 4
        if self.drop > 0:                                                      # CFG phase (§4.1)
            gone = torch.rand(len(sem), device=sem.device) < self.drop
            sem = torch.where(gone[:, None, None], self.empty_text.to(sem.dtype), sem)
        pred = self.model.predict_noise(unet, noisy, t, fmri_tokens=tokens, semantic_condition=sem)
        kind = sched.config.prediction_type
        target = noise if kind == "epsilon" else sched.get_velocity(latents, noise, t)
        dif = F.mse_loss(pred.float(), target.float())                         # Eq. 8
        sem_loss = F.mse_loss(txt.float(), text.float())                       # Eq. 3 (mean over elements)
        return dif + self.semantic_weight * sem_loss, dif.detach(), sem_loss.detach()


def train_denoiser(run, cfg, model, train, test, backbone, tag: int):
    """Stages ii/iii: the main phase, then the CFG phase, then held-out figures.

    Parameters
    ----------
    run : RunContext
    cfg : MultisubjectConfig or RefineConfig
    model : NeuroPictorModel
    train, test : StageData
        With latents and caption features.
    backbone : Backbone
    tag : int
        Separates the batch streams of different stages.

    Returns
    -------
    (NeuroPictorModel, dict of FitResult by phase, dict of held-out figures)
    """
    from diffusers import DDPMScheduler

    unet = backbone.unet.to(run.device).eval().requires_grad_(False)
    sched = DDPMScheduler.from_config(backbone.scheduler.config)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        model.llmn.controlnet.enable_gradient_checkpointing()
    model.encoder.requires_grad_(bool(cfg.train_encoder))
    results = {}
    for phase, steps, lr, drop in (("main", cfg.steps, cfg.lr, 0.0), ("cfg", cfg.cfg_steps, cfg.cfg_lr, cfg.cfg_drop)):
        objective = DenoisingObjective(model, unet, sched, train.empty_text, cfg.semantic_weight, drop)

        def batches(step, _tag=tag * 10 + len(results)):
            return train.batch(sd.sample_indices(len(train), cfg.batch_size, cfg.seed, _tag, step, run.rank))

        def loss_fn(obj, b, step):
            loss, dif, sem = obj(b["maps"], b["latents"], b["text"])
            return loss, {"diffusion": dif, "semantic": sem}

        desc = f"{run.stage_label} · {'CFG phase' if phase == 'cfg' else 'main'}"
        res = run.fit(objective, loss_fn, batches, cfg.fit_config(steps, lr, desc, tag=len(results)), phase)
        model = res.model.model
        results[phase] = res
    if cfg.gradient_checkpointing:
        unet.disable_gradient_checkpointing()
        model.llmn.controlnet.disable_gradient_checkpointing()
    model = model.float().eval()
    counts = torch.bincount(train.text_index, minlength=len(train.text_table)).float()
    mean_text = (counts[:, None, None] * train.text_table.float()).sum(0) / counts.sum()
    metrics = score_denoiser(model, unet, sched, test, mean_text, n=cfg.n_eval, seed=cfg.seed)
    return model, results, metrics
