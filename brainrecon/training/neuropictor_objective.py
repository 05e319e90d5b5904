"""The objective and the two training phases shared by stages ii and iii (NeuroPictor Eq. 8, 9, 3).

:func:`train_denoiser` runs the main phase (``L_dif + λ·L_sem``) and then the classifier-free-guidance
phase, in which ``cfg_drop`` of the semantic conditions are replaced by the empty caption's embedding
(NeuroPictor §4.1), each a resumable :func:`~brainrecon.training.fit` call, and scores the result on
held-out scans (:func:`~brainrecon.training.neuropictor_scores.score_denoiser`).

Two optional terms, off in the paper's setting and on in the toy presets, help the LLMN learn to
read the scan in a few thousand CPU steps instead of the official ~10⁵ GPU steps
(``data_cards/neuropictor_toy.md``, "Why the low-level branch was weak"):

* ``x0_weight_max`` = γ weights each sample's ε-error by ``min((1 − ᾱ_t)/ᾱ_t, γ)`` (normalised to a
  mean of 1 over the timesteps): the error of the implied ``x_0`` estimate, clipped. The uniform
  ε-loss puts most of its weight on low noise, where a denoiser gains from extra capacity but little
  from the scan; this moves it to high noise, where the layout is decided.
* ``layout_weight`` = μ adds ``μ·MSE(P(F_0), z_0)``: a training-only 1×1 convolution ``P`` reads the
  clean latent from the LLMN's feature map ``F_0 = E_ft(S^r)`` (Eq. 5), so ``E_ft`` learns the layout
  directly instead of through the frozen U-Net's residual path. ``P`` is never saved with the model;
  at the start of every phase (main, CFG) and stage it is set to the least-squares read-out of ``z_0``
  from the current ``F_0`` (:meth:`DenoisingObjective.fit_layout_probe`), so ``L_layout`` continues
  where the previous phase left it instead of restarting from a random probe whose gradients would
  pull ``E_ft`` away from the layout it learned.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import nn

from ..diffusion import denoising_target
from . import cache as sd
from .neuropictor_scores import score_denoiser

__all__ = ["DenoisingObjective", "train_denoiser", "x0_timestep_weights", "PROBE_FIT_ROWS"]

#: Training rows (distinct, seeded) on which the layout probe is fitted at the start of each phase.
PROBE_FIT_ROWS = 512


def x0_timestep_weights(alphas_cumprod: torch.Tensor, max_weight: float | None) -> torch.Tensor:
    """Per-timestep weights ``min((1 − ᾱ_t)/ᾱ_t, γ)`` normalised to mean 1 (all ones for ``None``).

    ``(1 − ᾱ_t)/ᾱ_t = 1/SNR(t)`` turns an ε-error into the error of the implied ``x_0``
    (``x̂_0 = (z_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t``); clipping at γ keeps the noisiest steps from dominating.
    """
    ab = alphas_cumprod.double()
    if max_weight is None:
        return torch.ones_like(ab, dtype=torch.float32)
    w = torch.clamp((1 - ab) / ab, max=float(max_weight))
    return (w / w.mean()).float()


class DenoisingObjective(nn.Module):
    """``L = L_dif + λ·L_sem [+ μ·L_layout]`` (NeuroPictor Eq. 8, 9, 3) with CFG dropout of ``F^sem``.

    Holds the trainable :class:`~brainrecon.models.NeuroPictorModel` (and, with ``layout_weight``,
    the training-only probe ``layout_probe``); the frozen U-Net is kept outside the module tree
    (never checkpointed, never handed to the optimizer). ``x0_weight_max`` weights ``L_dif`` per
    timestep (:func:`x0_timestep_weights`); ``None`` is the paper's uniform mean.
    """

    def __init__(self, model, unet, scheduler, empty_text, semantic_weight: float, drop: float,
                 layout_weight: float = 0.0, x0_weight_max: float | None = None):
        super().__init__()
        self.model = model
        self.frozen = {"unet": unet, "scheduler": scheduler}
        self.register_buffer("empty_text", empty_text.float(), persistent=False)
        self.register_buffer("t_weight", x0_timestep_weights(scheduler.alphas_cumprod, x0_weight_max),
                             persistent=False)
        self.semantic_weight, self.drop = float(semantic_weight), float(drop)
        self.layout_weight = float(layout_weight)
        if self.layout_weight > 0:
            self.layout_probe = nn.Conv2d(model.llmn.feature_transform.zero_conv.out_channels,
                                          unet.config.in_channels, kernel_size=1)

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
        target = denoising_target(sched, latents, noise, t)
        per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
        dif = (per_sample * self.t_weight.to(per_sample.device)[t]).mean()   # Eq. 8 (weighted if set)
        sem_loss = F.mse_loss(txt.float(), text.float())                       # Eq. 3 (mean over elements)
        loss = dif + self.semantic_weight * sem_loss
        logs = {"diffusion": per_sample.mean().detach(), "semantic": sem_loss.detach()}
        if self.layout_weight > 0:
            probe = self.layout_probe(self.model.llmn.feature_map(tokens).to(self.layout_probe.weight.dtype))
            layout = F.mse_loss(probe.float(), latents.float())
            loss = loss + self.layout_weight * layout
            logs["layout"] = layout.detach()
        return loss, logs

    @torch.no_grad()
    def fit_layout_probe(self, maps: torch.Tensor, latents: torch.Tensor, batch_size: int = 64,
                         ridge: float = 1e-3) -> float:
        """Set the probe ``P`` to the ridge least-squares read-out of ``z_0`` from ``F_0 = E_ft(S^r)``.

        Parameters
        ----------
        maps : Tensor ``(N, 1, H, W)``
            Flatmaps of training rows.
        latents : Tensor ``(N, c, h, w)``
            Their clean latents ``z_0``.
        batch_size : int
            Rows per forward pass of the encoder and ``E_ft``.
        ridge : float
            Added to the diagonal of the normal equations, relative to their mean diagonal.

        Returns
        -------
        float
            ``MSE(P(F_0), z_0)`` on these rows after the fit: where ``L_layout`` starts.
        """
        if self.layout_weight <= 0:
            raise ValueError("fit_layout_probe needs layout_weight > 0 (there is no probe).")
        probe = self.layout_probe
        device = probe.weight.device
        k = probe.in_channels + 1                                              # features + bias
        gram = torch.zeros(k, k, dtype=torch.float64, device=device)           # Σ x xᵀ over pixels
        cross = torch.zeros(k, probe.out_channels, dtype=torch.float64, device=device)   # Σ x yᵀ
        y_sq, count = 0.0, 0
        for i in range(0, len(maps), batch_size):    # streamed: SD-size F_0 never sits in memory whole
            f = self.model.llmn.feature_map(self.model.encode(maps[i:i + batch_size].to(device)))
            x = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).double()         # one row per pixel
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=device)], 1)
            y = latents[i:i + batch_size].to(device).permute(0, 2, 3, 1).reshape(len(x), -1).double()
            gram += x.T @ x
            cross += x.T @ y
            y_sq += float(y.pow(2).sum())
            count += y.numel()
        reg = ridge * gram.diagonal().mean() * torch.eye(k, dtype=gram.dtype, device=device)
        w = torch.linalg.solve(gram + reg, cross)                              # (C + 1, c)
        probe.weight.copy_(w[:-1].T.reshape(probe.weight.shape).to(probe.weight.dtype))
        probe.bias.copy_(w[-1].to(probe.bias.dtype))
        # Σ (xᵀw − y)² = Σ y² − 2 tr(wᵀ Σ x yᵀ) + tr(wᵀ Σ x xᵀ w)
        sse = y_sq - 2 * float((w * cross).sum()) + float((w * (gram @ w)).sum())
        return max(sse, 0.0) / count


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
    unet = backbone.unet.to(run.device).eval().requires_grad_(False)
    sched = DDPMScheduler.from_config(backbone.scheduler.config)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        model.llmn.controlnet.enable_gradient_checkpointing()
    model.encoder.requires_grad_(bool(cfg.train_encoder))
    results = {}
    for phase, steps, lr, drop in (("main", cfg.steps, cfg.lr, 0.0), ("cfg", cfg.cfg_steps, cfg.cfg_lr, cfg.cfg_drop)):
        objective = DenoisingObjective(model, unet, sched, train.empty_text, cfg.semantic_weight, drop,
                                       layout_weight=cfg.layout_weight, x0_weight_max=cfg.x0_weight_max)
        if objective.layout_weight > 0:   # the probe continues from the current F_0 (module docstring)
            objective.to(run.device)
            pick = np.random.default_rng([cfg.seed, tag, len(results)]).permutation(len(train))
            rows = train.batch(pick[:PROBE_FIT_ROWS])
            objective.fit_layout_probe(rows["maps"], rows["latents"])

        def batches(step, _tag=tag * 10 + len(results)):
            return train.batch(sd.sample_indices(len(train), cfg.batch_size, cfg.seed, _tag, step, run.rank))

        def loss_fn(obj, b, step):
            return obj(b["maps"], b["latents"], b["text"])

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
