"""Explore a reconstructor: reconstruct, sweep ``α`` or κ × η, swap semantics, score it.

* :func:`make_test_maps` — a toy subject's held-out shared test scans as the pipeline's flatmaps,
  with targets and ground-truth attributes;
* :func:`reconstruct` — images for a dataset or maps, batched, one seeded generator per scan
  (so an image never depends on the batch it was drawn in);
* :func:`sweep_control_scale` — the same scans and seeds at several control scales ``α``
  (NeuroPictor Eq. 7, Fig. 6); :func:`plot_control_sweep`;
* :func:`swap_grid` — every (layout source × semantic source) pair (the semantic swap);
  :func:`plot_swap_grid`;
* :func:`sweep_feature_guidance` — the same scans and seeds at every (κ, η) of feature guidance, scored;
  :func:`score_trivial_baselines` (mean image, shuffled scan) and :func:`plot_kappa_eta`;
* :func:`score_images` — one row of figures (suite + toy judge); :func:`score_reconstructions` — the same
  row beside the shuffled-scan and mean-image baselines;
* :func:`evaluate_retrieval` — brain ↔ image retrieval among 300 candidates;
* :func:`evaluate_reconstructor` — the acceptance figures on the toy world through
  :func:`brainrecon.metrics.evaluate`: α = 1 vs α = 0, CFG 0 vs default, and the swap test.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data.pairs import make_toy_dataset
from ..errors import InvalidInputError
from ..figures import Figure
from ..metrics import (METRIC_INFO, as_tensor, as_uint8, attribute_scores_per_image, evaluate, make_feature_set,
                       metrics_dict, plot_reconstruction_grid)

__all__ = ["make_test_maps", "reconstruct", "sweep_control_scale", "plot_control_sweep", "swap_grid",
           "plot_swap_grid", "evaluate_reconstructor", "evaluate_retrieval", "sweep_feature_guidance",
           "score_trivial_baselines", "make_mean_image", "score_images", "score_reconstructions", "plot_kappa_eta",
           "feature_guidance_label", "KAPPA_ETA_METRICS", "STANDARD_METRICS"]

#: What a κ × η sweep scores by default (NeuralDiffuser Tab. 2's low-level and high-level columns).
KAPPA_ETA_METRICS = ("pixcorr", "ssim", "alexnet2", "clip")
#: The standard table's image metrics (MindEye's eight, and n-way top-1: CAD's).
STANDARD_METRICS = ("pixcorr", "ssim", "alexnet2", "alexnet5", "inception", "clip", "effnet", "swav", "nway")


def _generators(seed: int, indices) -> list:
    return [torch.Generator().manual_seed(int(seed) + int(i)) for i in indices]


def make_test_maps(pipe, world, subject: str, n_test: int | None = None) -> dict:
    """A toy subject's held-out shared test scans (repeat averages) as the reconstructor's input.

    Flatmaps for a flatmap method; for a voxel method (``pipe.conditioner.input_kind == "voxels"``)
    ``maps`` holds the subject's voxel vectors ``(N, V)``.

    Parameters
    ----------
    pipe : BrainToImagePipeline
        Its projector settings (``pipe.make_projector()``) turn responses into maps.
    world : ToyWorld
    subject : str
    n_test : int, optional
        The first ``n_test`` test scans (default all).

    Returns
    -------
    dict
        ``maps`` ``(N, 1, H, W)``, ``targets`` ``(N, 3, S, S)`` in [0, 1], ``image_keys`` ``(N,)``,
        ``captions`` (list), ``attributes`` (``category``, ``colour``, ``bbox`` of the targets).
    """
    if getattr(pipe.conditioner, "input_kind", "flatmap") == "voxels":     # e.g. NeuralDiffuser
        ds = make_toy_dataset(world, subjects=[subject], split="test", representation="voxels")
    else:
        ds = make_toy_dataset(world, subjects=[subject], split="test", projector=pipe.make_projector())
    n = len(ds) if n_test is None else min(int(n_test), len(ds))
    if n < 1:
        raise InvalidInputError(f"{subject} has no test scans to reconstruct.")
    keys = np.array([int(ds.records[0].image_keys[i]) for i in range(n)])
    sc = world.scenes
    return {"maps": torch.stack([ds.brain(i) for i in range(n)]),
            "targets": torch.from_numpy(sc.images[keys]).permute(0, 3, 1, 2).float() / 255.0,
            "image_keys": keys, "captions": [sc.captions[k] for k in keys], "subject": subject,
            "attributes": {"category": sc.category[keys], "colour": sc.colour[keys], "bbox": sc.bbox[keys]}}


def _maps_of(data, indices=None):
    if isinstance(data, dict):
        maps, keys = torch.as_tensor(data["maps"]), data.get("image_keys")
    elif hasattr(data, "brain") and hasattr(data, "locate"):   # a BrainImageDataset
        idx = range(len(data)) if indices is None else indices
        return torch.stack([data.brain(int(i)) for i in idx]), np.asarray(list(idx)), None
    else:
        maps, keys = torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data), None
    maps = maps.float()
    if maps.ndim == 3:
        maps = maps[None]
    idx = np.arange(len(maps)) if indices is None else np.asarray(indices)
    return maps[idx], idx, None if keys is None else np.asarray(keys)[idx]


def reconstruct(pipe, data, indices=None, batch_size: int = 8, seed: int = 0, progress: bool | None = None,
                semantic_source=None, **call_kwargs) -> dict:
    """Reconstruct images for a dataset or flatmaps, in batches, one seeded generator per scan.

    Parameters
    ----------
    pipe : BrainToImagePipeline
    data : BrainImageDataset, dict from :func:`make_test_maps`, or array ``(N, 1, H, W)``
    indices : sequence of int, optional
        Which scans (default all); scan ``i`` always gets the generator ``seed + i``.
    batch_size : int
    seed : int
    progress : bool, optional
        A tqdm bar over batches (default: on).
    semantic_source : array ``(N, 1, H, W)``, optional
        Swap partners, one per selected scan.
    **call_kwargs
        Passed to the pipeline (``control_scale``, ``guidance_scale``, ``num_inference_steps``...).

    Returns
    -------
    dict
        ``images`` ``(N, 3, H, W)`` in [0, 1], ``indices``, and ``image_keys`` when known.
    """
    maps, idx, keys = _maps_of(data, indices)
    if semantic_source is not None:
        semantic_source = torch.as_tensor(semantic_source).float()
        if len(semantic_source) != len(maps):
            raise InvalidInputError(f"semantic_source has {len(semantic_source)} scans but {len(maps)} are "
                                    "reconstructed; give one semantic source per scan.")
    pipe.set_progress_bar_config(disable=True)
    out = []
    starts = range(0, len(maps), max(1, int(batch_size)))
    for s in tqdm(starts, desc="reconstruct", disable=progress is False, leave=False):
        sl = slice(s, s + batch_size)
        src = None if semantic_source is None else semantic_source[sl]
        out.append(pipe(maps[sl], generator=_generators(seed, idx[sl]), semantic_source=src,
                        output_type="pt", **call_kwargs).images)
    res = {"images": torch.cat(out), "indices": idx}
    if keys is not None:
        res["image_keys"] = keys
    return res


def sweep_control_scale(pipe, data, alphas=(0.0, 0.25, 0.5, 0.75, 1.0), seed: int = 0, **kwargs) -> dict:
    """The same scans and seeds at several control scales ``α`` (NeuroPictor Eq. 7, Fig. 6).

    Returns ``{α: images (N, 3, H, W)}``; other keywords go to :func:`reconstruct`.
    """
    return {float(a): reconstruct(pipe, data, seed=seed, control_scale=float(a), **kwargs)["images"]
            for a in alphas}


def sweep_feature_guidance(pipe, data, targets, kappas=(0.0, 1e-4, 1e-3, 1e-2), etas=(0.2, 0.5, 1.0),
                           strength: float = 0.75, seed: int = 0, metrics=KAPPA_ETA_METRICS,
                           feature_set="toy", **kwargs) -> dict:
    """The same scans and seeds at every (κ, η) of feature guidance, scored (NeuralDiffuser Tab. 2, Fig. 8).

    Parameters
    ----------
    pipe : BrainToImagePipeline
        A reconstructor with feature targets (NeuralDiffuser, its backbone attached).
    data : Tensor ``(N, V)`` or dataset
        Test scans.
    targets : array ``(N, 3, S, S)``
        Their seen images.
    kappas, etas : sequences of float
        ``feature_guidance_scale`` and ``feature_guidance_strength``; κ = 0 is run once.
    strength : float
        img2img strength (Algorithm 1 starts from the decoded latent).
    metrics, feature_set
        Passed to :func:`brainrecon.metrics.evaluate`.
    **kwargs
        Passed to :func:`reconstruct` (``num_inference_steps``, ``batch_size``...).

    Returns
    -------
    dict
        ``rows``: one dict per setting (``kappa``, ``eta`` and each metric); ``images``: ``{(κ, η): images}``.
    """
    rows, images = [], {}
    for k in kappas:
        for e in (etas if float(k) > 0 else etas[:1]):
            imgs = reconstruct(pipe, data, seed=seed, strength=strength, feature_guidance_scale=float(k),
                               feature_guidance_strength=float(e), **kwargs)["images"]
            images[(float(k), float(e))] = imgs
            scores = metrics_dict(evaluate(imgs, targets, metrics=list(metrics), feature_set=feature_set))
            rows.append({"kappa": float(k), "eta": float(e) if float(k) > 0 else None, **scores})
    return {"rows": rows, "images": images}


def evaluate_retrieval(pipe, data, targets=None, n_way: int = 300, n_loops: int = 30, batch_size: int = 64,
                       confidence: float = 0.95) -> dict:
    """Brain → image and image → brain retrieval among ``n_way`` candidates (the field's 300-way protocol).

    The conditioner's :meth:`~brainrecon.models.BrainConditioner.retrieval_embeddings` gives brain and
    image embeddings in one space (NeuralDiffuser: its deepest feature decoder's projection and the
    image encoder's features); :func:`brainrecon.metrics.evaluate` scores them as MindEye does
    (``n_loops`` draws of ``min(n_way, N)`` pairs, seed 42, top-1 in both directions).

    Parameters
    ----------
    pipe : BrainToImagePipeline
        A reconstructor whose conditioner has retrieval embeddings (its backbone attached).
    data : dict from :func:`make_test_maps`, or array of scans ``(N, ...)``
    targets : array ``(N, 3, S, S)``, optional
        The seen images (default ``data["targets"]``).
    n_way, n_loops, confidence
        Passed to :func:`brainrecon.metrics.evaluate` as ``retrieval_n_way``, ``retrieval_loops``.
    batch_size : int
        Scans per embedding call.

    Returns
    -------
    dict
        ``image_retrieval`` (brain → image top-1), ``brain_retrieval`` (image → brain top-1), their
        ``…_ci`` intervals, ``n_way`` (candidates actually used), ``chance`` (``1 / n_way``), ``n``;
        and ``table`` (the suite's rows).
    """
    scans, _, _ = _maps_of(data)
    if targets is None:
        if not isinstance(data, dict) or "targets" not in data:
            raise InvalidInputError("pass the seen images as targets (or a make_test_maps dict holding them).")
        targets = data["targets"]
    targets = torch.as_tensor(targets).float()
    if len(targets) != len(scans):
        raise InvalidInputError(f"{len(scans)} scans but {len(targets)} target images; they must pair up.")
    parts = [pipe.conditioner.retrieval_embeddings(scans[i:i + batch_size], targets[i:i + batch_size])
             for i in range(0, len(scans), batch_size)]
    brain = torch.cat([b for b, _ in parts]).numpy()
    image = torch.cat([v for _, v in parts]).numpy()
    table = evaluate(targets, targets, metrics=["retrieval"], brain_embeddings=brain, image_embeddings=image,
                     retrieval_n_way=n_way, retrieval_loops=n_loops, confidence=confidence)
    row = {r.metric: r for r in table.itertuples()}
    fwd, bwd = row["retrieval_fwd"], row["retrieval_bwd"]
    return {"image_retrieval": float(fwd.value), "image_retrieval_ci": [float(fwd.ci_low), float(fwd.ci_high)],
            "brain_retrieval": float(bwd.value), "brain_retrieval_ci": [float(bwd.ci_low), float(bwd.ci_high)],
            "n_way": int(round(1 / float(fwd.chance))), "chance": float(fwd.chance), "n": int(len(scans)),
            "table": table}


def feature_guidance_label(kappa: float, eta: float) -> str:
    """How figures name a feature-guidance setting: ``"κ = 0"`` or ``"κ = 0.01, η = 0.2"``."""
    return "κ = 0" if float(kappa) == 0 else f"κ = {float(kappa):g}, η = {float(eta):g}"


def score_images(images, data, judge=None, metrics=KAPPA_ETA_METRICS) -> dict:
    """One row of figures for reconstructions of :func:`make_test_maps` scans: the evaluation suite's
    ``metrics`` (toy feature set) and, with the toy ``judge``, the main object's position error, colour
    and category accuracy (``{metric: value}``)."""
    row = metrics_dict(evaluate(images, data["targets"], metrics=list(metrics), feature_set="toy"))
    if judge is not None:
        a = data["attributes"]
        att = attribute_scores_per_image(images, a["category"], a["colour"], a["bbox"], judge,
                                         image_size=data["targets"].shape[-1])
        row.update(position_error=float(np.mean(att["position_error"])), colour=float(np.mean(att["colour_ok"])),
                   category=float(np.mean(att["category_ok"])))
    return row


def score_reconstructions(images, data, train_images, judge=None, metrics=STANDARD_METRICS) -> dict:
    """Reconstructions beside the two trivial baselines, every row scored the same way.

    ``{"reconstruction": row, "shuffled_scan": row, "mean_image": row}``: :func:`score_images` of the
    images, of the images against targets rolled by half the set, and of the training-mean image
    (:func:`score_trivial_baselines`); the judge's columns for the baselines are computed the same way.
    """
    images = torch.as_tensor(images).float()
    n = len(images)
    base = score_trivial_baselines(images, data["targets"], train_images, metrics=metrics)
    perm = torch.roll(torch.arange(n), n // 2).numpy()
    shuffled = {**data, "targets": torch.as_tensor(data["targets"])[perm],
                "attributes": {k: np.asarray(v)[perm] for k, v in data["attributes"].items()}}
    mean = base["mean_image_pixels"][None].expand(n, -1, -1, -1)
    return {"reconstruction": score_images(images, data, judge, metrics),
            "shuffled_scan": score_images(images, shuffled, judge, metrics),
            "mean_image": score_images(mean, data, judge, metrics)}


def make_mean_image(train_images) -> torch.Tensor:
    """The mean of the training images, ``(3, S, S)`` in [0, 1] and quantised to 8 bits like any image.

    What a decoder that ignores the brain converges to, and the ``mean_image`` baseline of
    :func:`score_trivial_baselines`.

    Parameters
    ----------
    train_images : array ``(M, S, S, 3)`` uint8 or ``(M, 3, S, S)`` in [0, 1]
    """
    train = torch.as_tensor(np.asarray(train_images))
    if train.ndim == 4 and train.shape[-1] == 3:                 # NHWC uint8 (scenes.images)
        train = train.permute(0, 3, 1, 2).float() / 255.0
    return as_tensor(as_uint8(train.float().mean(0, keepdim=True)))[0]


def score_trivial_baselines(images, targets, train_images, metrics=KAPPA_ETA_METRICS, feature_set="toy") -> dict:
    """The trivial baselines a reconstruction must beat, scored by the same metrics.

    ``mean_image``: every test scan answered with the mean of the training images (what a
    decoder that ignores the brain converges to); ``shuffled_scan``: each reconstruction scored
    against another scan's image (rolled by half the set: a reconstruction that carries nothing
    of its own scan scores as well here as against its target).

    Parameters
    ----------
    images, targets : array ``(N, 3, S, S)`` in [0, 1]
        Reconstructions and their seen images.
    train_images : array ``(M, S, S, 3)`` uint8 or ``(M, 3, S, S)`` in [0, 1]
        The subject's training images.
    metrics, feature_set
        Passed to :func:`brainrecon.metrics.evaluate`.

    Returns
    -------
    dict
        ``mean_image`` and ``shuffled_scan`` (``{metric: value}``), and ``mean_image_pixels``
        ``(3, S, S)`` (the mean image itself, for figures).
    """
    mean = make_mean_image(train_images)
    targets = torch.as_tensor(targets).float()
    n = len(targets)
    if len(images) != n or n < 2:
        raise InvalidInputError(f"{len(images)} reconstructions for {n} targets; the baselines need at least 2 pairs.")
    perm = torch.roll(torch.arange(n), n // 2)
    kw = dict(metrics=list(metrics), feature_set=feature_set)
    return {"mean_image": metrics_dict(evaluate(mean[None].expand(n, -1, -1, -1), targets, **kw)),
            "shuffled_scan": metrics_dict(evaluate(torch.as_tensor(images).float(), targets[perm], **kw)),
            "mean_image_pixels": mean}


def plot_kappa_eta(rows, baselines: dict | None = None, metrics=KAPPA_ETA_METRICS):
    """NeuralDiffuser's Tab. 2 as lines: each metric against κ (log axis), one line per η; κ = 0 solid
    black, the baselines of :func:`score_trivial_baselines` dashed grey.

    Parameters
    ----------
    rows : list of dict
        ``sweep_feature_guidance(...)["rows"]`` (``kappa``, ``eta`` and the metrics).
    baselines : dict, optional
        ``{name: {metric: value}}``.
    metrics : sequence of str

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not rows:
        raise InvalidInputError("no κ × η rows to plot (sweep_feature_guidance(...)['rows']).")
    etas = sorted({r["eta"] for r in rows if r["eta"] is not None})
    base = next((r for r in rows if r["kappa"] == 0), None)
    fig = Figure(figsize=(2.9 * len(metrics), 2.8))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, m in zip(axes, metrics):
        for e in etas:
            pts = sorted((r["kappa"], r[m]) for r in rows if r["eta"] == e and m in r)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"η = {e:g}")
        if base is not None and m in base:
            ax.axhline(base[m], color="k", lw=1, label="κ = 0")
        for (name, vals), style in zip(((k, v) for k, v in (baselines or {}).items() if isinstance(v, dict)),
                                       ("--", ":")):
            if m in vals:
                ax.axhline(vals[m], color="0.5", ls=style, lw=1, label=name.replace("_", " "))
        if etas:
            ax.set_xscale("log")
        ax.set_xlabel("κ (feature guidance scale)")
        ax.set_title(METRIC_INFO[m][0] if m in METRIC_INFO else m, fontsize=9)
    axes[0].legend(fontsize=6)
    fig.suptitle("Feature guidance κ × η on held-out scans (same seeds)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_control_sweep(sweep: dict, targets, titles=None):
    """Targets on top, one row per ``α`` of :func:`sweep_control_scale`; returns a Figure."""
    rows = {f"α = {a:g}": imgs for a, imgs in sweep.items()}
    return plot_reconstruction_grid(rows, targets, n=len(targets), titles=titles)


def swap_grid(pipe, maps_a, maps_b, seed: int = 0, **call_kwargs) -> torch.Tensor:
    """Every pairing of a layout (low-level) source with a semantic (high-level) source.

    Parameters
    ----------
    pipe : BrainToImagePipeline
    maps_a : array ``(Na, 1, H, W)``
        Low-level sources (rows); row ``i`` uses the generator ``seed + i`` in every column.
    maps_b : array ``(Nb, 1, H, W)``
        Semantic sources (columns): their ``F^sem`` replaces row ``i``'s.
    **call_kwargs
        Passed to the pipeline.

    Returns
    -------
    Tensor ``(Na, Nb, 3, H, W)``
        ``grid[i, j]``: layout of ``maps_a[i]`` with the semantics of ``maps_b[j]``.
    """
    a, b = torch.as_tensor(maps_a).float(), torch.as_tensor(maps_b).float()
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for i in range(len(a)):
        rows.append(pipe(a[i:i + 1].repeat(len(b), 1, 1, 1), semantic_source=b,
                         generator=_generators(seed, [i] * len(b)), **call_kwargs).images)
    return torch.stack(rows)


def plot_swap_grid(grid, targets_a, targets_b):
    """Semantic sources along the top, layout sources down the left, swaps inside; returns a Figure."""
    ta, tb = as_tensor(targets_a, "targets_a"), as_tensor(targets_b, "targets_b")
    na, nb = grid.shape[:2]
    fig = Figure(figsize=(1.3 * (nb + 1), 1.3 * (na + 1) + 0.3))
    axes = fig.subplots(na + 1, nb + 1, squeeze=False)
    show = lambda ax, x: ax.imshow(x.permute(1, 2, 0).clamp(0, 1).numpy())  # noqa: E731
    for j in range(nb):
        show(axes[0, j + 1], tb[j])
        axes[0, j + 1].set_title(f"semantics {j}", fontsize=7)
    for i in range(na):
        show(axes[i + 1, 0], ta[i])
        axes[i + 1, 0].set_ylabel(f"layout {i}", fontsize=7)
        for j in range(nb):
            show(axes[i + 1, j + 1], grid[i, j])
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].axis("off")
    fig.suptitle("semantic swap: layout (rows) × semantics (columns)", fontsize=9)
    fig.tight_layout()
    return fig


def _swap_partners(attrs: dict, side: float) -> np.ndarray:
    """For each scan, a partner of another category with the main object far away (roll fallback)."""
    cat, box = np.asarray(attrs["category"]), np.asarray(attrs["bbox"], float) / side
    centre = (box[:, :2] + box[:, 2:]) / 2
    n = len(cat)
    partner = np.roll(np.arange(n), n // 2)  # the official exchange hook: roll by half a batch
    for i in range(n):
        far = [j for j in np.roll(np.arange(n), -(i + n // 2)) if cat[j] != cat[i]
               and np.linalg.norm(centre[j] - centre[i]) > 0.25]
        if far:
            partner[i] = far[0]
    return partner


def evaluate_reconstructor(pipe, world, subject: str, alphas=(0.0, 1.0), guidance_scales=(0.0, None),
                           n_test: int | None = None, seed: int = 0, num_inference_steps: int | None = None,
                           batch_size: int = 8, feature_set="toy", progress: bool | None = None) -> dict:
    """The acceptance figures of a reconstructor on a toy subject's held-out shared test scans.

    Parameters
    ----------
    pipe : BrainToImagePipeline
    world : ToyWorld
    subject : str
    alphas : sequence of float
        Control scales compared at the default guidance scale and the same seeds (NeuroPictor Eq. 7).
    guidance_scales : sequence of float or None
        Guidance scales compared at ``α = 1`` (None: the reconstructor's default).
    n_test : int, optional
        Number of test scans (default all).
    seed : int
        Scan ``i`` always uses the generator ``seed + i``.
    num_inference_steps, batch_size
    feature_set : "toy" or feature set
        Networks of :func:`brainrecon.metrics.evaluate` (toy: needs the toy attribute classifier).
    progress : bool, optional

    Notes
    -----
    Images are rounded to 8 bits (:func:`brainrecon.metrics.as_uint8`) before anything is scored,
    and :func:`~brainrecon.metrics.evaluate` runs with its defaults, so each figure equals what
    ``brainrecon evaluate`` reports on a results folder saved from the same images.

    Returns
    -------
    dict
        ``table``: tidy DataFrame (``condition, control_scale, guidance_scale, metric, value,
        ci_low, ci_high, n``); ``metrics``: JSON-ready nested dict — ``alpha`` and ``guidance``
        (``{scale: {metric: value}}``), ``swap`` (``category_follows_semantic``,
        ``category_follows_layout``, ``position_follows_layout`` — the main object is closer to
        the layout source's than to the semantic source's (0.5 when position follows neither),
        ``both_follow``, position errors to both sources), ``n_test``, ``seed``,
        ``num_inference_steps``, ``guidance_scale``;
        ``images``: ``{condition name: (N, 3, H, W)}`` and ``data`` (from :func:`make_test_maps`).
    """
    data = make_test_maps(pipe, world, subject, n_test)
    if len(data["maps"]) < 2:
        raise InvalidInputError("evaluate_reconstructor needs at least 2 test scans.")
    fs = make_feature_set(feature_set)
    default_gs = float(pipe.config.default_guidance_scale)
    steps = num_inference_steps or pipe.config.default_num_inference_steps
    kw = dict(batch_size=batch_size, seed=seed, progress=progress, num_inference_steps=steps)
    runs, rows, metrics, images = {}, [], {"alpha": {}, "guidance": {}}, {}

    def run(a, gs, **extra):
        key = (float(a), default_gs if gs is None else float(gs))
        if key not in runs or extra:
            out = reconstruct(pipe, data, control_scale=key[0], guidance_scale=key[1], **kw, **extra)["images"]
            out = as_tensor(as_uint8(out))           # what a results folder keeps, so scores agree with it
            if extra:
                return key, out
            runs[key] = out
        return key, runs[key]

    def score(name, key, imgs, bucket, label):
        table = evaluate(imgs, data["targets"], feature_set=fs, attributes=data["attributes"])
        metrics[bucket][label] = {r.metric: float(r.value) for r in table.itertuples() if np.isfinite(r.value)}
        for r in table.itertuples():
            rows.append(dict(condition=name, control_scale=key[0], guidance_scale=key[1], metric=r.metric,
                             value=float(r.value), ci_low=float(r.ci_low), ci_high=float(r.ci_high), n=int(r.n)))
        images[name] = imgs

    for a in alphas:
        key, imgs = run(a, None)
        score(f"alpha={key[0]:g}", key, imgs, "alpha", f"{key[0]:g}")
    for gs in guidance_scales:
        key, imgs = run(1.0, gs)
        score(f"guidance={key[1]:g}", key, imgs, "guidance", f"{key[1]:g}")

    # semantic swap: category from the semantic source, layout (position) from the low-level source
    partner = _swap_partners(data["attributes"], float(data["targets"].shape[-1]))
    key, swapped = run(1.0, None, semantic_source=data["maps"][partner])
    images["swap"] = swapped
    attrs, side = data["attributes"], data["targets"].shape[-1]
    own = attribute_scores_per_image(swapped, attrs["category"], attrs["colour"], attrs["bbox"],
                                     fs.attribute_classifier, image_size=side)
    sem = attribute_scores_per_image(swapped, attrs["category"][partner], attrs["colour"][partner],
                                     attrs["bbox"][partner], fs.attribute_classifier, image_size=side)
    swap = {"category_follows_semantic": float(sem["category_ok"].mean()),
            "category_follows_layout": float(own["category_ok"].mean()),
            "position_follows_layout": float((own["position_error"] < sem["position_error"]).mean()),
            "both_follow": float((sem["category_ok"] * (own["position_error"] < sem["position_error"])).mean()),
            "position_error_to_layout": float(own["position_error"].mean()),
            "position_error_to_semantic": float(sem["position_error"].mean()),
            "n_pairs": int(len(partner))}
    for m, v in swap.items():
        rows.append(dict(condition="swap", control_scale=key[0], guidance_scale=key[1], metric=m, value=float(v),
                         ci_low=np.nan, ci_high=np.nan, n=len(partner)))
    metrics.update(swap=swap, n_test=int(len(data["maps"])), seed=int(seed), num_inference_steps=int(steps),
                   guidance_scale=default_gs, subject=subject)
    return {"table": pd.DataFrame(rows), "metrics": metrics, "images": images, "data": data,
            "swap_partners": partner}
