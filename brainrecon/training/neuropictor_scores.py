"""Held-out figures of the NeuroPictor stages (written to each stage's ``metrics.json``).

* Stage i (:func:`score_encoder`): how well the guide token alone rebuilds held-out flatmaps
  (NeuroPictor §3.1), against the trivial baseline that predicts the training mean map.
* Stages ii–iii (:func:`score_denoiser`): the denoising error of Eq. 8 on held-out scans with fixed
  noise and timesteps — NeuroPictor's prediction against the frozen U-Net given no brain
  information (the empty caption: what the backbone does alone) and given the true caption (what
  a perfect semantic decoder would reach) and with the LLMN fed *another* scan's tokens (does the
  low-level pathway use the scan at all, or only add scan-independent capacity?) — and the
  semantic loss of Eq. 3 against predicting the mean training caption feature.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..diffusion import denoising_target

__all__ = ["score_encoder", "score_denoiser", "masked_map_scores"]


def masked_map_scores(pred: torch.Tensor, target: torch.Tensor, pixel_mask: torch.Tensor) -> dict:
    """Mean per-map Pearson r and MSE over the cortex pixels of ``(N, 1, H, W)`` maps."""
    m = pixel_mask.reshape(-1).bool()
    p = pred.reshape(len(pred), -1)[:, m].double()
    t = target.reshape(len(target), -1)[:, m].double()
    pc, tc = p - p.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    r = (pc * tc).sum(1) / (pc.norm(dim=1) * tc.norm(dim=1)).clamp_min(1e-12)
    return {"r": float(r.mean()), "mse": float(((p - t) ** 2).mean())}


@torch.no_grad()
def score_encoder(encoder, maps: torch.Tensor, pixel_mask: torch.Tensor, train_mean_map: torch.Tensor,
                  batch_size: int = 256) -> dict:
    """Held-out reconstruction of flatmaps from the guide token (NeuroPictor §3.1).

    Returns ``r`` / ``mse`` of the rebuilt maps, ``baseline_r`` / ``baseline_mse`` of the training
    mean map, and ``r2 = 1 - mse / baseline_mse`` (share of the variance around the mean map that
    the guide token carries), all over cortex pixels.
    """
    encoder.eval()
    dev = next(encoder.parameters()).device
    rec = torch.cat([encoder(maps[i:i + batch_size].to(dev).float(), mask_ratio=0.0)[1].float().cpu()
                     for i in range(0, len(maps), batch_size)])
    model = masked_map_scores(rec, maps.float(), pixel_mask)
    base = masked_map_scores(train_mean_map.expand_as(maps).float(), maps.float(), pixel_mask)
    return {"n_maps": len(maps), "r": model["r"], "mse": model["mse"], "baseline_r": base["r"],
            "baseline_mse": base["mse"], "r2": 1.0 - model["mse"] / base["mse"],
            "baseline": "training mean map"}


@torch.no_grad()
def score_denoiser(model, unet, scheduler, data, mean_text: torch.Tensor, n: int | None = None,
                   draws: int = 4, seed: int = 0, batch_size: int = 64) -> dict:
    """Held-out denoising error (Eq. 8) and semantic error (Eq. 3) of a NeuroPictor model.

    Parameters
    ----------
    model : NeuroPictorModel
    unet : UNet2DConditionModel
        The frozen backbone U-Net.
    scheduler : diffusers scheduler
        Noise schedule (``add_noise``; ``prediction_type`` decides the target).
    data : StageData
        Held-out rows with latents and caption features.
    mean_text : Tensor ``(L_T, d_T)``
        Mean training caption feature (the semantic baseline).
    n : int, optional
        Rows used (the first ``n``); default all.
    draws : int
        Noise/timestep draws per row (fixed by ``seed``: every model sees the same ones).

    Returns
    -------
    dict
        ``noise_mse`` (NeuroPictor, α = 1), ``noise_mse_semantic_only`` (α = 0),
        ``noise_mse_shuffled_scan`` (α = 1, each row's own ``F^sem`` but the LLMN given the next
        row's fMRI tokens: equal to ``noise_mse`` when the LLMN ignores the scan),
        ``noise_mse_no_brain`` (U-Net with the empty caption), ``noise_mse_true_caption`` (U-Net
        with the caption), ``semantic_mse`` / ``semantic_cos`` of ``F̃^txt`` and their baselines.
    """
    model.eval()
    dev = next(model.parameters()).device
    n = len(data) if n is None else min(int(n), len(data))
    g = torch.Generator().manual_seed(int(seed))
    T = scheduler.config.num_train_timesteps
    sums = {k: 0.0 for k in ("np", "sem_only", "shuffled", "empty", "caption")}
    count = 0
    sem_mse = sem_cos = base_mse = base_cos = 0.0
    empty = data.empty_text.to(dev)
    for i in range(0, n, batch_size):
        idx = torch.arange(i, min(i + batch_size, n))
        b = data.batch(idx)
        maps, z0, text = b["maps"].to(dev), b["latents"].to(dev), b["text"].to(dev)
        tokens = model.encode(maps)
        # the next row's scan (cyclic over the n rows): a derangement whenever n > 1
        other = model.encode(data.batch((idx + 1) % n)["maps"].to(dev))
        sem, txt = model.semantic_condition(fmri_tokens=tokens, return_text_features=True)
        sem_mse += float(F.mse_loss(txt, text, reduction="sum")) / text[0].numel()
        sem_cos += float(F.cosine_similarity(txt.flatten(1), text.flatten(1)).sum())
        mt = mean_text.to(dev).expand_as(text)
        base_mse += float(F.mse_loss(mt, text, reduction="sum")) / text[0].numel()
        base_cos += float(F.cosine_similarity(mt.flatten(1), text.flatten(1)).sum())
        for _ in range(draws):
            noise = torch.randn(z0.shape, generator=g).to(dev)
            t = torch.randint(0, T, (len(z0),), generator=g).to(dev)
            zt = scheduler.add_noise(z0, noise, t)
            target = denoising_target(scheduler, z0, noise, t)
            preds = {
                "np": model.predict_noise(unet, zt, t, fmri_tokens=tokens, semantic_condition=sem),
                "sem_only": model.predict_noise(unet, zt, t, fmri_tokens=tokens, semantic_condition=sem,
                                                control_scale=0.0),
                "shuffled": model.predict_noise(unet, zt, t, fmri_tokens=other, semantic_condition=sem),
                "empty": unet(zt, t, encoder_hidden_states=empty.expand(len(zt), -1, -1)).sample,
                "caption": unet(zt, t, encoder_hidden_states=text).sample,
            }
            for k, p in preds.items():
                sums[k] += float(F.mse_loss(p.float(), target.float(), reduction="sum")) / z0[0].numel()
            count += len(z0)
    return {"n_rows": n, "draws": draws,
            "noise_mse": sums["np"] / count, "noise_mse_semantic_only": sums["sem_only"] / count,
            "noise_mse_shuffled_scan": sums["shuffled"] / count,
            "noise_mse_no_brain": sums["empty"] / count, "noise_mse_true_caption": sums["caption"] / count,
            "semantic_mse": sem_mse / n, "semantic_cos": sem_cos / n,
            "semantic_mse_baseline": base_mse / n, "semantic_cos_baseline": base_cos / n,
            "semantic_baseline": "mean training caption feature"}
