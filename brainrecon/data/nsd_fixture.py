"""A miniature NSD tree in the official layout and file formats, for tests, docs and benchmarks.

:func:`make_nsd_fixture` writes synthetic files where NSD keeps its real ones, so
:func:`brainrecon.data.nsd.load_nsd` reads both the same way. What is full-size and what
is miniature:

* ``nsd_expdesign.mat`` is **full size** (``masterordering`` 1x30000, ``sharedix`` 1x1000,
  ``subjectim`` 8x10000, MATLAB 1-based) and built so that the published counts hold:
  shared test images/trials seen within the first 27/29/30/32/37/40 sessions are
  -/-/907/930/982/1000 and 1985/2113/2188/2371/2770/3000; 515 shared images have all 3
  repeats within 30 sessions; 8859 non-shared images appear within 37 sessions
  (9209/9411 images in all within 30/32 sessions).
* ``nsd_stim_info_merged.csv`` has all 73,000 rows and the real columns; cocoIds are fake.
* ``nsd_stimuli.hdf5`` ``imgBrick`` is (73000, S, S, 3) uint8, chunked and compressed; only
  the images of the fixture's betas sessions and the shared 1000 are written (others read
  as zeros). Pixels follow :func:`fixture_image` (id in channels 0/2, a top-to-bottom ramp
  in channel 1), so orientation and order are checkable.
* betas for ``n_sessions`` sessions only, small: volumes ``volume_shape`` (X, Y, Z) x 750
  int16 (= percent signal change x 300) as ``.nii.gz`` and/or ``.hdf5`` (h5py axes
  (750, Z, Y, X)); fsaverage ``lh``/``rh`` ``.mgh`` with 10,242 vertices (float32 by
  default: ~31 MB per hemisphere per session, so keep n_sessions small for it).
  Values follow :func:`fixture_betas`.
* ROI masks (``nsdgeneral``: -1 outside cortex, 0 cortex, 1 ROI), COCO caption JSONs for
  the written images, and ``responses.tsv``.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
from scipy.io import savemat

from ..errors import InvalidInputError, check_choice
from ..io import atomic_dir
from .nsd import (NSD_BETA_SCALE, NSD_DEFAULT_BETAS, NSD_SESSIONS_COMPLETED, NSD_SPACES,
                  NSD_TRIALS_PER_SESSION, nsd_paths, parse_nsd_subject)

__all__ = ["make_nsd_fixture", "make_nsd_expdesign", "fixture_image", "fixture_betas"]

_N_SESS, _N_IMG, _N_SHARED = 40, 10000, 1000
# shared trials per session group (sessions a..b), cumulative 1985/2113/2188/2371/2770/3000
_SHARED_GROUPS = [((1, 27), 1985), ((28, 29), 128), ((30, 30), 75), ((31, 32), 183),
                  ((33, 37), 399), ((38, 40), 230)]
# non-shared images first seen in sessions <=30 / 31-32 / 33-37 / 38-40
_NONSHARED_FIRST = [((1, 30), 8302), ((31, 32), 179), ((33, 37), 378), ((38, 40), 141)]


def _quota(total: int, n: int) -> list[int]:
    return [total // n + (i < total % n) for i in range(n)]


def make_nsd_expdesign(seed: int = 0) -> dict:
    """A full-size synthetic ``nsd_expdesign.mat`` content (1-based, as MATLAB)."""
    rng = np.random.default_rng(seed)
    per_session_shared = np.zeros(_N_SESS + 1, int)
    for (a, b), total in _SHARED_GROUPS:
        per_session_shared[a:b + 1] = _quota(total, b - a + 1)
    shared_by_session = {s: [] for s in range(1, _N_SESS + 1)}

    def deal(items, sessions, quotas):
        items = list(rng.permutation(np.asarray(items, int)))
        for s, q in zip(sessions, quotas):
            shared_by_session[s] += items[:q]
            items = items[q:]
        assert not items

    # shared images (10k index 1..1000): A all 3 repeats by session 30, B2 two early,
    # B1 one early, C/D/E first seen (all 3 repeats) in sessions 31-32 / 33-37 / 38-40
    k = rng.permutation(np.arange(1, _N_SHARED + 1))
    a_, b2, b1, c_, d_, e_ = np.split(k, np.cumsum([515, 251, 141, 23, 52]))
    early = np.concatenate([np.repeat(a_, 3), np.repeat(b2, 2), b1])
    late_groups = rng.permutation(np.repeat([4, 5, 6], [114, 243, 176]))
    late_imgs = np.concatenate([b2, np.repeat(b1, 2)])
    late = {g: list(late_imgs[late_groups == g]) for g in (4, 5, 6)}
    late[4] += list(np.repeat(c_, 3))
    late[5] += list(np.repeat(d_, 3))
    late[6] += list(np.repeat(e_, 3))
    deal(early, range(1, 31), per_session_shared[1:31])
    for g, (a, b) in zip((4, 5, 6), ((31, 32), (33, 37), (38, 40))):
        deal(late[g], range(a, b + 1), per_session_shared[a:b + 1])

    # non-shared images (1001..10000), 3 presentations each, greedy by first-seen group
    ns = rng.permutation(np.arange(_N_SHARED + 1, _N_IMG + 1))
    firsts = np.split(ns, np.cumsum([n for _, n in _NONSHARED_FIRST])[:-1])
    pool: list[int] = []
    order = np.zeros(_N_SESS * NSD_TRIALS_PER_SESSION, np.int64)
    for ((a, b), _), first in zip(_NONSHARED_FIRST, firsts):
        slots = [NSD_TRIALS_PER_SESSION - per_session_shared[s] for s in range(a, b + 1)]
        pool += list(np.repeat(first, 2))
        pool = list(rng.permutation(pool))
        n_extra = sum(slots) - len(first)
        if b == _N_SESS:
            assert n_extra == len(pool)
        items = list(rng.permutation(np.concatenate([first, pool[:n_extra]]).astype(int)))
        pool = pool[n_extra:]
        for s, q in zip(range(a, b + 1), slots):
            trials = np.concatenate([items[:q], shared_by_session[s]]).astype(np.int64)
            items = items[q:]
            lo = (s - 1) * NSD_TRIALS_PER_SESSION
            order[lo:lo + NSD_TRIALS_PER_SESSION] = rng.permutation(trials)
    # 73k ids (1-based): the shared 1000 first for everyone, then 9000 own images each
    ids = rng.permutation(np.arange(1, 73001))
    sharedix = np.sort(ids[:_N_SHARED])
    subjectim = np.zeros((8, _N_IMG), np.int64)
    subjectim[:, :_N_SHARED] = sharedix
    subjectim[:, _N_SHARED:] = ids[_N_SHARED:].reshape(8, _N_IMG - _N_SHARED)
    return {"masterordering": order[None, :].astype(np.float64),
            "sharedix": sharedix[None, :].astype(np.float64),
            "subjectim": subjectim.astype(np.float64)}


def fixture_image(image_id: int, size: int = 32) -> np.ndarray:
    """The fixture's picture of a 0-based 73k id: uint8 (size, size, 3)."""
    r, c = np.mgrid[0:size, 0:size]
    img = np.empty((size, size, 3), np.uint8)
    img[..., 0] = image_id % 256
    img[..., 1] = (r * 255 // max(1, size - 1)).astype(np.uint8)       # top -> bottom ramp
    img[..., 2] = ((c * 8 + image_id // 256) % 256).astype(np.uint8)
    return img


def fixture_betas(image_ids, trials, features, session: int) -> np.ndarray:
    """Planted betas in percent signal change, (n_trials, n_features) float64.

    An image-dependent pattern plus trial noise, with a session- and feature-dependent
    offset and gain (so per-session z-scoring has something to remove).
    """
    i = np.asarray(image_ids, float)[:, None]
    t = np.asarray(trials, float)[:, None]
    f = np.asarray(features, float)[None, :]
    signal = 2.0 * np.sin(0.37 * i + 0.11 * f) + 0.5 * np.cos(1.91 * t + 0.53 * f)
    offset = 0.5 * session + 0.2 * np.sin(0.7 * f)
    gain = 1.0 + 0.1 * session + 0.3 * np.cos(0.3 * f) ** 2
    return offset + gain * signal


def make_nsd_fixture(root, subjects=(1,), n_sessions: int = 2,
                     spaces=("func1pt8mm", "MNI"), image_size: int = 32,
                     volume_shape=(8, 9, 7), mni_shape=(7, 8, 6),
                     volume_formats=("nii.gz", "hdf5"), fsaverage_vertices: int = 10242,
                     fsaverage_dtype: str = "float32", fsaverage_sessions: int | None = None,
                     captions: bool = True,
                     responses: bool = True, seed: int = 0, overwrite: bool = False) -> Path:
    """Write a miniature NSD tree under ``root`` (built aside, renamed into place when complete).

    Parameters
    ----------
    root : path-like
        Folder to create; an existing non-empty folder is refused unless ``overwrite``.
    subjects : sequence of int or str
        Subjects that get betas, masks and behaviour.
    n_sessions : int
        Betas for sessions 1..n_sessions.
    spaces : sequence of {"func1pt8mm", "fsaverage", "MNI"}
    image_size : int
        Side of the square stimuli (NSD's are 425).
    volume_shape, mni_shape : (X, Y, Z)
    volume_formats : sequence of {"nii.gz", "hdf5"}
        func1pt8mm files to write (MNI: nii.gz only, as NSD).
    fsaverage_vertices : {10242, 163842}
        Vertices per hemisphere in the ``.mgh`` files (163842 is 0.5 GB per file).
    fsaverage_dtype : {"float32", "int16"}
        float32 holds percent signal change (as NSD); int16 holds it x 300.
    fsaverage_sessions : int, optional
        Sessions with fsaverage betas (default ``n_sessions``); fewer keeps the tree small.
    captions, responses : bool
        Write COCO caption JSONs / ``responses.tsv``.
    seed : int

    Returns
    -------
    Path
        ``root``.
    """
    root = Path(root)
    subjects = [parse_nsd_subject(s) for s in subjects]
    for s in spaces:
        check_choice("spaces", s, NSD_SPACES)
    check_choice("fsaverage_vertices", fsaverage_vertices, (10242, 163842))
    check_choice("fsaverage_dtype", fsaverage_dtype, ("float32", "int16"))
    for f in volume_formats:
        check_choice("volume_formats", f, ("nii.gz", "hdf5"))
    if not 1 <= n_sessions <= min(NSD_SESSIONS_COMPLETED[s - 1] for s in subjects):
        raise InvalidInputError(f"n_sessions must be 1..the subjects' completed sessions; got {n_sessions}.")
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise InvalidInputError(f"{root} exists and is not empty; pass overwrite=True to replace it.")

    design = make_nsd_expdesign(seed)
    order = design["masterordering"].ravel().astype(np.int64)
    subjectim = design["subjectim"].astype(np.int64)
    shown = set((design["sharedix"].ravel() - 1).astype(int))
    with atomic_dir(root) as tmp:
        p = nsd_paths(tmp)
        p.expdesign.parent.mkdir(parents=True)
        savemat(p.expdesign, design, do_compression=True)
        (tmp / "README_FIXTURE.txt").write_text(
            "Synthetic miniature NSD written by brainrecon.data.nsd_fixture.make_nsd_fixture.\n"
            "Official layout and formats; NOT real data.\n")
        rng = np.random.default_rng(seed + 1)
        for s in subjects:
            ntr = n_sessions * NSD_TRIALS_PER_SESSION
            ids = subjectim[s - 1, order[:ntr] - 1] - 1
            shown |= set(ids.tolist())
            for space in spaces:
                n = (fsaverage_sessions or n_sessions) if space == "fsaverage" else n_sessions
                _write_space(p, rng, s, space, ids, min(n, n_sessions), volume_shape, mni_shape,
                             volume_formats, fsaverage_vertices, fsaverage_dtype)
            if responses:
                _write_responses(p, s, order, subjectim)
        info = _stim_info(design, order, subjectim, rng)
        info.to_csv(p.stim_info)
        _write_images(p, sorted(shown), image_size)
        if captions:
            _write_captions(p, info.loc[sorted(shown)])
    return root


def _write_space(p, rng, s, space, ids, n_sessions, volume_shape, mni_shape, formats,
                 n_vertices, fs_dtype):
    if space == "fsaverage":
        label_dir = p.roi(s, "fsaverage", hemi="lh").parent
        if not label_dir.exists():
            label_dir.mkdir(parents=True)
            for h in ("lh", "rh"):   # full-density labels, as NSD ships them
                lab = (rng.random(163842) < 0.3).astype(np.float32)[:, None, None]
                nib.save(nib.MGHImage(lab, np.eye(4)), p.roi(s, "fsaverage", hemi=h))
        for sess in range(1, n_sessions + 1):
            sl = slice((sess - 1) * NSD_TRIALS_PER_SESSION, sess * NSD_TRIALS_PER_SESSION)
            trials = np.arange(sl.start, sl.stop)
            for off, h in ((0, "lh"), (n_vertices, "rh")):
                path = p.betas(s, space, sess, hemi=h)
                path.parent.mkdir(parents=True, exist_ok=True)
                vals = fixture_betas(ids[sl], trials, off + np.arange(n_vertices), sess)
                vals = (np.round(vals * NSD_BETA_SCALE).astype(np.int16) if fs_dtype == "int16"
                        else vals.astype(np.float32))
                nib.save(nib.MGHImage(np.ascontiguousarray(vals.T)[:, None, None, :], np.eye(4)), path)
        return
    shape = tuple(volume_shape if space == "func1pt8mm" else mni_shape)
    affine = np.diag([1.8, 1.8, 1.8, 1.0]) if space == "func1pt8mm" else np.diag([1.0, 1.0, 1.0, 1.0])
    roi = rng.choice([-1, 0, 1], size=shape, p=[0.3, 0.3, 0.4]).astype(np.int16)
    roi_path = p.roi(s, space)
    roi_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(roi, affine), roi_path)
    brain = roi >= 0   # the files zero everything outside the (liberal) brain mask
    n_vox = int(np.prod(shape))
    for sess in range(1, n_sessions + 1):
        sl = slice((sess - 1) * NSD_TRIALS_PER_SESSION, sess * NSD_TRIALS_PER_SESSION)
        vals = fixture_betas(ids[sl], np.arange(sl.start, sl.stop), np.arange(n_vox), sess)
        vol = np.round(vals * NSD_BETA_SCALE).astype(np.int16).T.reshape(*shape, -1)  # C order
        vol[~brain] = 0
        for fmt in (formats if space == "func1pt8mm" else ("nii.gz",)):
            path = p.betas(s, space, sess, NSD_DEFAULT_BETAS[space], fmt)
            path.parent.mkdir(parents=True, exist_ok=True)
            if fmt == "nii.gz":
                img = nib.Nifti1Image(vol, affine)
                img.header.set_data_dtype(np.int16)
                nib.save(img, path)
            else:
                with h5py.File(path, "w") as f:   # MATLAB X*Y*Z*750 seen reversed by h5py
                    f.create_dataset("betas", data=vol.transpose(3, 2, 1, 0), chunks=(750, 1, 1, 1))


def _stim_info(design, order, subjectim, rng):
    n = 73000
    info = pd.DataFrame({
        "cocoId": rng.choice(600000, n, replace=False) + 1,
        "cocoSplit": np.where(rng.random(n) < 0.05, "val2017", "train2017"),
        "cropBox": "(0, 0, 0.1671875, 0.1671875)", "loss": 0.0, "nsdId": np.arange(n),
        "flagged": False, "BOLD5000": False, "shared1000": False})
    info.loc[(design["sharedix"].ravel() - 1).astype(int), "shared1000"] = True
    reps = {}
    for s in range(1, 9):
        ntr = NSD_SESSIONS_COMPLETED[s - 1] * NSD_TRIALS_PER_SESSION
        ids = subjectim[s - 1, order[:ntr] - 1] - 1
        rep = pd.Series(ids).groupby(ids).cumcount().to_numpy()
        info[f"subject{s}"] = np.isin(np.arange(n), ids).astype(int)
        for r in range(3):
            col = np.zeros(n, np.int64)
            col[ids[rep == r]] = np.flatnonzero(rep == r) + 1   # 1-based trial number
            reps[f"subject{s}_rep{r}"] = col
    return pd.concat([info, pd.DataFrame(reps)], axis=1)


def _write_responses(p, s, order, subjectim):
    ntr = NSD_SESSIONS_COMPLETED[s - 1] * NSD_TRIALS_PER_SESSION
    t = np.arange(ntr)
    tis = t % NSD_TRIALS_PER_SESSION
    bounds = np.cumsum([63, 62] * 6)
    run = np.searchsorted(bounds, tis, side="right")
    k = order[:ntr]
    rep = pd.Series(k).groupby(k).cumcount().to_numpy()
    df = pd.DataFrame({
        "SUBJECT": s, "SESSION": t // NSD_TRIALS_PER_SESSION + 1, "RUN": run + 1,
        "TRIAL": tis - np.concatenate([[0], bounds])[run] + 1,
        "73KID": subjectim[s - 1, k - 1], "10KID": k, "TIME": 0.0, "ISOLD": (rep > 0).astype(int),
        "ISCORRECT": 1, "RT": 800.0, "CHANGEMIND": 0, "MEMORYRECENT": np.nan, "MEMORYFIRST": np.nan,
        "ISOLDCURRENT": (rep > 0).astype(int), "ISCORRECTCURRENT": 1, "TOTAL1": 1, "TOTAL2": 0,
        "BUTTON": 1, "MISSINGDATA": 0})
    path = p.responses(s)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, sep="\t", index=False)


def _write_images(p, ids, size):
    p.stimuli.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(p.stimuli, "w") as f:
        ds = f.create_dataset("imgBrick", shape=(73000, size, size, 3), dtype=np.uint8,
                              chunks=(1, size, size, 3), compression="gzip", compression_opts=1)
        ids = np.asarray(ids, int)
        for lo in range(0, ids.size, 512):
            chunk = ids[lo:lo + 512]
            ds[chunk.tolist()] = np.stack([fixture_image(i, size) for i in chunk])


def _write_captions(p, rows):
    for split in ("train2017", "val2017"):
        sel = rows[rows["cocoSplit"] == split]
        images = [{"id": int(c), "file_name": f"{int(c):012d}.jpg", "height": 480, "width": 640}
                  for c in sel["cocoId"]]
        anns = [{"image_id": int(c), "id": int(c) * 10 + j,
                 "caption": f"A synthetic picture of NSD image {int(n)}, caption {j}."}
                for c, n in zip(sel["cocoId"], sel["nsdId"]) for j in range(5)]
        path = p.captions(split)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"info": {"description": "brainrecon NSD fixture (synthetic)"},
                       "licenses": [], "images": images, "annotations": anns}, f)
