"""Cortical flatmaps: vertex values on fsaverage(5) -> 1 x H x W images, and back.

NeuroPictor encodes fMRI as 2D images of (visual) cortex: 256 x 256 crops of a flattened
cortical surface (``/work/shared/reference/peers.md`` §1.2; its rasterisation code was never
published). :class:`FlatmapProjector` makes the equivalent from any vertex data on fsaverage5,
or full fsaverage reduced to fsaverage5 by icosahedral nesting, so the toy world and NSD go
through the same object.

Geometry
--------
The flat meshes are nilearn's offline fsaverage5 ``flat_{left,right}`` patches
(``reference/offline_facts.md`` §2): the medial wall is cut out, about 9,500 of the 10,242
vertices per hemisphere lie on the patch, and only the x/y coordinates (mm) are used.
nilearn already mirrors the right hemisphere, so the posterior cut (V1, the calcarine sulcus)
lies at **+x on the left patch and at -x on the right patch**. The image puts the left
hemisphere in the left half and the right hemisphere in the right half, unchanged, so **both
occipital poles face inward** and meet at the vertical midline of the image; anterior cortex is
at the outer edges. Image rows run from flat **+y (dorsal) at the top** to -y (ventral) at the
bottom, as ``imshow`` shows them.

Each half covers a box around its hemisphere (the whole patch, or with ``crop="visual"`` the
bounding box of the visual areas of :func:`~brainrecon.data.fsaverage.load_visual_areas`,
like NeuroPictor's visual-cortex crop) plus ``margin`` mm. Both boxes have the same size, so
both hemispheres share one pixel size; ``aspect="stretch"`` fills the H x W/2 half (like
NeuroPictor's resize), ``aspect="equal"`` keeps square millimetres by widening the box.

Every pixel centre inside a flat triangle gets that triangle's barycentric weights, so the
projection is one sparse ``(H*W, n_vertices)`` matrix with at most 3 non-zeros a row, computed
once (cached per parameters) and exact for functions that are linear on each triangle.
Pixels outside the patch (and outside the visual areas with ``mask=True``) are 0 and
``False`` in :attr:`FlatmapProjector.pixel_mask`. The back-projection
(:meth:`FlatmapProjector.inverse`) is the normalised transpose: each vertex gets the
weighted mean of the pixels it contributes to.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import sparse

from ..errors import InvalidInputError, check_choice
from ..figures import Figure
from .fsaverage import (AREA_NAMES, N_VERTICES_FSAVERAGE,
                        N_VERTICES_FSAVERAGE5, VisualAreas, load_fsaverage5, load_visual_areas,
                        reduce_to_fsaverage5)

from .flatmap_raster import (CROPS, FlatHemisphere, FlatSurface, _ArrayKey,  # noqa: E402
                             _as_float, _check_finite_fast, _is_torch, _nested_index,
                             _rasterise, _read_flat_gifti, _spmm, _torch_float, _torch_index)

__all__ = ["FlatmapProjector", "FlatHemisphere", "FlatSurface", "plot_flatmap"]

class FlatmapProjector:
    """Project vertex values to 2D cortical flatmaps ``(1, H, W)`` and back.

    Parameters
    ----------
    resolution : int or (int, int)
        Image size ``H`` (square) or ``(H, W)``; ``W`` must be even (one half per
        hemisphere). 64 to 256 is typical; NeuroPictor uses 256.
    crop : {None, "visual", "early", "higher"}
        ``None`` shows each whole flat patch; otherwise each half is cropped to the bounding
        box of those visual areas (``"visual"`` = all labelled areas) plus ``margin``.
    margin : float
        Border (mm of flat map) around each hemisphere's box.
    mask : bool
        Also zero the pixels outside the visual areas (``crop`` group, or all areas when
        ``crop`` is None), as NeuroPictor does after its crop.
    surface : FsaverageSurface or FlatSurface, optional
        Any object with ``.left`` / ``.right`` having ``.flat`` (n, 2+) and ``.flat_faces``;
        default nilearn's fsaverage5. See :meth:`from_gifti` for full-density flat meshes.
    areas : VisualAreas, {"geometric", "benson", "auto"} or ndarray of int, optional
        Visual-area labels for ``crop``, ``mask`` and ROI outlines (default geometric).
        fsaverage5 labels are carried to a denser nested surface by nearest vertex.
    aspect : {"stretch", "equal"}
        Fill each half (``"stretch"``) or keep square millimetres (``"equal"``).
    n_threads : int, optional
        Threads for large numpy batches (default 1; scipy's kernel releases the GIL, but on a
        busy 2-core machine a second thread rarely pays, see ``benchmarks/bench_data.py``).

    Attributes
    ----------
    matrix : scipy.sparse.csr_matrix (H*W, n_vertices)
        Barycentric weights; each covered row sums to 1.
    pixel_mask : ndarray (H, W) of bool
        Pixels that carry data.
    vertex_mask : ndarray (n_vertices,) of bool
        Vertices that at least one pixel samples (the ones :meth:`inverse` recovers).

    Examples
    --------
    >>> proj = FlatmapProjector(256, crop="visual")          # doctest: +SKIP
    >>> maps = proj.transform(betas)            # (n_trials, 20484) -> (n_trials, 1, 256, 256)
    >>> back = proj.inverse(maps)               # (n_trials, 20484), 0 where ~proj.vertex_mask
    """

    def __init__(self, resolution=256, crop=None, margin: float = 4.0, mask: bool = False,
                 surface=None, areas=None, aspect: str = "stretch", n_threads: int | None = None):
        if isinstance(resolution, (int, np.integer)):
            resolution = (int(resolution), int(resolution))
        try:
            h, w = (int(r) for r in resolution)
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"resolution must be an int or (H, W); got {resolution!r}.") from None
        if h < 8 or w < 8 or w % 2:
            raise InvalidInputError(
                f"resolution (H, W) = ({h}, {w}) is not usable: both must be >= 8 and W even "
                "(each hemisphere gets W/2 columns). Try 64, 128, 256 or (256, 512).")
        check_choice("crop", crop, CROPS)
        check_choice("aspect", aspect, ("stretch", "equal"))
        if not np.isfinite(margin) or margin < 0:
            raise InvalidInputError(f"margin must be a finite number of mm >= 0; got {margin!r}.")
        self.surface = load_fsaverage5() if surface is None else surface
        self.crop, self.margin, self.mask, self.aspect = crop, float(margin), bool(mask), aspect
        self.n_threads = int(n_threads) if n_threads else 1
        self._areas_arg = areas
        if isinstance(areas, np.ndarray):
            areas = _ArrayKey(areas)
        needs_areas = crop is not None or self.mask
        self._r = _rasterise(self.surface, h, w, crop, self.margin, self.mask, aspect,
                             areas if needs_areas else None)
        self._torch_cache: dict = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_gifti(cls, flat_left, flat_right, **kwargs) -> "FlatmapProjector":
        """Build a projector from two flat GIfTI meshes (``.gii`` or ``.gii.gz``).

        Parameters
        ----------
        flat_left, flat_right : path-like
            Flat patches of the left and right hemisphere (a POINTSET array with x, y[, z]
            and a TRIANGLE array), e.g. full-fsaverage flat meshes; vertex order is kept.
            The right patch must already be mirrored as nilearn's is (cut at -x).
        **kwargs
            Passed to :class:`FlatmapProjector`.

        Returns
        -------
        FlatmapProjector
            Expects ``n_left + n_right`` values per map.
        """
        hemis = [_read_flat_gifti(p, name) for p, name in ((flat_left, "left"), (flat_right, "right"))]
        return cls(surface=FlatSurface(*hemis, mesh="gifti"), **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def resolution(self) -> tuple[int, int]:
        """Image size ``(H, W)``."""
        return self._r.pixel_mask.shape

    @property
    def n_vertices(self) -> int:
        """Vertex count the projector expects (20,484 for fsaverage5)."""
        return self.surface.left.n_vertices + self.surface.right.n_vertices

    @property
    def matrix(self) -> sparse.csr_matrix:
        """Sparse ``(H*W, n_vertices)`` barycentric weights (float64, read-only)."""
        return self._r.matrix

    @property
    def pixel_mask(self) -> np.ndarray:
        """``(H, W)`` bool: pixels that carry data (the rest are always 0)."""
        return self._r.pixel_mask

    @property
    def vertex_mask(self) -> np.ndarray:
        """``(n_vertices,)`` bool: vertices sampled by at least one pixel."""
        return self._r.vertex_mask

    @property
    def pixel_xy(self) -> np.ndarray:
        """``(H, W, 2)`` flat-map mm of each pixel centre, in its own hemisphere's frame."""
        return self._r.pixel_xy

    @property
    def boxes(self) -> dict:
        """Flat-map box ``(x0, x1, y0, y1)`` in mm shown by each half, by hemisphere."""
        return dict(zip(("left", "right"), self._r.boxes))

    @property
    def pixel_size(self) -> tuple[float, float]:
        """Pixel size ``(dy, dx)`` in flat-map mm."""
        x0, x1, y0, y1 = self._r.boxes[0]
        h, w = self.resolution
        return (y1 - y0) / h, (x1 - x0) / (w // 2)

    def __repr__(self) -> str:
        h, w = self.resolution
        return (f"FlatmapProjector(resolution=({h}, {w}), crop={self.crop!r}, mask={self.mask}, "
                f"n_vertices={self.n_vertices}, covered_pixels={int(self.pixel_mask.sum())})")

    # ------------------------------------------------------------------ forward
    def transform(self, values, vertices=None, out=None):
        """Project vertex values to flatmaps.

        Parameters
        ----------
        values : ndarray or torch.Tensor, shape (..., n)
            ``n`` = :attr:`n_vertices` (20,484 = left then right for fsaverage5), or 327,684
            (full fsaverage, reduced by nesting), or ``len(vertices)``.
        vertices : array-like of int, optional
            A subject's own vertices (indices into the :attr:`n_vertices`) that ``values``
            hold, in that order. **Vertices not listed count as 0**, so a pixel at the edge of
            a subject's coverage is pulled toward 0.
        out : ndarray or torch.Tensor, shape (..., 1, H, W), float32, optional
            Write the maps here (C-contiguous; e.g. a ``np.memmap`` or a reused buffer,
            which also saves the page faults of a fresh allocation) and return it.

        Returns
        -------
        ndarray or torch.Tensor, shape (..., 1, H, W), float32
            Same library (and device) as ``values``; 0 outside :attr:`pixel_mask`.

        Raises
        ------
        InvalidInputError
            Wrong vertex count, bad ``vertices``, or NaN/Inf values.
        """
        x, lead, mode = self._as_2d(values, vertices)
        h, w = self.resolution
        shape = (*lead, 1, h, w)
        if out is not None and (tuple(out.shape) != shape or "float32" not in str(out.dtype)
                                or not (out.is_contiguous() if _is_torch(out) else out.flags.c_contiguous)):
            raise InvalidInputError(
                f"out must be a C-contiguous float32 array of shape {shape}; got "
                f"{tuple(out.shape)} {out.dtype}.")
        if mode == "torch":
            res = self._torch_apply("forward", x).reshape(shape)
        else:
            m = self._r.matrix32 if x.dtype == np.float32 else self._r.matrix
            direct = out is not None and not _is_torch(out) and x.dtype == np.float32
            res = _spmm(m, x, self.n_threads, out=out.reshape(-1, h * w) if direct else None)
            if direct:
                return out
            res = res.astype(np.float32, copy=False).reshape(shape)
            if mode == "torch-cpu":
                res = torch.from_numpy(res)
        if out is None:
            return res
        if _is_torch(out):
            out.copy_(torch.as_tensor(res))
        else:
            out[...] = res.detach().cpu().numpy() if _is_torch(res) else res
        return out

    __call__ = transform

    # ------------------------------------------------------------------ backward
    def inverse(self, images, vertices=None):
        """Back-project flatmaps to vertex values (normalised transpose).

        Parameters
        ----------
        images : ndarray or torch.Tensor, shape (..., 1, H, W) or (..., H, W)
        vertices : array-like of int, optional
            Return only these vertices (e.g. a subject's own), in that order.

        Returns
        -------
        ndarray or torch.Tensor, shape (..., n_vertices) or (..., len(vertices)), float32
            Each vertex is the weighted mean of the pixels it contributes to; vertices
            outside :attr:`vertex_mask` are 0.
        """
        h, w = self.resolution
        is_torch = _is_torch(images)
        x = images if is_torch else np.asarray(images)
        if x.ndim < 2 or tuple(x.shape[-2:]) != (h, w):
            raise InvalidInputError(
                f"inverse() expects images of shape (..., 1, {h}, {w}) or (..., {h}, {w}) for this "
                f"projector; got {tuple(x.shape)}. Use a projector with resolution={tuple(x.shape[-2:])}.")
        lead = tuple(x.shape[:-2])
        if lead and lead[-1] == 1:
            lead = lead[:-1]
        _check_finite_fast(x, "images given to FlatmapProjector.inverse")
        x = x.reshape(-1, h * w)
        if is_torch and not (x.device.type == "cpu" and not x.requires_grad):
            out = self._torch_apply("inverse", x)
        else:
            xn = x.detach().to(_torch_float(x.dtype)).numpy() if is_torch else x
            xn = _as_float(xn)
            m = self._r.inverse32 if xn.dtype == np.float32 else self._r.inverse64
            out = _spmm(m, xn, self.n_threads).astype(np.float32, copy=False)
            if is_torch:
                out = torch.from_numpy(out)
        out = out.reshape(*lead, self.n_vertices)
        if vertices is not None:
            vertices = self._check_vertices(vertices)
            out = out[..., vertices if not is_torch else _torch_index(vertices, out)]
        return out

    # ------------------------------------------------------------------ labels
    def project_labels(self, labels) -> np.ndarray:
        """Rasterise integer vertex labels (areas, ROIs) to an ``(H, W)`` label image.

        Parameters
        ----------
        labels : VisualAreas or array-like of int, shape (n_vertices,) or (327684,)

        Returns
        -------
        ndarray (H, W) of int64
            Per pixel, the label with the largest summed barycentric weight among the three
            corners of its triangle (a weighted majority); 0 outside :attr:`pixel_mask`.
        """
        if isinstance(labels, VisualAreas):
            labels = labels.labels
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise InvalidInputError(f"labels must be one value per vertex; got shape {labels.shape}.")
        if labels.shape[0] != self.n_vertices and self.n_vertices == 2 * N_VERTICES_FSAVERAGE5:
            labels = reduce_to_fsaverage5(labels)
        if labels.shape[0] != self.n_vertices:
            raise InvalidInputError(
                f"project_labels() needs one label per vertex: {self.n_vertices} for this projector; "
                f"got {labels.shape[0]}.")
        labels = labels.astype(np.int64)
        cand = labels[self._r.idx]                           # (P, 3)
        score = np.stack([(self._r.weights * (cand == cand[:, [k]])).sum(1) for k in range(3)], 1)
        out = cand[np.arange(len(cand)), score.argmax(1)]
        out = np.where(self._r.pixel_mask.ravel(), out, 0)
        return out.reshape(self.resolution)

    def visual_areas(self) -> VisualAreas | np.ndarray:
        """The visual areas this projector uses for crops, masks and outlines."""
        a = self._areas_arg
        if a is None or isinstance(a, str):
            return load_visual_areas(a or "geometric")
        return a

    # ------------------------------------------------------------------ internals
    def _check_vertices(self, vertices) -> np.ndarray:
        v = np.asarray(vertices.detach().cpu() if _is_torch(vertices) else vertices)
        if v.ndim != 1 or v.dtype.kind not in "iu":
            raise InvalidInputError(
                f"vertices must be a 1-D array of integer vertex indices; got dtype {v.dtype}, "
                f"shape {v.shape}.")
        if len(v) and (v.min() < 0 or v.max() >= self.n_vertices):
            raise InvalidInputError(
                f"vertices must index the projector's {self.n_vertices} vertices (0..{self.n_vertices - 1}); "
                f"got values from {v.min()} to {v.max()}. Full-fsaverage indices must be reduced first "
                "(fsaverage5 vertex i of a hemisphere is fsaverage vertex i).")
        if len(np.unique(v)) != len(v):
            raise InvalidInputError("vertices contains repeated indices; each vertex may appear once.")
        return v.astype(np.int64)

    def _as_2d(self, values, vertices):
        """Validate and reshape to (B, n_vertices).

        Returns ``(x, leading shape, mode)``; mode "numpy" or "torch-cpu" (x is a numpy array
        for the scipy kernel) or "torch" (x is a tensor for torch.sparse: GPU or autograd).
        """
        is_torch = _is_torch(values)
        x = values if is_torch else np.asarray(values)
        if x.ndim == 0:
            raise InvalidInputError(
                "transform() needs vertex values of shape (..., n_vertices); got a scalar.")
        n = x.shape[-1]
        lead = tuple(x.shape[:-1])
        nv = self.n_vertices
        _check_finite_fast(x, "vertex values given to FlatmapProjector.transform")
        if vertices is not None:
            v = self._check_vertices(vertices)
            if n != len(v):
                raise InvalidInputError(
                    f"values have {n} entries per map but vertices lists {len(v)}; they must match "
                    "(values[..., i] is the value at vertex vertices[i]).")
        elif n != nv:
            if nv == 2 * N_VERTICES_FSAVERAGE5 and n == 2 * N_VERTICES_FSAVERAGE:
                x = x[..., _nested_index()] if is_torch else reduce_to_fsaverage5(x)
            else:
                fix = ("pass the subject's vertex indices with vertices=..., give both hemispheres "
                       "(left then right), or reduce full fsaverage with reduce_to_fsaverage5")
                full = (f" or {2 * N_VERTICES_FSAVERAGE} (full fsaverage, reduced by nesting)"
                        if nv == 2 * N_VERTICES_FSAVERAGE5 else "")
                raise InvalidInputError(
                    f"FlatmapProjector expects {nv} vertex values per map (left then right){full} "
                    f"along the last axis; got {n} (shape {tuple(x.shape)}). To fix: {fix}.")
        x = x.reshape(-1, x.shape[-1])
        if is_torch:
            if vertices is not None:
                full = x.new_zeros((x.shape[0], nv), dtype=_torch_float(x.dtype))
                full[:, _torch_index(v, full)] = x.to(full.dtype)
                x = full
            if x.device.type != "cpu" or x.requires_grad:
                return x, lead, "torch"
            x, mode = x.to(_torch_float(x.dtype)).numpy(), "torch-cpu"
        else:
            mode = "numpy"
        x = _as_float(x)
        if vertices is not None and mode == "numpy":
            full = np.zeros((x.shape[0], nv), x.dtype)
            full[:, v] = x
            x = full
        return np.ascontiguousarray(x), lead, mode

    def _torch_apply(self, kind: str, x):
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        key = (kind, x.device, dtype)
        m = self._torch_cache.get(key)
        if m is None:
            src = self._r.matrix if kind == "forward" else self._r.inverse64
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                m = torch.sparse_csr_tensor(torch.from_numpy(src.indptr.astype(np.int64)),
                                            torch.from_numpy(src.indices.astype(np.int64)),
                                            torch.from_numpy(src.data), size=src.shape,
                                            dtype=dtype, device=x.device)
            self._torch_cache[key] = m
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out = torch.sparse.mm(m, x.to(dtype).T).T
        return out.to(torch.float32).contiguous()


def plot_flatmap(values, projector: FlatmapProjector | None = None, *, vertices=None, rois=True,
                 cmap=None, vmin=None, vmax=None, symmetric=None, title=None, ax=None,
                 colorbar: bool = True):
    """Show vertex values or a projected flatmap, with hemisphere labels and ROI outlines.

    Parameters
    ----------
    values : array-like or torch.Tensor
        Vertex values ``(n,)`` (projected with ``projector``; ``vertices=`` as in
        :meth:`FlatmapProjector.transform`) or an image ``(H, W)`` / ``(1, H, W)``.
    projector : FlatmapProjector, optional
        Default: a full-map projector (at the image's resolution for images, else 256).
        Pass the projector that made an image so that crops and outlines match.
    vertices : array-like of int, optional
        The vertices that ``values`` hold, for a subject's own vertex subset.
    rois : bool or VisualAreas or array of int labels
        Outline visual areas (``True``: the projector's areas) and name them.
    cmap : str, optional
        Default ``"RdBu_r"`` for symmetric data, else ``"viridis"``.
    vmin, vmax : float, optional
        Colour limits (default: the range of covered pixels, symmetric about 0 if asked).
    symmetric : bool, optional
        Centre the colour scale on 0 (default: when the data has both signs).
    title : str, optional
    ax : matplotlib Axes, optional
        Draw into this axes; default a new Figure (not registered with pyplot).
    colorbar : bool
        Add a colour bar.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if _is_torch(values):
        values = values.detach().cpu().numpy()
    values = np.asarray(values, dtype=np.float64)
    is_image = values.ndim >= 2 and vertices is None
    if is_image:
        img = values.reshape(values.shape[-2:]) if values.size == np.prod(values.shape[-2:]) else None
        if img is None:
            raise InvalidInputError(
                f"plot_flatmap shows one map: give (n_vertices,), (H, W) or (1, H, W); got {values.shape}.")
        if projector is None:
            projector = FlatmapProjector(resolution=img.shape)
        elif tuple(img.shape) != projector.resolution:
            raise InvalidInputError(
                f"the image is {img.shape} but the projector makes {projector.resolution} maps.")
    else:
        projector = projector or FlatmapProjector(256)
        img = np.asarray(projector.transform(values.astype(np.float32), vertices=vertices))[0]
    h, w = projector.resolution
    pm = projector.pixel_mask
    shown = img[pm] if pm.any() else img.ravel()
    if symmetric is None:
        symmetric = bool(shown.min() < 0 < shown.max())
    lim = float(np.abs(shown).max()) or 1.0
    vmin = (-lim if symmetric else float(shown.min())) if vmin is None else vmin
    vmax = (lim if symmetric else float(shown.max())) if vmax is None else vmax
    cmap = cmap or ("RdBu_r" if symmetric else "viridis")

    dy, dx = projector.pixel_size
    if ax is None:
        width = 6.0
        fig = Figure(figsize=(width + (1.0 if colorbar else 0.0),
                              max(2.0, width * h * dy / (w * dx)) + 0.6))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    ax.set_facecolor("0.85")
    im = ax.imshow(np.ma.masked_where(~pm, img), cmap=cmap, vmin=vmin, vmax=vmax,
                   interpolation="nearest", aspect=dy / dx)
    ax.axvline(w / 2 - 0.5, color="0.4", lw=0.8)
    for x, txt in ((0.02, "L"), (0.98, "R")):
        ax.text(x, 0.97, txt, transform=ax.transAxes, ha="left" if txt == "L" else "right",
                va="top", fontsize=12, fontweight="bold")
    if rois is not False and rois is not None:
        labels = projector.visual_areas() if rois is True else rois
        _draw_rois(ax, projector.project_labels(labels))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    if colorbar:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    return fig


def _draw_rois(ax, lab: np.ndarray) -> None:
    h, w = lab.shape
    for k in np.unique(lab[lab > 0]):
        m = (lab == k).astype(float)
        ax.contour(m, levels=[0.5], colors="k", linewidths=0.7)
        for half in (slice(0, w // 2), slice(w // 2, w)):
            rr, cc = np.nonzero(lab[:, half] == k)
            if len(rr) >= 4:
                ax.text(cc.mean() + half.start, rr.mean(), AREA_NAMES.get(int(k), str(k)),
                        fontsize=7, ha="center", va="center", color="k")
