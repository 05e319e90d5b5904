"""NSD's on-disk layout: constants, paths, subjects and sessions, the trial table, stimuli
and captions. Read by :mod:`brainrecon.data.nsd` (which re-exports the public names).

Facts and sources: ``data_cards/nsd.md`` and ``../shared/reference/nsd_and_metrics.md`` §1.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from scipy.io import loadmat

from ..errors import CheckpointError, DataNotFoundError, InvalidInputError, reading

__all__ = [
    "NSD_SESSIONS_COMPLETED", "NSD_TRIALS_PER_SESSION", "NSD_SPACES", "NSD_BETA_SCALE",
    "NSD_DEFAULT_BETAS", "nsd_trial_table", "resolve_nsd_root", "parse_nsd_subject",
    "load_nsd_images", "load_nsd_captions", "nsd_paths", "NSDPaths",
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
#: What to do about an NSD file that cannot be read.
_FIX = "Replace it with the official file (download it again; data_cards/nsd.md gives its place)."


# ----------------------------------------------------------------------------- paths
def resolve_nsd_root(root=None) -> Path:
    """The NSD root folder: the ``root`` argument, else ``$BRAINRECON_NSD``.

    Raises
    ------
    InvalidInputError
        If ``root`` is not a path (str or ``os.PathLike``).
    DataNotFoundError
        If neither is given, or the folder lacks ``nsddata/experiments/nsd/nsd_expdesign.mat``.
    """
    source = "root argument"
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise InvalidInputError(f"'root' must be the NSD folder as a path (str or pathlib.Path); {root!r} "
                                f"({type(root).__name__}) was provided. Pass root='/path/to/nsd' or set "
                                "$BRAINRECON_NSD.")
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
    root = resolve_nsd_root(root)
    subject = parse_nsd_subject(subject)
    sess = _sessions(subject, n_sessions, sessions)
    path = nsd_paths(root).expdesign
    with reading(path, _FIX):
        d = loadmat(path, variable_names=("masterordering", "subjectim"))
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
    root = resolve_nsd_root(root)
    path = nsd_paths(root).stimuli
    if not path.is_file():
        raise DataNotFoundError("The NSD stimuli (nsd_stimuli.hdf5)", [path], data_card=_CARD)
    ids = np.asarray(image_ids, dtype=np.int64).ravel()
    with reading(path, _FIX), h5py.File(path, "r") as f:
        if "imgBrick" not in f:
            raise CheckpointError(f"{path} has no dataset 'imgBrick' (found {list(f)}). {_FIX}")
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
    root = resolve_nsd_root(root)
    p = nsd_paths(root)
    ids = np.asarray(image_ids, dtype=np.int64).ravel()
    if not p.stim_info.is_file():
        if required:
            raise DataNotFoundError("NSD stimulus info (for COCO captions)", [p.stim_info],
                                    data_card=_CARD)
        return None
    with reading(p.stim_info, _FIX):
        info = pd.read_csv(p.stim_info, usecols=["nsdId", "cocoId", "cocoSplit"]).set_index("nsdId")
    absent = np.setdiff1d(ids, info.index.to_numpy())
    if absent.size:
        raise CheckpointError(f"{p.stim_info} has no rows for {absent.size} of the 73k ids asked for (first "
                              f"{absent[:5].tolist()}); NSD's file has all 73,000 (truncated?). {_FIX}")
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
        with reading(path, "Replace it with COCO's file (annotations_trainval2017.zip)."), \
                open(path, encoding="utf-8") as f:
            for a in json.load(f).get("annotations", []):
                by_coco.setdefault(int(a["image_id"]), []).append(str(a["caption"]).strip())
    out = []
    for coco, split in zip(rows["cocoId"], rows["cocoSplit"]):
        ok = split in present and coco == coco
        out.append(list(by_coco.get(int(coco), [])) if ok else [])
    return out
