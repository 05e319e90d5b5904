"""Read the Natural Scenes Dataset (NSD) from its official on-disk layout.

brainrecon never downloads NSD: lay the files out as in ``data_cards/nsd.md``
("Expected layout") and pass the root folder, or set ``$BRAINRECON_NSD``.
The root is taken from the ``root`` argument first, then from ``$BRAINRECON_NSD``.

What is read, and how (details and sources in the data card):

* trial -> image: ``nsd_expdesign.mat``; the 73k id of global trial ``t`` (0-based) is
  ``subjectim[s, masterordering[t] - 1] - 1``; a trial is in the shared test set when
  ``masterordering[t] <= 1000``. With 37 sessions that gives 982 test images / 2,770 test
  trials for subj01/02/05/07; with 40 sessions, 1,000 / 3,000.
* betas, session by session (never a whole subject at once): ``func1pt8mm`` and ``MNI``
  volumes (``.nii.gz``, or ``.hdf5`` with reversed axes) masked by an ROI (``nsdgeneral > 0``),
  or ``fsaverage`` surfaces (``lh``/``rh`` ``.mgh``), reduced to fsaverage5 by default.
  Integer files are ``betas * 300`` and are divided by 300; float files are used as they are.
* optional per-session, per-voxel z-scoring; optional averaging of repeated trials.
* stimuli from ``nsd_stimuli.hdf5`` (``imgBrick``), lazily; COCO captions when present.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse
from tqdm.auto import tqdm

from ..cards import read_card
from ..errors import InvalidInputError, check_choice, check_finite
from .nsd_betas import _SurfaceReader, _VolumeReader, read_mgh_betas
from .nsd_layout import (NSD_BETA_SCALE, NSD_DEFAULT_BETAS, NSD_SESSIONS_COMPLETED, NSD_SPACES,
                         NSD_TRIALS_PER_SESSION, ZSCORE_EPS, _VOLUME_FORMATS, NSDPaths,
                         load_nsd_captions, load_nsd_images, nsd_paths, nsd_trial_table,
                         parse_nsd_subject, resolve_nsd_root)

__all__ = [
    "NSD_SESSIONS_COMPLETED", "NSD_TRIALS_PER_SESSION", "NSD_SPACES", "NSD_BETA_SCALE",
    "NSD_DEFAULT_BETAS", "NSDSubjectData", "load_nsd", "nsd_trial_table", "resolve_nsd_root",
    "parse_nsd_subject", "load_nsd_images", "load_nsd_captions", "nsd_paths", "NSDPaths",
    "read_mgh_betas",
]


# ----------------------------------------------------------------------------- result
@dataclass(frozen=True, eq=False)
class NSDSubjectData:
    """One subject's NSD responses, as returned by :func:`load_nsd`.

    Attributes
    ----------
    betas : ndarray (n_rows, n_features)
        Responses (percent signal change, or z-scores when ``zscored``).
    image_ids, split, n_repeats, trial_ids : ndarray (n_rows,)
        0-based 73k id, ``"train"``/``"test"``, number of trials averaged into the row, and
        the row's global trial index (-1 when the row averages several trials).
    trials : pandas.DataFrame
        :func:`nsd_trial_table` of the sessions read, with a ``row`` column (the output row
        each trial went into).
    vertices : ndarray or None
        fsaverage5 (or full fsaverage) vertex indices, left then right hemisphere.
    voxel_mask, affine : ndarray or None
        3-D boolean mask (voxel order = C order of ``np.flatnonzero(voxel_mask)``) and affine.
    captions : list of list of str, or None
    """

    subject: int
    space: str
    sessions: tuple
    betas: np.ndarray
    image_ids: np.ndarray
    split: np.ndarray
    n_repeats: np.ndarray
    trial_ids: np.ndarray
    trials: object
    root: Path
    average: str
    zscored: bool
    beta_version: str
    vertices: np.ndarray | None = None
    voxel_mask: np.ndarray | None = None
    affine: np.ndarray | None = None
    captions: list | None = field(default=None, repr=False)

    @property
    def n_rows(self) -> int:
        return int(self.betas.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.betas.shape[1])

    @property
    def description(self) -> str:
        """The NSD data card (``data_cards/nsd.md``)."""
        try:
            return read_card("nsd")
        except InvalidInputError as err:  # a missing card only warns (as nilearn)
            warnings.warn(str(err), stacklevel=2)
            return ""

    def load_images(self, image_ids=None) -> np.ndarray:
        """Stimuli (uint8 ``(n, H, W, 3)``) of the given 73k ids (default: all rows; large!)."""
        return load_nsd_images(self.root, self.image_ids if image_ids is None else image_ids)

    def subset(self, split: str) -> "NSDSubjectData":
        """The rows of one split (``"train"`` or ``"test"``) as a new object."""
        check_choice("split", split, ("train", "test"))
        keep = np.flatnonzero(self.split == split)
        remap = np.full(self.n_rows, -1)
        remap[keep] = np.arange(keep.size)
        trials = self.trials[np.isin(self.trials["row"].to_numpy(), keep)].copy()
        trials["row"] = remap[trials["row"].to_numpy()]
        return replace(self, betas=self.betas[keep], image_ids=self.image_ids[keep],
                       split=self.split[keep], n_repeats=self.n_repeats[keep],
                       trial_ids=self.trial_ids[keep], trials=trials,
                       captions=None if self.captions is None else [self.captions[i] for i in keep])

    def __repr__(self) -> str:
        n_test = int((self.split == "test").sum())
        return (f"NSDSubjectData(subj{self.subject:02d}, space={self.space!r}, "
                f"sessions={len(self.sessions)}, betas={self.betas.shape} {self.betas.dtype}, "
                f"train rows={self.n_rows - n_test}, test rows={n_test}, average={self.average!r}, "
                f"zscored={self.zscored})")


# ----------------------------------------------------------------------------- the loader
def load_nsd(root=None, subject=1, space: str = "func1pt8mm", *, n_sessions=None, sessions=None,
             average: str = "test", zscore: bool = True, zscore_exclude_shared: bool = False,
             beta_version: str | None = None, roi: str | None = "auto", mask=None,
             fsaverage5: bool = True, volume_format: str = "auto", captions="auto",
             nonfinite: str = "raise", dtype=np.float32, progress: bool | None = None
             ) -> NSDSubjectData:
    """Read one NSD subject's single-trial betas, session by session.

    Parameters
    ----------
    root : path-like, optional
        NSD root (holds ``nsddata/``, ``nsddata_betas/``, ``nsddata_stimuli/``); defaults to
        ``$BRAINRECON_NSD``.
    subject : int or str
        1..8, ``"1"`` or ``"subj01"``.
    space : {"func1pt8mm", "fsaverage", "MNI"}
    n_sessions, sessions : int, or list of int
        The first ``n_sessions`` sessions (37 = the pre-2023 protocol: 982 test images; 40 =
        MindEye2's: 1000), or an explicit list; default all the subject's completed sessions.
    average : {"test", "all", "none"}
        Average the repeats of shared test images (``"test"``), of every image (``"all"``),
        or keep single trials (``"none"``); rows average the trials available in the sessions read.
    zscore : bool
        Z-score each voxel within each session over that session's trials (ddof 0, eps 1e-6).
    zscore_exclude_shared : bool
        Compute the z-score statistics from the session's non-shared trials only (MindEye2 paper).
    beta_version : str, optional
        Beta folder; default ``betas_fithrf_GLMdenoise_RR`` (``betas_fithrf`` for MNI).
    roi : str or None
        Volumes: ROI file name in ``.../roi/`` (``"auto"`` = ``nsdgeneral``), voxels with
        value > 0. fsaverage: ``None``/``"auto"`` = all vertices, or a label name in
        ``nsddata/freesurfer/fsaverage/label/``.
    mask : array-like or path, optional
        Volumes only: a 3-D mask (or NIfTI file) used instead of ``roi``.
    fsaverage5 : bool
        fsaverage only: keep the first 10,242 vertices per hemisphere (fsaverage5, as
        brainrecon's FlatmapProjector uses) instead of all 163,842.
    volume_format : {"auto", "nii.gz", "hdf5", "mat"}
        ``"auto"`` uses the first of ``.nii.gz``, ``.hdf5``, ``.mat`` found per session.
    captions : {"auto", True, False}
        COCO captions: when present / required / never.
    nonfinite : {"raise", "zero"}
        NaN/Inf betas raise an error, or count as missing (ignored by the z-score statistics,
        then set to 0; NSD's fsaverage files use NaN for missing data).
    dtype : numpy floating dtype
        Of the returned betas (``float16``/``32``/``64``; integer types, which would truncate
        z-scores to a few values, are refused).
    progress : bool, optional
        tqdm bar over sessions (None: automatic).

    Returns
    -------
    NSDSubjectData
    """
    check_choice("space", space, NSD_SPACES)
    check_choice("average", average, ("test", "all", "none"))
    check_choice("volume_format", volume_format, ("auto", *_VOLUME_FORMATS))
    check_choice("nonfinite", nonfinite, ("raise", "zero"))
    check_choice("captions", captions, ("auto", True, False))
    dtype = _float_dtype(dtype)
    root = resolve_nsd_root(root)
    subject = parse_nsd_subject(subject)
    table = nsd_trial_table(root, subject, n_sessions=n_sessions, sessions=sessions)
    sess = sorted(table["session"].unique().tolist())
    version = beta_version or NSD_DEFAULT_BETAS[space]
    paths = nsd_paths(root)
    if space == "fsaverage":
        reader = _SurfaceReader(paths, subject, version, roi, fsaverage5)
    else:
        reader = _VolumeReader(paths, subject, space, version, roi, mask, volume_format)
    files = reader.locate(sess)  # raises, listing every path, before anything is read

    if average == "none":
        key = table["trial"].to_numpy()
    else:
        per_image = table["shared"].to_numpy() if average == "test" else np.ones(len(table), bool)
        key = np.where(per_image, table["image_id"].to_numpy(), -1 - table["trial"].to_numpy())

    rows, _ = pd.factorize(key)  # first-appearance order
    table = table.assign(row=rows)
    counts = np.bincount(rows)
    out = None
    for s in tqdm(sess, desc=f"NSD subj{subject:02d} {space}", unit="session",
                  disable=(None if progress is None else not progress)):
        x = reader.read(files[s], s)
        where = (f"NSD {space} betas of subj{subject:02d} session {s} ({files[s][0]}), "
                 "index = (trial in session, feature),")
        if nonfinite == "raise":
            try:
                check_finite(x, where)
            except InvalidInputError as err:
                raise InvalidInputError(f"{err}\nNSD marks missing data with NaN in some files; "
                                        "pass nonfinite='zero' to load_nsd to treat it as missing.") from None
        sel = table["session"].to_numpy() == s
        if zscore:
            stats = ~table["shared"].to_numpy()[sel] if zscore_exclude_shared else np.ones(sel.sum(), bool)
            if not stats.any():
                raise InvalidInputError(f"session {s} has no non-shared trials to z-score with.")
            x = _zscore(x, stats)
        elif nonfinite == "zero":
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        if out is None:
            out = np.zeros((len(counts), x.shape[1]), np.float32)
        _accumulate(out, rows[sel], x)
    out /= counts[:, None].astype(np.float32)

    first = table.groupby("row", sort=True).first()
    trial_ids = np.where(counts == 1, first["trial"].to_numpy(), -1)
    image_ids = first["image_id"].to_numpy()
    caps = None
    if captions is not False:
        caps = load_nsd_captions(root, image_ids, required=captions is True)
    return NSDSubjectData(
        subject=subject, space=space, sessions=tuple(sess), betas=out.astype(dtype, copy=False),
        image_ids=image_ids, split=first["split"].to_numpy().astype(str), n_repeats=counts,
        trial_ids=trial_ids, trials=table.reset_index(drop=True), root=root, average=average,
        zscored=bool(zscore), beta_version=version, vertices=reader.vertices,
        voxel_mask=reader.voxel_mask, affine=reader.affine, captions=caps)


def _float_dtype(dtype) -> np.dtype:
    """``dtype`` as a numpy floating dtype; anything else is refused (it would truncate the betas)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.kind != "f":
        given = dt.name if dt is not None else repr(dtype)
        raise InvalidInputError(f"'dtype' must be a floating type (np.float32, np.float64 or np.float16); {given} "
                                "was provided. Betas are fractions (z-scores lie mostly within -3..3): an integer "
                                "type would truncate them. Cast the result yourself if you must.")
    return dt


def _zscore(x: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """Per-feature z-score of (trials, features) with statistics from the ``stats`` rows."""
    finite = bool(np.isfinite(x).all())
    if not finite:
        x = np.where(np.isfinite(x), x, np.nan)
    ref = x if stats.all() else x[stats]
    if finite:
        mean, std = ref.mean(0, dtype=np.float64), ref.std(0, dtype=np.float64)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns -> nan -> 0 below
            ref = ref.astype(np.float64)
            mean, std = np.nanmean(ref, axis=0), np.nanstd(ref, axis=0)
    z = (x - mean.astype(np.float32)) / (std + ZSCORE_EPS).astype(np.float32)
    return z if finite else np.nan_to_num(z, nan=0.0, copy=False)


def _accumulate(out: np.ndarray, rows: np.ndarray, x: np.ndarray) -> None:
    """``out[rows] += x`` that also sums rows repeated within ``rows``."""
    uniq, inverse = np.unique(rows, return_inverse=True)
    if uniq.size == rows.size:
        out[rows] += x
        return

    m = sparse.csr_matrix((np.ones(rows.size, np.float32), (inverse, np.arange(rows.size))),
                          shape=(uniq.size, rows.size))
    out[uniq] += m @ x
