"""Figures that combine several parts of brainrecon (single-part plots live with their part).

* :func:`plot_subject_flatmaps` — every subject's response to one image on the shared flatmap;
* :func:`write_toyworld_overview` — the main job's figures and numbers for a toy world.

Every ``plot_*`` returns a :class:`matplotlib.figure.Figure` that is not registered with
pyplot (so nothing accumulates in long sessions); save it with ``fig.savefig``.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from .data.scenes import plot_scenes
from .data.surface import FlatmapProjector, plot_flatmap
from .data.toyworld import plot_noise_ceiling, plot_subject_vertices
from .errors import InvalidInputError
from .figures import Figure
from .io import atomic_file, write_json

__all__ = ["plot_subject_flatmaps", "write_toyworld_overview", "save_figure"]


def plot_subject_flatmaps(world, projector=None, image: int | None = None, subjects=None,
                          ncols: int = 4, rois: bool = True):
    """Each subject's repeat-averaged response to one shared test image, on one flatmap.

    Parameters
    ----------
    world : ToyWorld
    projector : FlatmapProjector, optional
        Default: whole-cortex projector at 128 px.
    image : int, optional
        Scene index (must be in the shared test set); default: the first test image.
    subjects : list of str, optional
        Default: all subjects.
    ncols : int
        Panels per row (the stimulus takes the first panel).
    rois : bool
        Outline the visual areas.

    Returns
    -------
    matplotlib.figure.Figure
    """
    projector = projector or FlatmapProjector(128)
    subjects = list(world.subject_ids) if subjects is None else list(subjects)
    image = int(world.test_images[0]) if image is None else int(image)
    if image not in set(int(i) for i in world.test_images):
        raise InvalidInputError(f"image {image} is not in the shared test set; choose one of "
                                f"world.test_images (e.g. {int(world.test_images[0])}).")
    maps = []
    for sid in subjects:
        s = world.subject(sid)
        maps.append(s.responses[s.trial_image == image].mean(0))
    lim = float(np.percentile(np.abs(np.concatenate(maps)), 99)) or 1.0
    n = len(subjects) + 1
    nrows = int(np.ceil(n / ncols))
    h, w = projector.resolution
    fig = Figure(figsize=(ncols * 3.2 * w / max(h, w) + 0.5, nrows * 3.0 * h / max(h, w) + 0.6))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    axes[0].imshow(world.scenes.images[image])
    axes[0].set_title("\n".join(_wrap(world.scenes.captions[image], 34)), fontsize=7)
    for ax, sid, m in zip(axes[1:], subjects, maps):
        s = world.subject(sid)
        plot_flatmap(m, projector, vertices=s.vertices, rois=rois, vmin=-lim, vmax=lim,
                     symmetric=True, ax=ax, colorbar=False, title=f"{sid} ({s.n_vox} vertices)")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[n:]:
        ax.axis("off")
    fig.suptitle(f"Responses to test image {image} (mean of repeats; colour ±{lim:.2f})")
    fig.tight_layout()
    return fig


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width) or [""]


def save_figure(fig, path, dpi: int = 100) -> Path:
    """Save ``fig`` to ``path`` atomically (PNG by extension) and return the path."""
    path = Path(path)
    with atomic_file(path, "wb") as f:
        fig.savefig(f, dpi=dpi, format=path.suffix.lstrip(".") or "png", bbox_inches="tight")
    return path


def write_toyworld_overview(world, out_dir, resolution: int = 128) -> dict:
    """Write the toy world's overview figures and numbers to ``out_dir``.

    Files: ``scenes.png`` (example scenes with captions), ``flatmaps.png`` (every subject's
    response to one test image), ``noise_ceiling.png`` (per-area noise ceilings),
    ``subject_vertices.png`` (subj01's native vertex subset) and ``overview.json``.

    Parameters
    ----------
    world : ToyWorld
    out_dir : path-like
    resolution : int
        Flatmap side in pixels (64–256).

    Returns
    -------
    dict
        The contents of ``overview.json``: sizes, voxel counts, per-area noise ceilings
        (mean over subjects, %), and the figure file names.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    test_scenes = world.scenes.subset(world.test_images[:8])
    figures = {
        "scenes.png": plot_scenes(test_scenes, n=8),
        "flatmaps.png": plot_subject_flatmaps(world, FlatmapProjector(resolution, crop="visual")),
        "noise_ceiling.png": plot_noise_ceiling(world),
        "subject_vertices.png": plot_subject_vertices(world, world.subject_ids[0]),
    }
    for name, fig in figures.items():
        save_figure(fig, out / name)
    nc = world.noise_ceiling()
    per_area = nc.groupby("area", sort=False)[["nc", "nc_avg"]].mean()
    counts = {sid: world.subject(sid).n_vox for sid in world.subject_ids}
    summary = {
        "n_subjects": len(counts),
        "n_images": len(world.scenes),
        "n_test_images": len(world.test_images),
        "n_repeats": world.config.n_repeats,
        "image_size": world.config.image_size,
        "voxel_counts": counts,
        "voxel_count_spread": (max(counts.values()) - min(counts.values())) / min(counts.values()),
        "noise_ceiling_single_trial": {a: round(float(v), 2) for a, v in per_area["nc"].items()},
        "noise_ceiling_avg_repeats": {a: round(float(v), 2) for a, v in per_area["nc_avg"].items()},
        "figures": sorted(figures),
        "seed": world.config.seed,
    }
    write_json(out / "overview.json", summary)
    return summary
