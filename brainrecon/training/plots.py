"""Figures of the NeuroPictor stages: rebuilt flatmaps (stage i) and loss curves (all stages).

Both read a stage's output folder, so notebooks stay thin::

    fig = plot_rebuilt_flatmaps("runs/np/i", test_maps)        # originals over guide-token rebuilds
    fig = plot_stage_losses({"pre-trained": "runs/np/iii", "scratch": "runs/np/iii_scratch"})
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..data.surface import FlatmapProjector, plot_flatmap
from ..figures import Figure
from ..models import CalibratedEncoder

__all__ = ["plot_rebuilt_flatmaps", "plot_stage_losses", "plot_denoising_scores", "load_stage_history",
           "rebuild_flatmaps"]


@torch.no_grad()
def rebuild_flatmaps(stage_dir, maps) -> torch.Tensor:
    """Maps rebuilt from the guide token alone by a stage-i encoder folder, ``(N, 1, H, W)``."""
    enc = CalibratedEncoder.from_pretrained(Path(stage_dir) / "encoder", use_safetensors=True).eval()
    return enc(torch.as_tensor(maps).float(), mask_ratio=0.0)[1]


def plot_rebuilt_flatmaps(stage_dir, maps, n: int = 4, titles=None):
    """Original flatmaps (top) over their rebuilds from the guide token (bottom), NeuroPictor §3.1.

    Parameters
    ----------
    stage_dir : path-like
        A :func:`~brainrecon.training.neuropictor.pretrain_encoder` folder (decoder kept).
    maps : Tensor or array ``(N, 1, H, W)``
        Held-out flatmaps made with the stage's projector settings (``config.json``).
    n : int
        Columns shown (the first ``n`` maps).
    titles : list of str, optional
        One per column.

    Returns
    -------
    matplotlib.figure.Figure
    """
    conf = json.loads((Path(stage_dir) / "config.json").read_text())
    proj = FlatmapProjector(conf["resolution"], crop=conf["crop"])
    maps = torch.as_tensor(np.asarray(maps))[:n].float()
    rec = rebuild_flatmaps(stage_dir, maps)
    n = len(maps)
    fig = Figure(figsize=(3.2 * n, 5.6), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for j in range(n):
        lim = float(maps[j].abs().max())
        for i, (img, label) in enumerate(((maps[j], "original"), (rec[j], "rebuilt from guide token"))):
            title = f"{titles[j]}\n{label}" if titles is not None and i == 0 else label
            plot_flatmap(img[0].numpy(), proj, ax=axes[i, j], vmin=-lim, vmax=lim, symmetric=True,
                         title=title, colorbar=False, rois=False)
    return fig


def load_stage_history(stage_dir) -> dict:
    """``{phase: list of step dicts}`` from a stage folder's ``history.json``."""
    return json.loads((Path(stage_dir) / "history.json").read_text())


def _smooth(values, window: int) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if window <= 1 or len(v) < window:
        return v
    kernel = np.ones(window) / window
    return np.convolve(v, kernel, mode="valid")


def plot_stage_losses(stage_dirs, keys=("loss",), window: int = 25, title=None):
    """Training curves of one or several stage folders; phases are drawn one after another.

    Parameters
    ----------
    stage_dirs : path-like or dict
        One folder, or ``{label: folder}``.
    keys : sequence of str
        Logged values to draw, one panel each (``"loss"``, ``"diffusion"``, ``"semantic"``, ``"layout"``).
    window : int
        Running-mean window (steps).
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not isinstance(stage_dirs, dict):
        stage_dirs = {Path(stage_dirs).name: stage_dirs}
    fig = Figure(figsize=(4.5 * len(keys), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(keys)))
    for ax, key in zip(axes, keys):
        for label, d in stage_dirs.items():
            hist = load_stage_history(d)
            offset, line = 0, None
            for phase, steps in hist.items():
                vals = [s[key] for s in steps if key in s]
                if not vals:
                    continue
                y = _smooth(vals, window)
                x = offset + np.arange(len(y)) + (len(vals) - len(y)) + 1
                kw = {"color": line.get_color()} if line is not None else {}
                (line,) = ax.plot(x, y, label=label if offset == 0 else None,
                                  linestyle="-" if phase == "main" else "--", **kw)
                offset += len(vals)
        ax.set_xlabel("step (dashed: CFG phase)")
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


_DENOISE_ROWS = (("noise_mse_no_brain", "U-Net, empty caption (no brain)"),
                 ("noise_mse_semantic_only", "NeuroPictor, α = 0 (F^sem only)"),
                 ("noise_mse", "NeuroPictor, α = 1"),
                 ("noise_mse_shuffled_scan", "α = 1, LLMN given another scan"),
                 ("noise_mse_true_caption", "U-Net, true caption (reference)"))


def plot_denoising_scores(stage_dirs, title=None):
    """Held-out denoising error (Eq. 8) of stage folders next to the U-Net alone, one bar group each.

    Parameters
    ----------
    stage_dirs : path-like or dict
        One stage-ii/iii folder, or ``{label: folder}``; their ``metrics.json`` is read.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not isinstance(stage_dirs, dict):
        stage_dirs = {Path(stage_dirs).name: stage_dirs}
    scores = {k: json.loads((Path(d) / "metrics.json").read_text()) for k, d in stage_dirs.items()}
    fig = Figure(figsize=(7.5, 0.9 + 0.55 * len(_DENOISE_ROWS) * len(scores)), layout="constrained")
    ax = fig.subplots()
    height = 0.8 / len(scores)
    for j, (label, m) in enumerate(scores.items()):
        y = np.arange(len(_DENOISE_ROWS)) + j * height
        vals = [m.get(k, np.nan) for k, _ in _DENOISE_ROWS]   # older folders lack some rows
        ax.barh(y, vals, height=height, label=label)
        for yy, v in zip(y, vals):
            if np.isfinite(v):
                ax.text(v, yy, f" {v:.4f}", va="center", fontsize=8)
    ax.set_yticks(np.arange(len(_DENOISE_ROWS)) + 0.4 - height / 2, [name for _, name in _DENOISE_ROWS])
    ax.invert_yaxis()
    ax.set_xlabel("held-out denoising MSE (lower is better)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "Denoising error on held-out scans (fixed noise and timesteps)")
    return fig
