"""Figures of the evaluation suite: the metric table and reconstruction grids.

Every ``plot_*`` returns a :class:`matplotlib.figure.Figure` not registered with pyplot.
"""
from __future__ import annotations

import numpy as np

from ..figures import Figure
from .lowlevel import as_tensor

__all__ = ["plot_metrics", "plot_reconstruction_grid"]


def plot_metrics(tables, ncols: int = 4, title: str | None = None):
    """Bar chart of every metric with its confidence interval and chance level.

    Parameters
    ----------
    tables : DataFrame or dict of DataFrame
        One table from :func:`brainrecon.metrics.evaluate`, or ``{name: table}`` to
        compare methods side by side (one bar colour per name).
    ncols : int
        Panels per row (one panel per metric).
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    if hasattr(tables, "itertuples"):
        tables = {"": tables}
    names = list(tables)
    keys = list(dict.fromkeys(k for t in tables.values() for k in t["metric"]))
    nrows = max(1, int(np.ceil(len(keys) / ncols)))
    fig = Figure(figsize=(2.4 * ncols, 2.1 * nrows + (0.4 if title else 0)))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colours = [f"C{i}" for i in range(len(names))]
    for ax, key in zip(axes, keys):
        label, arrow, chance = key, "", None
        for j, name in enumerate(names):
            row = tables[name][tables[name]["metric"] == key]
            if row.empty:
                continue
            r = row.iloc[0]
            label, chance = r["label"], r["chance"]
            arrow = "↑" if r["higher_is_better"] else "↓"
            lo, hi = r["ci_low"], r["ci_high"]
            err = None if not (np.isfinite(lo) and np.isfinite(hi)) else [[r["value"] - lo], [hi - r["value"]]]
            ax.bar(j, r["value"], yerr=err, color=colours[j], capsize=3, label=name or None)
        if chance is not None and np.isfinite(chance):
            ax.axhline(chance, color="k", ls="--", lw=0.8)
        ax.set_title(f"{label} {arrow}", fontsize=9)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, fontsize=7, rotation=30 if len(names) > 2 else 0)
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes[len(keys):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_reconstruction_grid(reconstructions, targets, n: int = 8, scores=None, titles=None, seed=None):
    """Targets in the top row, one row per set of reconstructions below, one column per image.

    Parameters
    ----------
    reconstructions : array-like or dict of array-like
        One set, or ``{row name: set}`` for several methods / samples (argument order as
        :func:`brainrecon.metrics.evaluate`).
    targets : array-like
        Seen images (any form :func:`brainrecon.metrics.as_tensor` takes).
    n : int
        Number of columns (images).
    scores : array (N,) or dict of arrays, optional
        Per-image score printed under each reconstruction (e.g. a per-image column of
        ``evaluate(..., return_per_image=True)``).
    titles : sequence of str, optional
        Column titles (e.g. captions); default the image index.
    seed : int, optional
        Pick ``n`` random images instead of the first ``n``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    gt = as_tensor(targets, "targets")
    rows = reconstructions if isinstance(reconstructions, dict) else {"reconstruction": reconstructions}
    rows = {k: as_tensor(v, k) for k, v in rows.items()}
    if scores is not None and not isinstance(scores, dict):
        scores = {next(iter(rows)): scores}
    total = len(gt)
    idx = np.arange(min(n, total)) if seed is None else np.sort(
        np.random.default_rng(seed).choice(total, min(n, total), replace=False))
    fig = Figure(figsize=(1.3 * len(idx) + 0.9, 1.4 * (len(rows) + 1)))
    axes = fig.subplots(len(rows) + 1, len(idx), squeeze=False)
    for c, i in enumerate(idx):
        axes[0, c].imshow(gt[i].permute(1, 2, 0).numpy())
        axes[0, c].set_title(str(i) if titles is None else str(titles[i])[:24], fontsize=7)
        for r, (name, x) in enumerate(rows.items(), start=1):
            axes[r, c].imshow(x[i].permute(1, 2, 0).numpy())
            if scores and name in scores:
                axes[r, c].set_xlabel(f"{float(np.asarray(scores[name])[i]):.2f}", fontsize=7)
    for r, name in enumerate(["target", *rows]):
        axes[r, 0].set_ylabel(name, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig
