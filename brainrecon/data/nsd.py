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

import json
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataNotFoundError, InvalidInputError, check_choice, check_finite
from .fsaverage import N_VERTICES_FSAVERAGE, N_VERTICES_FSAVERAGE5

__all__ = [
    "NSD_SESSIONS_COMPLETED", "NSD_TRIALS_PER_SESSION", "NSD_SPACES", "NSD_BETA_SCALE",
    "NSD_DEFAULT_BETAS", "NSDSubjectData", "load_nsd", "nsd_trial_table", "resolve_nsd_root",
    "parse_nsd_subject", "load_nsd_images", "load_nsd_captions", "nsd_paths", "NSDPaths",
    "read_mgh_betas",
]

#: Core NSD sessions completed by subjects 1..8.
NSD_SESSIONS_COMPLETED = (40, 40, 32, 30, 40, 32, 40, 30)
NSD_TRIALS_PER_SESSION = 750
NSD_SPACES = ("func1pt8mm", "fsaverage", "MNI")
#: Integer beta files hold percent signal change times 300.
NSD_BETA_SCALE = 300.0
#: Beta version read by default per space (MNI is released only as ``betas_fithrf``).
NSD_DEFAULT_BETAS = {"func1pt8mm": "betas_fithrf_GLMdenoise_RR",
                     "fsaverage": "betas_fithrf_GLMdenoise_RR", "MNI": "betas_fithrf"}
ZSCORE_EPS = 1e-6
_RUN_LENGTHS = np.array([63, 62] * 6)
_VOLUME_FORMATS = {"nii.gz": ".nii.gz", "hdf5": ".hdf5", "mat": ".mat"}
_CARD = "nsd.md"


# ----------------------------------------------------------------------------- paths
def resolve_nsd_root(root=None) -> Path:
    """The NSD root folder: the ``root`` argument, else ``$BRAINRECON_NSD``.

    Raises
    ------
    DataNotFoundError
        If neither is given, or the folder lacks ``nsddata/experiments/nsd/nsd_expdesign.mat``.
    """
    source = "root argument"
    if root is None and os.environ.get("BRAINRECON_NSD"):
        root, source = os.environ["BRAINRECON_NSD"], "$BRAINRECON_NSD"
    if root is None:
        raise DataNotFoundError(
            "The NSD root folder (root argument: not given; $BRAINRECON_NSD: not set)", [],
            data_card=_CARD, hint="Pass root=/path/to/nsd or set $BRAINRECON_NSD to the folder "
                                  "that holds nsddata/, nsddata_betas/ and nsddata_stimuli/.")
    root = Path(root).expanduser()
    design = nsd_paths(root).expdesign
    if not design.is_file():
        raise DataNotFoundError(
            f"The NSD experiment design under the {source} {str(root)!r}", [root, design],
            data_card=_CARD, hint="The root is the folder that holds nsddata/, nsddata_betas/ "
                                  "and nsddata_stimuli/ (the top of s3://natural-scenes-dataset).")
    return root


def nsd_paths(root) -> "NSDPaths":
    """Where each NSD file lives under ``root``: ``nsd_paths(root).expdesign``, ``.betas(...)``."""
    return NSDPaths(Path(root))


@dataclass(frozen=True)
class NSDPaths:
    """Paths of the NSD files brainrecon reads, in the official AWS layout."""

    root: Path

    @property
    def expdesign(self) -> Path:
        return self.root / "nsddata/experiments/nsd/nsd_expdesign.mat"

    @property
    def stim_info(self) -> Path:
        return self.root / "nsddata/experiments/nsd/nsd_stim_info_merged.csv"

    @property
    def stimuli(self) -> Path:
        return self.root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"

    def captions(self, split: str) -> Path:
        return self.root / f"nsddata_stimuli/stimuli/nsd/annotations/captions_{split}.json"

    def responses(self, subject: int) -> Path:
        return self.root / f"nsddata/ppdata/subj{subject:02d}/behav/responses.tsv"

    def roi(self, subject: int, space: str, name: str = "nsdgeneral", hemi: str | None = None):
        """ROI volume (func1pt8mm, MNI: MNI path not verified) or fsaverage surface label."""
        if space == "fsaverage":
            return self.root / f"nsddata/freesurfer/fsaverage/label/{hemi}.{name}.mgz"
        return self.root / f"nsddata/ppdata/subj{subject:02d}/{space}/roi/{name}.nii.gz"

    def betas(self, subject: int, space: str, session: int, version: str | None = None,
              fmt: str = "nii.gz", hemi: str | None = None) -> Path:
        version = version or NSD_DEFAULT_BETAS[space]
        folder = self.root / f"nsddata_betas/ppdata/subj{subject:02d}/{space}/{version}"
        if space == "fsaverage":
            return folder / f"{hemi}.betas_session{session:02d}.mgh"
        return folder / f"betas_session{session:02d}{_VOLUME_FORMATS[fmt]}"


