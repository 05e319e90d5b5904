"""MindDiffuser's two stages side by side: stage 1, stage 2, and stage 2 from a random ``z``.

:func:`compare_stages` runs :func:`~brainrecon.sampling.latent_opt.optimise_latents` on held-out scans
twice — from the decoded latent (the method) and from Gaussian latents (the paper's Fig. 6 ablation) —
with the same per-scan noise, and scores iteration 0 (stage 1), the last iteration (stage 2) and the
random-``z`` run with the evaluation suite (PixCorr, SSIM, AlexNet-2, CLIP) and the toy attribute
judge's main-object position error, beside the training-mean-image and shuffled-scan baselines.
:func:`plot_stage_losses` draws Eq. 5's loss per iteration.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InvalidInputError, check_range
from ..figures import Figure
from .explore import KAPPA_ETA_METRICS, score_images, score_trivial_baselines
from .latent_opt import optimise_latents

__all__ = ["compare_stages", "plot_stage_losses", "plot_latent_optimisation", "STAGE_METRICS", "STAGE_ROWS"]

#: What :func:`compare_stages` scores (MindDiffuser Tab. 2: CLIP similarity, SSIM, PCC; plus AlexNet-2).
STAGE_METRICS = KAPPA_ETA_METRICS
#: Its rows, in order.
STAGE_ROWS = ("stage 1", "stage 2", "stage 2, random z")


def compare_stages(pipe, data, iterations: int = 30, lr: float = 0.01, seed: int = 0, batch_size: int = 16,
                   random_z: bool = True, train_images=None, judge=None, metrics=STAGE_METRICS,
                   progress: bool = True, curve_every: int = 0, **kwargs) -> dict:
    """Stage 1 vs stage 2 (vs stage 2 from random ``z``) on the same scans and noise, scored.

    Parameters
    ----------
    pipe : BrainToImagePipeline
        A MindDiffuser reconstructor (its backbone attached).
    data : dict
        :func:`~brainrecon.sampling.make_test_maps` output (``maps``, ``targets``, ``attributes``).
    iterations, lr : int, float
        Stage 2's Adam iterations and learning rate.
    seed : int
        Scan ``i`` draws its noise (and random ``z``) from ``seed + i``: the rows differ in the stage alone.
    batch_size : int
    random_z : bool
        Also run the random-``z`` ablation.
    train_images : array, optional
        The subject's training images, for the mean-image and shuffled-scan baselines.
    judge : AttributeClassifier, optional
        Scores the main object's position error, colour and category (toy world).
    metrics : sequence of str
    progress : bool
    curve_every : int
        Also score the decoded-``z`` run's images at every ``curve_every``-th iteration (PixCorr, SSIM and,
        with a judge, position error): how the figures move along stage 2, to choose ``iterations``
        (0: only the first and last).
    **kwargs
        Passed to :func:`optimise_latents` (``strength``, ``guidance_scale``, ``num_inference_steps``...).

    Returns
    -------
    dict
        ``rows`` (``{row: {metric: value}}``, :data:`STAGE_ROWS`), ``images`` (``{row: (N, 3, S, S)}``),
        ``losses`` (``{"decoded" | "random": (iterations + 1, N)}``), ``baselines`` (when
        ``train_images`` is given), ``iterations`` and, with ``curve_every``, ``by_iteration``
        (``{"iteration": [...], metric: [...]}``).
    """
    check_range("iterations", iterations, 0)
    curve_every = check_range("curve_every", curve_every, 0)
    check_range("batch_size", batch_size, 1)
    maps = torch.as_tensor(data["maps"]).float()
    n = len(maps)
    if n < 2:
        raise InvalidInputError("compare_stages needs at least 2 scans (the suite scores pairs).")
    inits = ("decoded", "random") if random_z else ("decoded",)
    imgs = {k: [] for k in STAGE_ROWS}
    losses = {k: [] for k in inits}
    snaps = {}
    starts = list(range(0, n, batch_size))
    pipe.set_progress_bar_config(disable=True)
    for s in tqdm([(i, s) for i in inits for s in starts], desc="stage 2", disable=not progress, leave=False):
        init, s = s
        sl = slice(s, s + batch_size)
        gens = [torch.Generator().manual_seed(int(seed) + j) for j in range(s, min(n, s + batch_size))]
        rec = curve_every if init == "decoded" else 0
        out = optimise_latents(pipe, maps[sl], iterations=iterations, lr=lr, init=init, generator=gens,
                               progress=False, record_every=rec, **kwargs)
        losses[init].append(out.losses)
        if init == "decoded":
            for it, im in out.snapshots.items():
                snaps.setdefault(it, []).append(im)
            imgs["stage 1"].append(out.stage1_images)
            imgs["stage 2"].append(out.images)
        else:
            imgs["stage 2, random z"].append(out.images)
    images = {k: torch.cat(v) for k, v in imgs.items() if v}
    rows = {k: score_images(v, data, judge, metrics) for k, v in images.items()}
    res = {"rows": rows, "images": images, "losses": {k: torch.cat(v, 1) for k, v in losses.items()},
           "iterations": int(iterations), "n_test": int(n)}
    if curve_every:
        curve = {"iteration": sorted(snaps)}
        for it in curve["iteration"]:
            row = score_images(torch.cat(snaps[it]), data, judge, ("pixcorr", "ssim"))
            for k, v in row.items():
                if k in ("pixcorr", "ssim", "position_error"):
                    curve.setdefault(k, []).append(float(v))
        res["by_iteration"] = curve
    if train_images is not None:
        base = score_trivial_baselines(images["stage 2"], data["targets"], train_images, metrics=metrics)
        res["mean_image_pixels"] = base.pop("mean_image_pixels")
        res["baselines"] = base
    return res


def plot_stage_losses(losses: dict):
    """Eq. 5's loss per stage-2 iteration, mean over scans (± one standard error), per initialisation.

    Parameters
    ----------
    losses : dict of str to Tensor ``(iterations + 1, N)``
        :func:`compare_stages`' ``losses``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not losses:
        raise InvalidInputError("no losses to plot: run compare_stages with iterations >= 1.")
    fig = Figure(figsize=(4.6, 3.0))
    ax = fig.subplots()
    for name, L in losses.items():
        L = torch.as_tensor(L).float()
        m, se = L.mean(1).numpy(), (L.std(1) / max(1, L.shape[1]) ** 0.5).numpy()
        it = np.arange(len(m))
        ax.plot(it, m, label=f"z from {'the decoded latent' if name == 'decoded' else 'Gaussian noise'}")
        ax.fill_between(it, m - se, m + se, alpha=0.25)
    ax.set_xlabel("stage-2 iteration (0 = stage 1)")
    ax.set_ylabel("Eq. 5 feature loss")
    ax.legend(fontsize=7)
    ax.set_title("MindDiffuser stage 2: image features → decoded features", fontsize=9)
    fig.tight_layout()
    return fig


