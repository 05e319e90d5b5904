"""The embedded toy world: procedural scenes seen by simulated subjects on fsaverage5.

:func:`make_toyworld` renders scenes (:mod:`brainrecon.data.scenes`), builds a group
encoding model on nilearn's fsaverage5 (:mod:`brainrecon.data.toybrain`: retinotopic
early visual cortex, category/colour-selective higher visual cortex), and simulates
an NSD-like experiment: every subject has its own native vertex subset, perturbed
maps, gain and noise level, sees a shared test set plus its own training images, each
image 3 times, in random trial order. Everything is deterministic by seed. The data
card ``data_cards/toyworld.md`` documents the generative model and its limits.

Examples
--------
>>> from brainrecon.data.toyworld import make_toyworld, ToyWorldConfig
>>> world = make_toyworld(ToyWorldConfig.smoke())            # doctest: +SKIP
>>> world.noise_ceiling().groupby("area").nc.mean()           # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.patches import Rectangle
from scipy.spatial import cKDTree
from tqdm.auto import tqdm

from ..errors import InvalidInputError
from ..figures import Figure
from .fsaverage import AREA_NAMES, area_mask, load_fsaverage5
from .scenes import Scenes, make_scenes
from . import toybrain as tb

__all__ = ["ToyWorldConfig", "ToySubject", "ToyWorld", "make_toyworld", "save_toyworld",
           "load_toyworld", "ncsnr", "noise_ceiling_percent", "plot_noise_ceiling",
           "plot_subject_vertices"]

AREA_ROWS = ("V1", "V2", "V3", "hV4", "VO1", "LO1", "V3a", "early", "higher", "other")


@dataclass(frozen=True)
class ToyWorldConfig:
    """Sizes, seed and simulation parameters of a toy world (see the data card).

    Noise levels are noise SDs relative to the median vertex's signal SD in the area
    (before the subject's gain and noise factors).
    """

    seed: int = 0
    n_subjects: int = 8
    n_test: int = 100
    n_train: int = 600
    n_repeats: int = 3
    image_size: int = 64
    max_objects: int = 3
    field_radius_deg: float = 20.0
    atlas: str = "geometric"
    n_calibration: int = 256
    noise_early: float = 1.2
    noise_higher: float = 2.0
    noise_other: float = 1.5
    vertex_noise_spread: float = 0.25
    shared_noise: float = 0.2
    gain_range: tuple = (0.8, 1.25)
    noise_range: tuple = (0.8, 1.25)
    density_range: tuple = (0.6, 0.95)
    surround_mm_range: tuple = (4.0, 12.0)
    rf_jitter: float = 0.05
    tuning_jitter: float = 0.3

    def __post_init__(self):
        for k in ("n_subjects", "n_test", "n_repeats", "n_calibration"):
            if int(getattr(self, k)) < 1:
                raise InvalidInputError(f"ToyWorldConfig.{k} must be >= 1; got {getattr(self, k)}.")
        if self.n_train < 0:
            raise InvalidInputError(f"ToyWorldConfig.n_train must be >= 0; got {self.n_train}.")
        if self.n_repeats < 2:
            raise InvalidInputError("ToyWorldConfig.n_repeats must be >= 2 (noise ceilings need repeats).")
        if not 8 <= self.image_size <= 256:
            raise InvalidInputError(f"ToyWorldConfig.image_size must lie in [8, 256]; got {self.image_size}.")
        for k in ("gain_range", "noise_range", "density_range", "surround_mm_range"):
            object.__setattr__(self, k, tuple(float(v) for v in getattr(self, k)))

    @classmethod
    def smoke(cls, **overrides) -> "ToyWorldConfig":
        """A small world for tests and notebooks (a few seconds): 3 subjects, 40 test, 150 train."""
        return cls(**{**dict(n_subjects=3, n_test=40, n_train=150, n_calibration=128), **overrides})

    @property
    def n_images(self) -> int:
        """Total number of scenes: shared test set plus every subject's training images."""
        return self.n_test + self.n_subjects * self.n_train

    @property
    def subject_ids(self) -> list[str]:
        """The ids of the world's subjects (``subj01``...), known before the world is built."""
        return [f"subj{s + 1:02d}" for s in range(int(self.n_subjects))]

    def check_subject(self, subject: str, name: str = "subject") -> str:
        """``subject`` if it is one of :attr:`subject_ids`; else an InvalidInputError listing them."""
        if subject not in self.subject_ids:
            raise InvalidInputError(f"'{name}' must be one of this toy world's subjects "
                                    f"({', '.join(self.subject_ids)}); {subject!r} was provided.")
        return subject


@dataclass(frozen=True, eq=False)
class ToySubject:
    """One simulated subject.

    Attributes
    ----------
    id : str
        ``"subj01"``, ``"subj02"``, ...
    vertices : ndarray (n_vox,) int
        Native vertex subset, indices into the 20,484 fsaverage5 vertices (sorted).
    area : ndarray (n_vox,) int
        Visual-area label of each vertex (0 = outside the simulated areas).
    responses : ndarray (n_trials, n_vox) float32
        Single-trial responses, trial ``t`` showing scene ``trial_image[t]``.
    trial_image : ndarray (n_trials,) int
        Index into :attr:`ToyWorld.scenes` of each trial.
    train_images, test_images : ndarray int
        Scene indices of the subject's own training images and of the shared test set.
    gain, noise_sd : float
        Subject gain and noise factor.
    vertex_noise_sd : ndarray (n_vox,)
        Noise SD of each vertex.
    model : ToyEncodingModel
        The subject's noise-free model (without gain); see :meth:`encode`.
    """

    id: str
    vertices: np.ndarray
    area: np.ndarray
    responses: np.ndarray
    trial_image: np.ndarray
    train_images: np.ndarray
    test_images: np.ndarray
    gain: float
    noise_sd: float
    vertex_noise_sd: np.ndarray
    model: tb.ToyEncodingModel = field(repr=False)

    @property
    def n_vox(self) -> int:
        return len(self.vertices)

    def encode(self, images) -> np.ndarray:
        """Noise-free responses (n, n_vox) of this subject to any images (gain included)."""
        return self.gain * self.model(images)

    def area_mask(self, *areas) -> np.ndarray:
        """Boolean mask over this subject's vertices of areas (``"V1"``, ``"early"``, ``"higher"``...)."""
        return area_mask(self.area, *areas)


@dataclass(frozen=True, eq=False)
class ToyWorld:
    """A simulated multi-subject fMRI experiment (build with :func:`make_toyworld`).

    Attributes
    ----------
    config : ToyWorldConfig
    scenes : Scenes
        Every image: the shared test set first (indices ``0..n_test-1``), then each
        subject's training images.
    subjects : dict[str, ToySubject]
    encoding_model : ToyEncodingModel
        The noise-free group model over all 20,484 vertices.
    test_images : ndarray int
        Scene indices of the shared test set.
    """

    config: ToyWorldConfig
    scenes: Scenes
    subjects: dict
    encoding_model: tb.ToyEncodingModel
    test_images: np.ndarray

    @property
    def subject_ids(self) -> list[str]:
        return list(self.subjects)

    def subject(self, subject: str | ToySubject) -> ToySubject:
        """The subject called ``subject`` (InvalidInputError listing the ids if unknown)."""
        if isinstance(subject, ToySubject):
            return subject
        if subject not in self.subjects:
            raise InvalidInputError(f"unknown subject {subject!r}; this toy world has "
                                    f"{', '.join(self.subjects)}.")
        return self.subjects[subject]

    def average_repeats(self, subject) -> tuple[np.ndarray, np.ndarray]:
        """Responses averaged over repeats: ``(responses (n_images, n_vox), images (n_images,))``.

        Images are the subject's scene indices in increasing order.
        """
        s = self.subject(subject)
        images, inv = np.unique(s.trial_image, return_inverse=True)
        sums = np.zeros((len(images), s.n_vox), np.float64)
        np.add.at(sums, inv, s.responses)
        counts = np.bincount(inv, minlength=len(images))[:, None]
        return (sums / counts).astype(np.float32), images

    def noise_ceiling(self, subject=None) -> "pandas.DataFrame":
        """NSD-style noise ceiling per area (Allen et al. 2022), one row per subject and area.

        Columns: ``subject, area, n_vox, ncsnr`` (median), ``nc`` / ``nc_median`` (mean and
        median single-trial NC, %), ``nc_avg`` / ``nc_avg_median`` (NC of the average of
        ``n_repeats`` trials, %). NC = 100 · ncsnr² / (ncsnr² + 1/n).
        """
        ids = self.subject_ids if subject is None else [self.subject(subject).id]
        rows = []
        n = self.config.n_repeats
        for sid in ids:
            s = self.subjects[sid]
            snr = ncsnr(s.responses, s.trial_image)
            for area in AREA_ROWS:
                m = s.area_mask(area)
                if not m.any():
                    continue
                nc1, ncn = noise_ceiling_percent(snr[m], 1), noise_ceiling_percent(snr[m], n)
                rows.append(dict(subject=sid, area=area, n_vox=int(m.sum()),
                                 ncsnr=float(np.median(snr[m])), nc=float(nc1.mean()),
                                 nc_median=float(np.median(nc1)), nc_avg=float(ncn.mean()),
                                 nc_avg_median=float(np.median(ncn))))
        return pd.DataFrame(rows)

    def save(self, path) -> Path:
        """Same as :func:`save_toyworld`."""
        return save_toyworld(self, path)

    def __repr__(self) -> str:
        c = self.config
        vox = ", ".join(f"{k}: {v.n_vox}" for k, v in self.subjects.items())
        return (f"ToyWorld(seed={c.seed}, {len(self.scenes)} scenes of {c.image_size}px, "
                f"{len(self.test_images)} shared test images, {c.n_repeats} repeats, "
                f"subjects {{{vox}}})")


# ---------------------------------------------------------------------- noise ceiling
def ncsnr(responses: np.ndarray, trial_image: np.ndarray) -> np.ndarray:
    """Noise-ceiling SNR per vertex (Allen et al. 2022, NSD).

    Each vertex is z-scored over trials; the noise variance is the mean over images
    (with >= 2 trials) of the across-repeat variance, the signal variance is
    ``max(1 - noise variance, 0)``, and ncsnr = signal SD / noise SD.
    """
    r = np.asarray(responses, np.float64)
    z = (r - r.mean(0)) / (r.std(0) + 1e-12)
    images, inv, counts = np.unique(trial_image, return_inverse=True, return_counts=True)
    sums = np.zeros((len(images), r.shape[1]))
    sq = np.zeros_like(sums)
    np.add.at(sums, inv, z)
    np.add.at(sq, inv, z * z)
    ok = counts >= 2
    if not ok.any():
        raise InvalidInputError("ncsnr needs images with at least 2 trials; none were found.")
    var = (sq[ok] - sums[ok] ** 2 / counts[ok, None]) / (counts[ok, None] - 1)
    noise = var.mean(0)
    return np.sqrt(np.maximum(1 - noise, 0) / np.maximum(noise, 1e-12))


def noise_ceiling_percent(snr: np.ndarray, n: int = 1) -> np.ndarray:
    """Noise ceiling in % for the average of ``n`` trials: 100 · ncsnr² / (ncsnr² + 1/n)."""
    s2 = np.asarray(snr, np.float64) ** 2
    return 100 * s2 / (s2 + 1.0 / n)


# ---------------------------------------------------------------------- building
def _rng(cfg: ToyWorldConfig, *tag: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(cfg.seed), *tag]))