def parse_nsd_subject(subject) -> int:
    """Subject as 1..8 from ``3``, ``"3"``, ``"03"``, ``"subj03"`` or ``"sub-03"``."""
    m = re.fullmatch(r"(?:subj|sub-?)?0*([1-8])", str(subject).strip().lower())
    if isinstance(subject, (bool, float)) or m is None:
        raise InvalidInputError(
            f"'subject' must be one of (1, 2, 3, 4, 5, 6, 7, 8) or 'subj01'..'subj08'.\n"
            f"{subject!r} was provided.")
    return int(m.group(1))


def _sessions(subject: int, n_sessions, sessions) -> list[int]:
    done = NSD_SESSIONS_COMPLETED[subject - 1]
    if n_sessions is not None and sessions is not None:
        raise InvalidInputError("Pass either n_sessions or sessions, not both.")
    if sessions is None:
        n = done if n_sessions is None else n_sessions
        if not isinstance(n, (int, np.integer)) or not 1 <= n <= done:
            raise InvalidInputError(
                f"subj{subject:02d} completed {done} NSD core sessions; n_sessions must be 1..{done}, "
                f"{n!r} was provided. (The pre-2023 37-session release is n_sessions=37 for "
                "subj01/02/05/07.)")
        return list(range(1, int(n) + 1))
    out = sorted({int(s) for s in np.atleast_1d(sessions)})
    bad = [s for s in out if not 1 <= s <= done]
    if not out or bad:
        raise InvalidInputError(
            f"subj{subject:02d} completed {done} NSD core sessions (1..{done}); "
            f"session(s) {bad or 'none'} do not exist. sessions={sessions!r} was provided.")
    return out


# ----------------------------------------------------------------------------- design
def nsd_trial_table(root=None, subject=1, n_sessions=None, sessions=None):
    """Trial -> image table of one subject, from ``nsd_expdesign.mat``.

    Returns
    -------
    pandas.DataFrame
        One row per trial of the chosen sessions, in time order, with columns ``trial``
        (0-based global trial), ``session`` (1-based), ``trial_in_session`` (0-based),
        ``run`` and ``trial_in_run`` (1-based), ``index10k`` (1-based, as in the file),
        ``image_id`` (0-based 73k id), ``shared`` (``index10k <= 1000``), ``split``
        (``"test"`` for shared, else ``"train"``) and ``repeat`` (0-based presentation
        number of the image in the whole 40-session design).
    """
    import pandas as pd
    from scipy.io import loadmat

    root = resolve_nsd_root(root)
    subject = parse_nsd_subject(subject)
    sess = _sessions(subject, n_sessions, sessions)
    d = loadmat(nsd_paths(root).expdesign, variable_names=("masterordering", "subjectim"))
    order = np.asarray(d["masterordering"]).ravel().astype(np.int64)
    subjectim = np.asarray(d["subjectim"]).astype(np.int64)
    if subjectim.shape != (8, 10000) or order.size < max(sess) * NSD_TRIALS_PER_SESSION:
        raise InvalidInputError(
            f"{nsd_paths(root).expdesign} has masterordering of length {order.size} and subjectim of "
            f"shape {subjectim.shape}; NSD's has 30000 and (8, 10000). Replace the file with the "
            "official one.")
    repeat = pd.Series(order).groupby(order).cumcount().to_numpy()
    trials = np.concatenate([np.arange((s - 1) * NSD_TRIALS_PER_SESSION, s * NSD_TRIALS_PER_SESSION)
                             for s in sess])
    k = order[trials]
    tis = trials % NSD_TRIALS_PER_SESSION
    run = np.searchsorted(np.cumsum(_RUN_LENGTHS), tis, side="right")
    shared = k <= 1000
    return pd.DataFrame({
        "trial": trials, "session": trials // NSD_TRIALS_PER_SESSION + 1, "trial_in_session": tis,
        "run": run + 1, "trial_in_run": tis - np.concatenate([[0], np.cumsum(_RUN_LENGTHS)])[run] + 1,
        "index10k": k, "image_id": subjectim[subject - 1, k - 1] - 1, "shared": shared,
        "split": np.where(shared, "test", "train"), "repeat": repeat[trials]})


