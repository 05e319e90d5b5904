"""Rasterisation behind :class:`~brainrecon.data.surface.FlatmapProjector`: flat meshes,
the cached sparse barycentric matrix, and the fast sparse product. Internal; the public
names (``FlatHemisphere``, ``FlatSurface``) are re-exported by ``surface``.
"""
from __future__ import annotations

import gzip
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import matplotlib.tri as mtri
import nibabel as nib
import numpy as np
import torch
from scipy import sparse
from scipy.spatial import cKDTree

from ..errors import DataNotFoundError, InvalidInputError, check_finite
from .fsaverage import (AREA_NAMES, EARLY_AREAS, HIGHER_AREAS, N_VERTICES_FSAVERAGE,
                        N_VERTICES_FSAVERAGE5, VisualAreas, load_visual_areas)

__all__ = ["FlatHemisphere", "FlatSurface"]

CROPS = (None, "visual", "early", "higher")
_CHUNK = 8          # maps per sparse product: keeps each transposed block in cache

# ---------------------------------------------------------------------- fast kernels
_POOL: ThreadPoolExecutor | None = None
try:        # scipy's own CSR x multivector kernel, called with a reusable output buffer
    from scipy.sparse._sparsetools import csr_matvecs as _matvecs
except ImportError:                                    # pragma: no cover - scipy internals moved
    _matvecs = None


@dataclass(frozen=True, eq=False)
class FlatHemisphere:
    """The flat patch of one hemisphere (what :class:`FlatmapProjector` needs).

    Attributes
    ----------
    name : {"left", "right"}
    flat : ndarray (n, 2)
        Flat coordinates (mm) of every vertex, on the patch or not.
    flat_faces : ndarray (F, 3)
        Triangles of the patch.
    on_flat : ndarray (n,) of bool
        Vertices used by at least one triangle.
    """

    name: str
    flat: np.ndarray
    flat_faces: np.ndarray
    on_flat: np.ndarray

    @property
    def n_vertices(self) -> int:
        """Vertex count of this hemisphere."""
        return len(self.flat)


@dataclass(frozen=True, eq=False)
class FlatSurface:
    """Two flat hemispheres in brainrecon's vertex order (left, then right)."""

    left: FlatHemisphere
    right: FlatHemisphere
    mesh: str = "custom"

    @property
    def n_vertices(self) -> int:
        """Total vertex count."""
        return self.left.n_vertices + self.right.n_vertices


@dataclass(frozen=True, eq=False)
class _Raster:
    """The cached, read-only result of rasterising one parameter set."""

    matrix: sparse.csr_matrix        # (H*W, n) float64
    matrix32: sparse.csr_matrix      # same, float32 (fast path)
    inverse32: sparse.csr_matrix     # (n, H*W) normalised transpose, float32
    inverse64: sparse.csr_matrix
    idx: np.ndarray                  # (H*W, 3) vertex of each corner (0 where uncovered)
    weights: np.ndarray              # (H*W, 3) barycentric weights (0 where uncovered)
    pixel_mask: np.ndarray           # (H, W) bool
    vertex_mask: np.ndarray          # (n,) bool
    pixel_xy: np.ndarray             # (H, W, 2) flat mm of each pixel centre
    boxes: tuple                     # ((x0, x1, y0, y1) left, (...) right)


def _spmm(m: sparse.csr_matrix, x: np.ndarray, n_threads: int = 1, out=None) -> np.ndarray:
    """``x @ m.T`` for dense (B, k) ``x``, written straight into a C-ordered (B, rows) array.

    scipy's CSR x multivector kernel vectorises over the maps but writes pixel-major
    (rows, B). Running it on blocks of ``_CHUNK`` maps into one reused buffer keeps each
    block's transpose in cache and avoids a fresh zeroed allocation (page faults) per block.
    The remaining gap to the bare pixel-major product is that transpose plus writing every
    output pixel (benchmarks/bench_data.py measures both).
    """
    b = x.shape[0]
    dtype = np.result_type(m.dtype, x.dtype)
    m = m if m.dtype == dtype else m.astype(dtype)
    x = x if x.dtype == dtype else x.astype(dtype)
    rows, cols = m.shape
    if out is None:
        out = np.empty((b, rows), dtype)

    def run(lo, hi):
        c = min(_CHUNK, hi - lo)
        buf = np.empty((rows, c), dtype)
        xb = np.empty((cols, c), dtype)
        for s in range(lo, hi, c):
            e = min(s + c, hi)
            if _matvecs is None or e - s != c:        # ragged tail (or scipy internals moved)
                out[s:e] = (m @ np.ascontiguousarray(x[s:e].T)).T
                continue
            xb[...] = x[s:e].T
            buf.fill(0)
            _matvecs(rows, cols, c, m.indptr, m.indices, m.data, xb.ravel(), buf.ravel())
            out[s:e] = buf.T

    if b == 0:
        pass
    elif b == 1:
        out[0] = m @ x[0]
    elif n_threads > 1 and b >= 4 * _CHUNK:
        global _POOL
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1))
        cuts = np.linspace(0, b // _CHUNK, n_threads + 1).astype(int) * _CHUNK
        cuts[-1] = b
        list(_POOL.map(lambda ab: run(*ab), zip(cuts[:-1], cuts[1:])))
    else:
        run(0, b)
    return out


def _check_finite_fast(x, where: str) -> None:
    """check_finite, with a cheap sum as the common-case shortcut."""
    if _is_torch(x):
        if not x.is_floating_point() or bool(torch.isfinite(x.sum())):
            return
    else:
        if x.dtype.kind not in "fc" or np.isfinite(np.add.reduce(x, axis=None)):
            return
    check_finite(x, where)          # sum overflowed or was NaN: find the real culprit


def _as_float(x: np.ndarray) -> np.ndarray:
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)


def _torch_float(dtype):
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _torch_index(v: np.ndarray, like):
    return torch.as_tensor(v, device=like.device)


@lru_cache(maxsize=1)
def _nested_index():
    k = N_VERTICES_FSAVERAGE5
    return torch.from_numpy(np.concatenate([np.arange(k), N_VERTICES_FSAVERAGE + np.arange(k)]))


# ---------------------------------------------------------------------- rasterisation
class _ArrayKey:
    """Hashable wrapper so label arrays can key the raster cache."""

    def __init__(self, a):
        self.a = np.asarray(a)
        self._h = hash((self.a.shape, self.a.tobytes()))

    def __hash__(self):
        return self._h

    def __eq__(self, other):
        return isinstance(other, _ArrayKey) and np.array_equal(self.a, other.a)


def _area_labels(areas, surface) -> np.ndarray:
    if areas is None or isinstance(areas, str):
        areas = load_visual_areas(areas or "geometric")
    labels = np.asarray(areas.labels if isinstance(areas, VisualAreas)
                        else areas.a if isinstance(areas, _ArrayKey) else areas).astype(np.int64)
    nl, nr = surface.left.n_vertices, surface.right.n_vertices
    if labels.shape == (nl + nr,):
        return labels
    k = N_VERTICES_FSAVERAGE5
    if labels.shape == (2 * k,) and nl > k and nr > k:      # nested: nearest fsaverage5 vertex
        parts = []
        for hemi, lab in zip((surface.left, surface.right), (labels[:k], labels[k:])):
            xy = np.asarray(hemi.flat)[:, :2]
            _, near = cKDTree(xy[:k]).query(xy)
            parts.append(lab[near])
        return np.concatenate(parts)
    raise InvalidInputError(
        f"areas must label every vertex of the surface ({nl + nr}); got {labels.shape[0]} labels.")


@lru_cache(maxsize=16)
def _rasterise(surface, h, w, crop, margin, mask, aspect, areas) -> _Raster:
    half = w // 2
    hemis = (surface.left, surface.right)
    offsets = (0, hemis[0].n_vertices)
    n = offsets[1] + hemis[1].n_vertices
    labels = _area_labels(areas, surface) if (crop or mask) else None
    group = crop or "visual"
    if labels is not None:
        keep = {"visual": tuple(AREA_NAMES), "early": EARLY_AREAS, "higher": HIGHER_AREAS}[group]
        inside = np.isin(labels, sorted(keep))

    # boxes: same size for both hemispheres, each centred on its own content
    xy_all, faces_all, ext = [], [], []
    for k, hemi in enumerate(hemis):
        xy = np.asarray(hemi.flat, dtype=np.float64)[:, :2]
        faces = np.asarray(hemi.flat_faces, dtype=np.int64)
        used = np.zeros(len(xy), bool)
        used[np.unique(faces)] = True
        if crop is not None:
            sel = used & inside[offsets[k]:offsets[k] + len(xy)]
            if not sel.any():
                raise InvalidInputError(f"crop={crop!r}: no {group} vertex on the {hemi.name} flat patch.")
            used = sel
        lo, hi = xy[used].min(0), xy[used].max(0)
        xy_all.append(xy), faces_all.append(faces), ext.append((lo, hi))
    size = np.max([hi - lo for lo, hi in ext], axis=0) + 2 * margin      # (width, height) mm
    if aspect == "equal":
        s = min(half / size[0], h / size[1])                              # pixels per mm
        size = np.array([half / s, h / s])

    idx = np.zeros((h * w, 3), np.int64)
    wts = np.zeros((h * w, 3), np.float64)
    pixel_xy = np.zeros((h, w, 2))
    boxes = []
    for k, (xy, faces, (lo, hi)) in enumerate(zip(xy_all, faces_all, ext)):
        c = (lo + hi) / 2
        x0, y0 = c - size / 2
        x1, y1 = c + size / 2
        boxes.append((float(x0), float(x1), float(y0), float(y1)))
        gx, gy = np.meshgrid(x0 + (np.arange(half) + 0.5) * size[0] / half,
                             y1 - (np.arange(h) + 0.5) * size[1] / h)
        pixel_xy[:, k * half:(k + 1) * half] = np.stack([gx, gy], -1)
        try:
            tri = mtri.Triangulation(xy[:, 0], xy[:, 1], faces)
            ti = tri.get_trifinder()(gx.ravel(), gy.ravel())
        except (ValueError, RuntimeError) as e:
            raise InvalidInputError(
                f"the {hemis[k].name} flat mesh cannot be rasterised ({e}); a flat patch needs "
                "non-overlapping triangles in x/y.") from None
        ok = ti >= 0
        ii, jj = np.divmod(np.nonzero(ok)[0], half)
        pix = ii * w + jj + k * half
        f = faces[ti[ok]]
        p = np.stack([gx.ravel()[ok], gy.ravel()[ok]], 1)
        a, b, cc = xy[f[:, 0]], xy[f[:, 1]], xy[f[:, 2]]
        v0, v1, v2 = b - a, cc - a, p - a
        d00, d01, d11 = (v0 * v0).sum(1), (v0 * v1).sum(1), (v1 * v1).sum(1)
        d20, d21 = (v2 * v0).sum(1), (v2 * v1).sum(1)
        den = d00 * d11 - d01 * d01
        wb = (d11 * d20 - d01 * d21) / den
        wc = (d00 * d21 - d01 * d20) / den
        wgt = np.clip(np.stack([1 - wb - wc, wb, wc], 1), 0.0, 1.0)
        wgt /= wgt.sum(1, keepdims=True)
        idx[pix] = f + offsets[k]
        wts[pix] = wgt
    if mask:
        wts[(wts * inside[idx]).sum(1) < 0.5] = 0.0
    covered = wts.sum(1) > 0
    idx[~covered] = 0
    pr = np.nonzero(covered)[0]
    m = sparse.csr_matrix((wts[pr].ravel(), (np.repeat(pr, 3), idx[pr].ravel())), shape=(h * w, n))
    m.eliminate_zeros()
    m.sort_indices()
    colsum = np.asarray(m.sum(0)).ravel()
    vmask = colsum > 0
    inv = (sparse.diags(np.where(vmask, 1.0 / np.where(vmask, colsum, 1.0), 0.0)) @ m.T).tocsr()
    out = _Raster(matrix=m, matrix32=m.astype(np.float32), inverse32=inv.astype(np.float32),
                  inverse64=inv, idx=idx, weights=wts, pixel_mask=covered.reshape(h, w),
                  vertex_mask=vmask, pixel_xy=pixel_xy, boxes=tuple(boxes))
    for a in (out.idx, out.weights, out.pixel_mask, out.vertex_mask, out.pixel_xy):
        a.setflags(write=False)
    for mm in (out.matrix, out.matrix32, out.inverse32, out.inverse64):
        for a in (mm.data, mm.indices, mm.indptr):
            a.setflags(write=False)
    return out


def _read_flat_gifti(path, name: str) -> FlatHemisphere:
    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(f"the {name} flat GIfTI mesh", [path],
                                hint="Pass the paths of both hemispheres' flat patches (.gii or .gii.gz).")
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    img = nib.GiftiImage.from_bytes(data)
    try:
        coords = np.asarray(img.agg_data("NIFTI_INTENT_POINTSET"), dtype=np.float64)
        faces = np.asarray(img.agg_data("NIFTI_INTENT_TRIANGLE"), dtype=np.int64)
    except Exception:
        coords = faces = np.empty((0,))
    if coords.ndim != 2 or coords.shape[1] < 2 or faces.ndim != 2 or faces.shape[1] != 3:
        raise InvalidInputError(
            f"{path} is not a surface mesh: expected a POINTSET (n, 3) and a TRIANGLE (F, 3) data array.")
    on_flat = np.zeros(len(coords), bool)
    on_flat[np.unique(faces)] = True
    return FlatHemisphere(name=name, flat=coords[:, :2].copy(), flat_faces=faces, on_flat=on_flat)


# ---------------------------------------------------------------------- plotting
