"""Contrast, Attend and Diffuse, phase 3: tuning the LDM on the FRL encoder (CAD §3.3 Eq. 9, §4.2.2).

::

    from brainrecon.training.cad_ldm import train_cad
    from brainrecon.training.cad import CADConfig
    out = train_cad(CADConfig.smoke(output_dir="runs/cad"))       # seconds
    pipe = load_reconstructor(out / "reconstructor")              # voxels -> images

:func:`train_cad` runs, in one resumable folder: the FRL phases 1 and 2 (:func:`~brainrecon.training.cad.run_frl`),
then phase 3 — the :class:`~brainrecon.models.cad.CADModel` (FRL encoder + token mapper + time-embedding
projection + the U-Net's cross-attention heads) trained with the shared loop on
``‖ε − ε_θ(z_t, t, E_F(v))‖²`` (Eq. 9; the backbone's own target, ``v`` for a v-prediction backbone), every
other U-Net weight frozen. It writes ``OUT/reconstructor/`` (light folder) and ``metrics.json``: phase 3's
held-out denoising error with each scan's own condition against a shuffled scan's, the empty caption's and
the true caption's (the same noise and timesteps for every row).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..diffusion import denoising_target
from ..errors import check_range
from ..models.cad import CADModel
from .cache import cache_stage_data, sample_indices
from .cad import CADConfig, check_frl_config, run_frl
from .run import RunContext, ship_reconstructor

__all__ = ["CADDenoisingObjective", "train_cad", "score_cad_denoiser", "ship_cad"]


class CADDenoisingObjective(nn.Module):
    """Eq. 9 with the FRL encoder's double conditioning; ``cond_drop`` of the conditions replaced by the
    empty caption and a zero time term (classifier-free guidance's unconditional branch; 0 in the paper).

    Holds the trainable :class:`CADModel`; the adapted U-Net (its frozen weights the backbone's, its
    cross-attention heads the model's) and the scheduler stay outside the module tree.
    """

    def __init__(self, model: CADModel, unet, scheduler, empty_text: torch.Tensor, cond_drop: float = 0.0):
        super().__init__()
        self.model = model
        self.frozen = {"unet": model.adapt_unet(unet), "scheduler": scheduler}
        for n, p in self.frozen["unet"].named_parameters():
            if ".attn2." not in n:
                p.requires_grad_(False)
        self.register_buffer("empty_text", empty_text.float(), persistent=False)
        self.cond_drop = float(cond_drop)

    def forward(self, voxels: torch.Tensor, latents: torch.Tensor, generator: torch.Generator | None = None):
        unet, sched = self.frozen["unet"], self.frozen["scheduler"]
        context, time_term = self.model.condition(self.model.encode_tokens(voxels))
        if self.cond_drop > 0:
            drop = torch.rand(len(latents), generator=generator).to(latents.device) < self.cond_drop
            context = torch.where(drop[:, None, None], self.empty_text.to(context.dtype).expand_as(context), context)
            time_term = torch.where(drop[:, None], torch.zeros_like(time_term), time_term)
        noise = torch.randn(latents.shape, generator=generator).to(latents.device)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(latents),), generator=generator).to(latents.device)
        zt = sched.add_noise(latents, noise, t)
        pred = unet(zt, t, encoder_hidden_states=context, class_labels=time_term).sample
        return F.mse_loss(pred.float(), denoising_target(sched, latents, noise, t).float())


@torch.no_grad()
def score_cad_denoiser(model: CADModel, unet, scheduler, voxels: torch.Tensor, latents: torch.Tensor,
                       text: torch.Tensor, empty_text: torch.Tensor, draws: int = 4, seed: int = 0) -> dict:
    """Held-out Eq. 9 error of ``model`` beside three controls, on the same noise and timesteps.

    Returns ``noise_mse`` (each scan's own condition), ``noise_mse_shuffled_scan`` (the next scan's),
    ``noise_mse_no_brain`` (the backbone U-Net with the empty caption) and ``noise_mse_true_caption`` (the
    backbone U-Net with the image's caption: what the text pathway alone gives).
    """
    model.eval()
    adapted = model.adapt_unet(unet)
    g = torch.Generator().manual_seed(int(seed))
    ctx, tt = model.condition(model.encode_tokens(voxels))
    perm = torch.roll(torch.arange(len(voxels)), 1)
    sums, count = {"own": 0.0, "shuffled": 0.0, "empty": 0.0, "caption": 0.0}, 0
    empty = empty_text.float().expand(len(latents), -1, -1)
    for _ in range(int(draws)):
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=g)
        zt = scheduler.add_noise(latents, noise, t)
        target = denoising_target(scheduler, latents, noise, t).float()
        preds = {"own": adapted(zt, t, encoder_hidden_states=ctx, class_labels=tt).sample,
                 "shuffled": adapted(zt, t, encoder_hidden_states=ctx[perm], class_labels=tt[perm]).sample,
                 "empty": unet(zt, t, encoder_hidden_states=empty).sample,
                 "caption": unet(zt, t, encoder_hidden_states=text.float()).sample}
        for k, p in preds.items():
            sums[k] += float(F.mse_loss(p.float(), target, reduction="sum")) / latents[0].numel()
        count += len(latents)
    return {"n_rows": int(len(latents)), "draws": int(draws), "noise_mse": sums["own"] / count,
            "noise_mse_shuffled_scan": sums["shuffled"] / count, "noise_mse_no_brain": sums["empty"] / count,
            "noise_mse_true_caption": sums["caption"] / count}


def train_cad(config: CADConfig, world=None, backbone=None) -> Path:
    """FRL phases 1–2, then phase 3 (Eq. 9), the reconstructor and its scores; return the output folder.

    Parameters
    ----------
    config : CADConfig
        ``ldm_steps``, ``ldm_lr`` and ``cond_drop`` set phase 3; the rest the FRL phases.
    world : ToyWorld, optional
        An already built toy world (else ``config.world`` / ``toy_preset``).
    backbone : Backbone, optional
        Else ``config.backbone`` is loaded (the toy one by default).
    """
    cfg = config
    check_frl_config(cfg, world)
    check_range("ldm_steps", cfg.ldm_steps, 1)
    check_range("cond_drop", cfg.cond_drop, 0.0, 1.0, float)
    with RunContext(cfg, "cad", world=world) as ctx:
        bb = ctx.backbone(backbone)
        fmri, metrics, results = run_frl(ctx, cfg)
        subject = metrics["subject"]
        train = cache_stage_data(ctx.voxel_dataset([subject], "train"), bb, progress=False)
        test = cache_stage_data(ctx.voxel_dataset([subject], "test"), bb, progress=False)
        model = CADModel.from_backbone(bb, fmri.to(ctx.device), subject).to(ctx.device)
        obj = CADDenoisingObjective(model, bb.unet, bb.scheduler, train.empty_text, cfg.cond_drop)
        rows = train.rows(subject)
        v_train, z_train = train.voxels[subject].float(), train.latents[rows].float()

        def batch(step):
            i = torch.as_tensor(sample_indices(len(rows), cfg.batch_size, cfg.seed, 31, step, ctx.rank))
            return v_train[i], z_train[i]

        def loss_fn(m, b, step):
            g = torch.Generator().manual_seed(int(np.random.default_rng([cfg.seed, 32, int(step)]).integers(2**62)))
            return m(b[0], b[1], g)

        results["ldm"] = ctx.fit(obj, loss_fn, batch, cfg.fit_config(cfg.ldm_steps, cfg.ldm_lr, "CAD phase 3 (LDM)",
                                                                   tag=4), "ldm")
        model = model.cpu().eval()
        t_rows = test.rows(subject)[:cfg.n_eval]
        metrics["ldm"] = score_cad_denoiser(model, bb.unet.cpu(), bb.scheduler, test.voxels[subject][:cfg.n_eval].float(),
                                            test.latents[t_rows].float(), test.text(t_rows).float(), test.empty_text,
                                            seed=cfg.seed)
        bb.to(ctx.device)
        # no classifier-free guidance without a trained unconditional branch (the official code has none)
        ctx.save_reconstructor(model, bb, "cad", subject, guidance_scale=None if cfg.cond_drop > 0 else 1.0)
        ctx.finish(metrics, results)
    return Path(cfg.output_dir)


def ship_cad(run_dir, dest, dtype: torch.dtype = torch.float16) -> Path:
    """Copy a :func:`train_cad` run's reconstructor for shipping, its weights stored as ``dtype``."""
    return ship_reconstructor(run_dir, dest, CADModel, "cad", lambda m: m.to(dtype))