def _native_vertices(area: np.ndarray, rng, density: float, radius_mm: float) -> np.ndarray:
    """Visual vertices plus flat-map surround within ``radius_mm``, kept with prob. ``density``."""
    on_flat = load_fsaverage5().on_flat
    cand = np.nonzero(on_flat)[0]
    xy = tb.flat_xy(cand)
    vis = area[cand] > 0
    dist, _ = cKDTree(xy[vis]).query(xy, distance_upper_bound=radius_mm + 1e-9)
    cand = cand[vis | np.isfinite(dist)]
    keep = rng.random(len(cand)) < density
    return np.sort(cand[keep])


def _shared_noise_loadings(vertices: np.ndarray, rng, k: int = 8) -> np.ndarray:
    load = tb._smooth_field(tb.flat_xy(vertices), rng, k, 12 * k, 15.0).T     # (k, V)
    return load / (np.linalg.norm(load, axis=0, keepdims=True) + 1e-9)


def _make_subject(cfg, s: int, world_area, group, feats, images) -> ToySubject:
    rng = _rng(cfg, 2, s)
    n = cfg.n_subjects
    lo, hi = cfg.density_range
    order = _rng(cfg, 3).permutation(n)              # spread densities and radii over subjects
    order2 = _rng(cfg, 4).permutation(n)
    frac, frac2 = order[s] / max(n - 1, 1), order2[s] / max(n - 1, 1)
    density = lo + (hi - lo) * frac
    r0, r1 = cfg.surround_mm_range
    vertices = _native_vertices(world_area, rng, density, r0 + (r1 - r0) * frac2)
    model = tb.perturb_model(group, vertices, rng, feats["calib"], rf_jitter=cfg.rf_jitter,
                             tuning_jitter=cfg.tuning_jitter)
    gain = float(np.exp(rng.uniform(*np.log(cfg.gain_range))))
    noise_factor = float(np.exp(rng.uniform(*np.log(cfg.noise_range))))
    area = model.area
    base = np.where(np.isin(area, tb.EARLY), cfg.noise_early,
                    np.where(np.isin(area, tb.HIGHER), cfg.noise_higher, cfg.noise_other))
    vsd = base * noise_factor * np.exp(cfg.vertex_noise_spread * rng.standard_normal(len(vertices)))
    signal = gain * model.respond(feats["all"].subset(images))              # (n_img, V)
    trial_image = rng.permutation(np.repeat(images, cfg.n_repeats))
    pos = np.searchsorted(images, trial_image)
    T, V = len(trial_image), len(vertices)
    eps = rng.standard_normal((T, V), dtype=np.float32)
    shared = rng.standard_normal((T, 8), dtype=np.float32) @ \
        _shared_noise_loadings(vertices, rng).astype(np.float32)
    rho = cfg.shared_noise
    noise = (np.sqrt(1 - rho) * eps + np.sqrt(rho) * shared) * vsd.astype(np.float32)
    responses = (signal[pos] + noise).astype(np.float32)
    return ToySubject(id=cfg.subject_ids[s], vertices=vertices, area=area.copy(),
                      responses=responses, trial_image=trial_image.astype(np.int64),
                      train_images=images[images >= cfg.n_test], test_images=np.arange(cfg.n_test),
                      gain=gain, noise_sd=noise_factor, vertex_noise_sd=vsd, model=model)