# ----------------------------------------------------------------------------- stimuli
def load_nsd_images(root, image_ids) -> np.ndarray:
    """Stimuli from ``nsd_stimuli.hdf5`` (``imgBrick``), as uint8 ``(n, H, W, 3)``.

    ``image_ids`` are 0-based 73k ids, in any order and with repeats; h5py needs sorted
    unique indices, so those are read and mapped back.
    """
    import h5py

    root = resolve_nsd_root(root)
    path = nsd_paths(root).stimuli
    if not path.is_file():
        raise DataNotFoundError("The NSD stimuli (nsd_stimuli.hdf5)", [path], data_card=_CARD)
    ids = np.asarray(image_ids, dtype=np.int64).ravel()
    with h5py.File(path, "r") as f:
        ds = f["imgBrick"]
        if ds.ndim != 4 or ds.shape[-1] != 3:
            raise InvalidInputError(f"{path}:imgBrick has shape {ds.shape}; expected (73000, H, W, 3).")
        if ids.size and (ids.min() < 0 or ids.max() >= ds.shape[0]):
            raise InvalidInputError(f"image ids must be 0-based 73k ids in 0..{ds.shape[0] - 1}; "
                                    f"got {ids.min()}..{ids.max()}.")
        if ids.size == 0:
            return np.zeros((0, *ds.shape[1:]), np.uint8)
        uniq, inverse = np.unique(ids, return_inverse=True)
        return np.asarray(ds[uniq.tolist()], dtype=np.uint8)[inverse]


