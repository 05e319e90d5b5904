"""Readers of NSD beta files, one session at a time: func1pt8mm/MNI volumes (``.nii.gz``,
``.hdf5``/``.mat`` with reversed axes) masked by an ROI, and fsaverage ``.mgh`` surfaces.
Integer files hold ``betas * 300`` and are divided by 300; float files are kept as they are.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import h5py
import nibabel as nib
import numpy as np

from ..errors import DataNotFoundError, InvalidInputError, reading
from .fsaverage import N_VERTICES_FSAVERAGE, N_VERTICES_FSAVERAGE5
from .nsd_layout import _CARD, _FIX, _VOLUME_FORMATS, NSD_BETA_SCALE, NSD_TRIALS_PER_SESSION

__all__ = ["read_mgh_betas"]


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
                with reading(mpath, _FIX if self.user_mask is None else "Write the mask again (nib.save)."):
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
        if self.index.size == 0:
            source = ("the mask= array" if self.user_mask is not None and not isinstance(
                self.user_mask, (str, os.PathLike)) else str(mpath))
            raise InvalidInputError(
                f"{source} selects no voxels (no value > 0 in its {m.shape} grid), so there would be no betas "
                "to read. Pass a mask with at least one voxel > 0, or another ROI with roi=... .")
        first = found[sessions[0]][0]
        if self.affine is None and str(first).endswith(".nii.gz"):
            with reading(first, _FIX):
                self.affine = nib.load(first).affine
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
        with reading(path, _FIX):
            if str(path).endswith(".nii.gz"):
                return self._read_nifti(path)
            return self._read_hdf5(path)

    def _read_nifti(self, path):
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
                    with reading(q, _FIX):
                        labels.append(np.asarray(nib.load(q).dataobj).ravel())
                else:
                    missing.append(q)
        if missing:
            raise DataNotFoundError(
                f"NSD fsaverage data ({self.version}) for subj{self.subject:02d}, sessions "
                f"{_ranges(sessions)}", missing, data_card=_CARD,
                hint="Read fewer sessions with sessions=[...] or n_sessions=.")
        first = found[sessions[0]][0]
        with reading(first, _FIX):
            n = self._n_vertices(first, nib.load(first).shape)
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
        if sum(k.size for k in keep) == 0:
            raise InvalidInputError(
                f"The fsaverage ROI {self.roi!r} selects no vertices (no label value > 0 in "
                f"{self.p.roi(self.subject, 'fsaverage', self.roi, hemi='lh')} or rh), so there would be no "
                "betas to read. Pass another roi=..., or roi=None for every vertex.")
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
    with reading(path, _FIX):
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