def plot_latent_optimisation(result, iteration: int | None = None, targets=None, captions=None, n: int = 4):
    """One stage-2 iteration: the seen images, stage 1, the images at ``iteration``, and the loss curve.

    Parameters
    ----------
    result : LatentOptimisationOutput
        From :func:`optimise_latents` with ``record_every=1`` (any iteration can be shown) or more (only
        the recorded ones can).
    iteration : int, optional
        Which recorded iteration (default the last).
    targets : array ``(N, 3, S, S)`` in [0, 1], optional
    captions : list of str, optional
        Column titles.
    n : int
        Scans shown.

    Returns
    -------
    matplotlib.figure.Figure
    """
    snaps = result.snapshots
    it = max(snaps) if iteration is None else int(iteration)
    if it not in snaps:
        raise InvalidInputError(f"iteration {it} was not recorded; recorded: {sorted(snaps)[:8]}"
                                f"{'...' if len(snaps) > 8 else ''} (run optimise_latents with record_every=1).")
    k = min(int(n), len(snaps[it]))
    rows = ([("seen", torch.as_tensor(targets).float()[:k])] if targets is not None else [])
    rows += [("stage 1", snaps[0][:k]), (f"iteration {it}", snaps[it][:k])]
    fig = Figure(figsize=(1.5 * k + 3.6, 1.5 * len(rows) + 0.3))
    gs = fig.add_gridspec(len(rows), k + 2, width_ratios=[1] * k + [0.15, 2.2])
    for r, (label, imgs) in enumerate(rows):
        for c in range(k):
            ax = fig.add_subplot(gs[r, c])
            ax.imshow(imgs[c].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == 0 and captions is not None:
                ax.set_title(str(captions[c])[:28], fontsize=6)
    ax = fig.add_subplot(gs[:, k + 1])
    L = torch.as_tensor(result.losses).float()[:, :k]
    for c in range(L.shape[1]):
        ax.plot(L[:, c].numpy(), lw=1, label=f"scan {c + 1}")
    ax.axvline(it, color="0.3", ls="--", lw=0.8)
    ax.set_xlabel("iteration", fontsize=8)
    ax.set_ylabel("Eq. 5 loss", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6)
    fig.suptitle(f"MindDiffuser stage 2 · iteration {it} of {len(L) - 1} · loss "
                 f"{float(L[0].mean()):.3g} → {float(L[it].mean()):.3g}", fontsize=9)
    fig.tight_layout()
    return fig