def load_nsd_captions(root, image_ids, required: bool = False):
    """COCO captions of 0-based 73k ids, via ``nsd_stim_info_merged.csv`` (cocoId, cocoSplit).

    Returns a list (one list of strings per id), or None when the stim-info file or all
    needed ``captions_{train2017,val2017}.json`` files are absent and ``required`` is False.
    A missing split among several needed gives empty lists for its images, with a warning.
    """
    import pandas as pd

    root = resolve_nsd_root(root)
    p = nsd_paths(root)
    ids = np.asarray(image_ids, dtype=np.int64).ravel()
    if not p.stim_info.is_file():
        if required:
            raise DataNotFoundError("NSD stimulus info (for COCO captions)", [p.stim_info],
                                    data_card=_CARD)
        return None
    info = pd.read_csv(p.stim_info, usecols=["nsdId", "cocoId", "cocoSplit"]).set_index("nsdId")
    rows = info.reindex(ids)
    splits = sorted(set(rows["cocoSplit"].dropna()))
    present = {s: p.captions(s) for s in splits if p.captions(s).is_file()}
    missing = [p.captions(s) for s in splits if s not in present]
    if missing and (required or not present):
        if required:
            raise DataNotFoundError("COCO caption annotations", missing, data_card=_CARD,
                                    hint="They come from COCO's annotations_trainval2017.zip.")
        return None
    if missing:
        warnings.warn(f"COCO caption files missing: {', '.join(map(str, missing))}; "
                      "their images get no captions.", stacklevel=2)
    by_coco: dict[int, list[str]] = {}
    for path in present.values():
        with open(path, encoding="utf-8") as f:
            for a in json.load(f).get("annotations", []):
                by_coco.setdefault(int(a["image_id"]), []).append(str(a["caption"]).strip())
    out = []
    for coco, split in zip(rows["cocoId"], rows["cocoSplit"]):
        ok = split in present and coco == coco
        out.append(list(by_coco.get(int(coco), [])) if ok else [])
    return out


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
        from ..cards import read_card

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
    dtype : numpy dtype
        Of the returned betas.
    progress : bool, optional
        tqdm bar over sessions (None: automatic).

    Returns
    -------
    NSDSubjectData
    """
    from tqdm.auto import tqdm

    check_choice("space", space, NSD_SPACES)
    check_choice("average", average, ("test", "all", "none"))
    check_choice("volume_format", volume_format, ("auto", *_VOLUME_FORMATS))
    check_choice("nonfinite", nonfinite, ("raise", "zero"))
    check_choice("captions", captions, ("auto", True, False))
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
    import pandas as pd

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
    from scipy import sparse

    m = sparse.csr_matrix((np.ones(rows.size, np.float32), (inverse, np.arange(rows.size))),
                          shape=(uniq.size, rows.size))
    out[uniq] += m @ x


def _scale(values: np.ndarray, disk_dtype) -> np.ndarray:
    values = np.asarray(values)
    if np.dtype(disk_dtype).kind in "iu":
        return values.astype(np.float32) / np.float32(NSD_BETA_SCALE)
    return values.astype(np.float32, copy=False)


def _check_trials(n: int, path) -> None:
    if n != NSD_TRIALS_PER_SESSION:
        raise InvalidInputError(
            f"{path} holds {n} trials; an NSD core session has {NSD_TRIALS_PER_SESSION}. "
            "Replace the file with the official one (a truncated download?).")


class _VolumeReader:
    """func1pt8mm / MNI volumes, masked; reads each session in trial slabs."""

    slab_bytes = 1 << 30

    def __init__(self, paths, subject, space, version, roi, mask, volume_format):
        self.p, self.subject, self.space, self.version = paths, subject, space, version
        self.roi = "nsdgeneral" if roi in ("auto", None) else roi
        self.user_mask, self.format = mask, volume_format
        self.vertices = None

    def locate(self, sessions):
        import nibabel as nib

        missing, found = [], {}
        if self.user_mask is not None and not isinstance(self.user_mask, (str, os.PathLike)):
            m, self.affine = np.asarray(self.user_mask), None
        else:
            mpath = Path(self.user_mask) if self.user_mask is not None else \
                self.p.roi(self.subject, self.space, self.roi)
            if not mpath.is_file():
                missing.append(mpath)
                m = None
            else:
                img = nib.load(mpath)
                m, self.affine = np.asanyarray(img.dataobj), img.affine
        fmts = list(_VOLUME_FORMATS) if self.format == "auto" else [self.format]
        for s in sessions:
            tried = [self.p.betas(self.subject, self.space, s, self.version, f) for f in fmts]
            hit = next((t for t in tried if t.is_file()), None)
            if hit is None:
                missing += tried
            found[s] = (hit,)
        if missing:
            hint = ("Pass mask= (a 3-D array or NIfTI in this space) if you have no ROI file. "
                    if m is None else "")
            raise DataNotFoundError(
                f"NSD {self.space} data ({self.version}) for subj{self.subject:02d}, sessions "
                f"{_ranges(sessions)}", missing, data_card=_CARD,
                hint=hint + "Read fewer sessions with sessions=[...] or n_sessions=.")
        if m.ndim != 3:
            raise InvalidInputError(f"The {self.space} mask must be 3-D; it has shape {m.shape}.")
        self.voxel_mask = m > 0
        self.index = np.flatnonzero(self.voxel_mask)
        if self.affine is None:
            self.affine = nib.load(found[sessions[0]][0]).affine \
                if str(found[sessions[0]][0]).endswith(".nii.gz") else None
        return found

    def _check_shape(self, path, spatial, n_trials):
        if tuple(spatial) != self.voxel_mask.shape:
            raise InvalidInputError(
                f"Voxel grid mismatch for subj{self.subject:02d}: betas {path} are "
                f"{tuple(int(v) for v in spatial)} (X, Y, Z) but the mask is {self.voxel_mask.shape}. "
                f"Use the mask of the same subject and space ({self.p.roi(self.subject, self.space)}).")
        _check_trials(int(n_trials), path)

    def read(self, files, session):
        (path,) = files
        if str(path).endswith(".nii.gz"):
            return self._read_nifti(path)
        return self._read_hdf5(path)

    def _read_nifti(self, path):
        import nibabel as nib

        img = nib.load(path, keep_file_open=True)
        if len(img.shape) != 4:
            raise InvalidInputError(f"{path} has shape {img.shape}; expected (X, Y, Z, 750).")
        self._check_shape(path, img.shape[:3], img.shape[3])
        disk = img.header.get_data_dtype()
        step = max(1, self.slab_bytes // max(1, int(np.prod(img.shape[:3])) * disk.itemsize))
        parts = []
        for a in range(0, NSD_TRIALS_PER_SESSION, step):
            slab = np.asanyarray(img.dataobj[..., a:a + step])
            parts.append(slab.reshape(-1, slab.shape[-1])[self.index].T)
        return _scale(np.concatenate(parts), disk)

    def _read_hdf5(self, path):
        import h5py

        with h5py.File(path, "r") as f:
            if "betas" not in f:
                raise InvalidInputError(f"{path} has no dataset 'betas' (found {list(f)}).")
            ds = f["betas"]
            if ds.ndim != 4:
                raise InvalidInputError(f"{path}:betas has shape {ds.shape}; expected (750, Z, Y, X).")
            self._check_shape(path, ds.shape[1:][::-1], ds.shape[0])
            # h5py sees MATLAB's X*Y*Z*750 reversed: (750, Z, Y, X)
            x, y, z = np.unravel_index(self.index, self.voxel_mask.shape)
            nz, ny, nx = ds.shape[1:]
            flat = (z * ny + y) * nx + x
            step = max(1, self.slab_bytes // max(1, nz * ny * nx * ds.dtype.itemsize))
            parts = []
            for a in range(0, ds.shape[0], step):
                slab = ds[a:a + step]
                parts.append(slab.reshape(slab.shape[0], -1)[:, flat])
            return _scale(np.concatenate(parts), ds.dtype)


class _SurfaceReader:
    """fsaverage lh/rh ``.mgh``; keeps fsaverage5's first 10,242 vertices by default."""

    voxel_mask = affine = None

    def __init__(self, paths, subject, version, roi, fsaverage5):
        self.p, self.subject, self.version = paths, subject, version
        self.roi = None if roi in ("auto", None) else roi
        self.n_keep = N_VERTICES_FSAVERAGE5 if fsaverage5 else N_VERTICES_FSAVERAGE

    def locate(self, sessions):
        import nibabel as nib

        missing, found = [], {}
        for s in sessions:
            pair = tuple(self.p.betas(self.subject, "fsaverage", s, self.version, hemi=h)
                         for h in ("lh", "rh"))
            missing += [q for q in pair if not q.is_file()]
            found[s] = pair
        labels = []
        if self.roi is not None:
            for h in ("lh", "rh"):
                q = self.p.roi(self.subject, "fsaverage", self.roi, hemi=h)
                if q.is_file():
                    labels.append(np.asarray(nib.load(q).dataobj).ravel())
                else:
                    missing.append(q)
        if missing:
            raise DataNotFoundError(
                f"NSD fsaverage data ({self.version}) for subj{self.subject:02d}, sessions "
                f"{_ranges(sessions)}", missing, data_card=_CARD,
                hint="Read fewer sessions with sessions=[...] or n_sessions=.")
        n = self._n_vertices(found[sessions[0]][0], nib.load(found[sessions[0]][0]).shape)
        self.n_keep = min(self.n_keep, n)
        keep = []
        for i, lab in enumerate(labels or [None, None]):
            idx = np.arange(self.n_keep)
            if lab is not None:
                if lab.size not in (N_VERTICES_FSAVERAGE, N_VERTICES_FSAVERAGE5) or lab.size < self.n_keep:
                    raise InvalidInputError(
                        f"ROI label {self.p.roi(self.subject, 'fsaverage', self.roi, hemi=('lh', 'rh')[i])} "
                        f"has {lab.size} vertices; the betas need {self.n_keep}.")
                idx = np.flatnonzero(lab[:self.n_keep] > 0)
            keep.append(idx)
        self.keep = keep
        self.vertices = np.concatenate([keep[0], keep[1] + self.n_keep])
        return found

    @staticmethod
    def _n_vertices(path, shape):
        shape = tuple(int(v) for v in shape)
        if len(shape) == 4 and shape[1:3] == (1, 1) or len(shape) == 2:
            n = shape[0]
            if n in (N_VERTICES_FSAVERAGE, N_VERTICES_FSAVERAGE5):
                return n
        raise InvalidInputError(
            f"{path} has shape {shape}; NSD fsaverage betas are ({N_VERTICES_FSAVERAGE}, 1, 1, 750) "
            f"per hemisphere (or ({N_VERTICES_FSAVERAGE5}, 1, 1, 750) already reduced to fsaverage5).")

    def read(self, files, session):
        parts = [read_mgh_betas(path, self.n_keep)[:, idx] for path, idx in zip(files, self.keep)]
        return np.concatenate(parts, axis=1)


def read_mgh_betas(path, n_keep: int = N_VERTICES_FSAVERAGE5,
                   n_trials: int | None = NSD_TRIALS_PER_SESSION) -> np.ndarray:
    """One hemisphere's ``.mgh`` betas as float32 ``(n_trials, n_keep)``.

    Reads only the first ``n_keep`` vertices through nibabel's array proxy (so a full
    163,842-vertex file costs fsaverage5's memory); int16 files are divided by 300, float
    files kept as they are. ``n_trials=None`` skips the 750-trial check.
    """
    import nibabel as nib

    img = nib.load(path)
    n = _SurfaceReader._n_vertices(path, img.shape)
    if n_keep > n:
        raise InvalidInputError(f"{path} has {n} vertices; {n_keep} were asked for.")
    if n_trials is not None:
        _check_trials(int(img.shape[-1]), path)
    data = np.asarray(img.dataobj[:n_keep]).reshape(n_keep, -1)
    return np.ascontiguousarray(_scale(data, img.header.get_data_dtype()).T)


def _ranges(values: Sequence[int]) -> str:
    values = sorted(values)
    out, start = [], values[0]
    for a, b in zip(values, values[1:] + [None]):
        if b != a + 1:
            out.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ", ".join(out)