def make_toyworld(config: ToyWorldConfig | None = None, progress: bool | None = None,
                  **overrides) -> ToyWorld:
    """Build a toy world (deterministic by ``config.seed``).

    Parameters
    ----------
    config : ToyWorldConfig, optional
        Defaults to ``ToyWorldConfig()`` (8 subjects, 100 shared test + 600 training
        images each, 3 repeats, 64-px images).
    progress : bool, optional
        Show a progress bar (default: only in interactive sessions).
    **overrides
        Fields of :class:`ToyWorldConfig` to replace, e.g. ``n_subjects=4``.

    Returns
    -------
    ToyWorld
    """
    config = config or ToyWorldConfig()
    bad = set(overrides) - {f.name for f in fields(ToyWorldConfig)}
    if bad:
        raise InvalidInputError(f"unknown ToyWorldConfig fields {sorted(bad)}; valid: "
                                f"{[f.name for f in fields(ToyWorldConfig)]}.")
    cfg = ToyWorldConfig(**{**asdict(config), **overrides})
    steps = tqdm(total=2 + cfg.n_subjects, desc="toy world", leave=False,
                 disable=None if progress is None else not progress)
    scenes = make_scenes(cfg.n_images, image_size=cfg.image_size, seed=cfg.seed,
                         max_objects=cfg.max_objects)
    calib = make_scenes(cfg.n_calibration, image_size=cfg.image_size, seed=cfg.seed + 7919,
                        max_objects=cfg.max_objects)
    feats = {"all": tb.image_features(scenes.images), "calib": tb.image_features(calib.images)}
    _tick(steps)
    group = tb.build_group_model(_rng(cfg, 1), cfg.field_radius_deg, feats["calib"],
                                 atlas=cfg.atlas, codebook_seed=cfg.seed + 104729)
    _tick(steps)
    subjects = {}
    for s in range(cfg.n_subjects):
        images = np.r_[np.arange(cfg.n_test),
                       cfg.n_test + s * cfg.n_train + np.arange(cfg.n_train)].astype(np.int64)
        subj = _make_subject(cfg, s, group.area, group, feats, images)
        subjects[subj.id] = subj
        _tick(steps)
    steps.close()
    return ToyWorld(config=cfg, scenes=scenes, subjects=subjects, encoding_model=group,
                    test_images=np.arange(cfg.n_test, dtype=np.int64))


def _tick(bar):
    bar.update(1)


# ---------------------------------------------------------------------- figures
def plot_noise_ceiling(world: ToyWorld, ax=None):
    """Bar chart of the mean noise ceiling per area (single trial and repeat average),
    one dot per subject. Returns the Figure."""
    df = world.noise_ceiling()
    areas = [a for a in AREA_ROWS if a in set(df.area)]
    if ax is None:
        fig = Figure(figsize=(8, 3.5))
        ax = fig.subplots()
    fig = ax.figure
    x = np.arange(len(areas))
    for off, col, lab in ((-0.2, "nc", "1 trial"), (0.2, "nc_avg", f"{world.config.n_repeats} trials")):
        g = df.groupby("area")[col]
        ax.bar(x + off, [g.mean()[a] for a in areas], width=0.38, label=f"{lab} (mean)", alpha=0.8)
        for i, a in enumerate(areas):
            v = df.loc[df.area == a, col].to_numpy()
            ax.plot(np.full(len(v), i + off), v, "k.", ms=3)
    ax.set_xticks(x, areas)
    ax.set_ylabel("noise ceiling (%)")
    ax.set_title("Toy world noise ceiling per area (dots: subjects)")
    ax.legend(frameon=False)
    return fig


def plot_subject_vertices(world: ToyWorld, subject: str = "subj01"):
    """The subject's native vertices on both flat hemispheres, coloured by visual area."""
    s = world.subject(subject)
    surf = load_fsaverage5()
    lab = np.full(surf.n_vertices, -1.0)
    lab[s.vertices] = s.area
    fig = Figure(figsize=(9, 4.2))
    axes = fig.subplots(1, 2)
    names = {0: "other", **{k: AREA_NAMES[k] for k in tb.EARLY + tb.HIGHER}}
    tab = colormaps["tab10"]
    cmap = ListedColormap([(0.85, 0.85, 0.85)] + [tab(i) for i in range(1, 9)])
    codes = {-1: 0, **{k: i + 1 for i, k in enumerate(names)}}
    for ax, hemi, part in zip(axes, (surf.left, surf.right), surf.split(lab)):
        c = np.vectorize(codes.get)(part)
        ax.tripcolor(hemi.flat[:, 0], hemi.flat[:, 1], hemi.flat_faces,
                     facecolors=c[hemi.flat_faces[:, 0]].astype(float), cmap=cmap,
                     vmin=-0.5, vmax=8.5)
        ax.set_aspect("equal")
        ax.set_axis_off()
        ax.set_title(f"{hemi.name} hemisphere")
    handles = [Rectangle((0, 0), 1, 1, color=cmap(codes[k])) for k in names]
    fig.legend(handles, list(names.values()), loc="lower center", ncol=len(names), frameon=False)
    fig.suptitle(f"{s.id}: {s.n_vox} native vertices (grey: not sampled)")
    return fig


# save_toyworld / load_toyworld live in toystore.py (kept short); importable from here.
from .toystore import load_toyworld, save_toyworld  # noqa: E402
