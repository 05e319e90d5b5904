"""The fsaverage5 cortical surface and its visual areas, offline.

nilearn ships fsaverage5 (pial, white, inflated, sphere and **flat** meshes, sulcal
depth) inside its package, so everything here works with no network. brainrecon's
vertex order is the same everywhere: the 10,242 left-hemisphere vertices, then the
10,242 right-hemisphere vertices (20,484 in all).

NSD's surface betas live on full fsaverage (163,842 vertices per hemisphere). The
icosahedral subdivisions nest, so fsaverage5's vertices are the first 10,242 of
fsaverage's: :func:`reduce_to_fsaverage5` takes them.

Visual areas come from Benson et al. (2014)'s retinotopy template when the optional
``neuropythy`` package is installed (``pip install brainrecon[atlas]``; read at run
time, never copied), and otherwise from a *geometric* model fitted once to that
template: on nilearn's flat map V1, V2 and V3 are ~11.5 mm bands parallel to the
posterior cut (the calcarine sulcus), polar angle alternates between the horizontal
and vertical meridians at band borders, and log-eccentricity grows linearly with the
distance from the foveal confluence (fit r = 0.97 left, 0.98 right). Against Benson on
fsaverage5 the geometric model reaches Dice 0.79 (V1), 0.65 (V2), 0.53 (V3), log-eccentricity
r = 0.96 and polar angle r = 0.85 on vertices both call V1-V3. It is deterministic and is
what the toy world uses by default.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from nilearn import datasets

from ..errors import InvalidInputError, check_choice

__all__ = [
    "N_VERTICES_FSAVERAGE5",
    "N_VERTICES_FSAVERAGE",
    "HEMISPHERES",
    "Hemisphere",
    "FsaverageSurface",
    "VisualAreas",
    "AREA_NAMES",
    "area_mask",
    "load_fsaverage5",
    "load_visual_areas",
    "reduce_to_fsaverage5",
]

N_VERTICES_FSAVERAGE5 = 10242
N_VERTICES_FSAVERAGE = 163842
HEMISPHERES = ("left", "right")

#: Benson-2014 area numbering, used by both sources.
AREA_NAMES = {1: "V1", 2: "V2", 3: "V3", 4: "hV4", 5: "VO1", 6: "VO2", 7: "LO1", 8: "LO2",
              9: "TO1", 10: "TO2", 11: "V3b", 12: "V3a"}
EARLY_AREAS = (1, 2, 3)
HIGHER_AREAS = (4, 5, 6, 7, 8, 9, 10, 11, 12)

# Geometric model, fitted to Benson-2014 on nilearn's fsaverage5 flat meshes
# (x mirrored for the right hemisphere so the posterior cut is at +x in both).
_FOVEA_Y = {"left": -22.0, "right": -10.0}   # flat-map y of the foveal confluence
_BAND_MM = 11.5                               # width of V1, V2, V3 bands
_LOG_ECC = (0.05, -0.30)                      # log(ecc) = a * |y - y0| + b
_MAX_U = 90.0                                 # extent of the early areas along the cut


@dataclass(frozen=True, eq=False)
class Hemisphere:
    """One hemisphere of fsaverage5.

    Attributes
    ----------
    name : {"left", "right"}
    flat : ndarray (10242, 2)
        Flat-map coordinates (mm); the medial wall is cut out.
    flat_faces : ndarray (F, 3)
        Triangles of the flat patch (fewer than the closed mesh).
    on_flat : ndarray (10242,) of bool
        Vertices used by at least one flat triangle.
    faces : ndarray (20480, 3)
        Triangles of the closed meshes.
    sphere, pial, inflated : ndarray (10242, 3)
        Vertex coordinates on those meshes (mm).
    sulc : ndarray (10242,)
        Sulcal depth.
    """

    name: str
    flat: np.ndarray
    flat_faces: np.ndarray
    on_flat: np.ndarray
    faces: np.ndarray
    sphere: np.ndarray
    pial: np.ndarray
    inflated: np.ndarray
    sulc: np.ndarray

    @property
    def n_vertices(self) -> int:
        return len(self.flat)


@dataclass(frozen=True, eq=False)
class FsaverageSurface:
    """Both hemispheres of fsaverage5, in brainrecon's vertex order (left, right)."""

    left: Hemisphere
    right: Hemisphere
    mesh: str = "fsaverage5"

    @property
    def n_vertices(self) -> int:
        """Total vertex count (20,484)."""
        return self.left.n_vertices + self.right.n_vertices

    def hemi(self, name: str) -> Hemisphere:
        """Return the hemisphere called ``name`` (``"left"`` or ``"right"``)."""
        check_choice("hemi", name, HEMISPHERES)
        return getattr(self, name)

    def split(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Split ``(..., 20484)`` values into left and right ``(..., 10242)`` parts."""
        n = self.left.n_vertices
        return values[..., :n], values[..., n:]

    @property
    def on_flat(self) -> np.ndarray:
        """Boolean mask (20484,) of vertices that lie on the flat patches."""
        return np.concatenate([self.left.on_flat, self.right.on_flat])


@lru_cache(maxsize=1)
def load_fsaverage5() -> FsaverageSurface:
    """Load nilearn's shipped fsaverage5 meshes (offline, cached after the first call).

    Returns
    -------
    FsaverageSurface
        Flat, sphere, pial and inflated coordinates and sulcal depth of both hemispheres.
    """
    mesh = datasets.load_fsaverage("fsaverage5")
    sulc = datasets.load_fsaverage_data("fsaverage5", data_type="sulcal")
    hemis = []
    for name in HEMISPHERES:
        flat = mesh["flat"].parts[name]
        faces = np.asarray(flat.faces, dtype=np.int64)
        on_flat = np.zeros(N_VERTICES_FSAVERAGE5, bool)
        on_flat[np.unique(faces)] = True
        arrays = dict(
            name=name,
            flat=np.asarray(flat.coordinates, dtype=np.float64)[:, :2].copy(),
            flat_faces=faces,
            on_flat=on_flat,
            faces=np.asarray(mesh["pial"].parts[name].faces, dtype=np.int64),
            sphere=np.asarray(mesh["sphere"].parts[name].coordinates, dtype=np.float64),
            pial=np.asarray(mesh["pial"].parts[name].coordinates, dtype=np.float64),
            inflated=np.asarray(mesh["inflated"].parts[name].coordinates, dtype=np.float64),
            sulc=np.asarray(sulc.data.parts[name], dtype=np.float64).ravel(),
        )
        for v in arrays.values():
            if isinstance(v, np.ndarray):
                v.setflags(write=False)
        hemis.append(Hemisphere(**arrays))
    return FsaverageSurface(*hemis)


def reduce_to_fsaverage5(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Reduce full-fsaverage vertex data to fsaverage5 by icosahedral nesting.

    Parameters
    ----------
    values : ndarray
        Data whose ``axis`` has 163,842 (one hemisphere) or 327,684 (left then right)
        entries; fsaverage5 data (10,242 or 20,484) is returned unchanged.
    axis : int
        The vertex axis.

    Returns
    -------
    ndarray
        The same data with 10,242 or 20,484 entries along ``axis``.

    Raises
    ------
    InvalidInputError
        If the vertex axis has any other length.
    """
    values = np.asarray(values)
    n = values.shape[axis]
    k = N_VERTICES_FSAVERAGE5
    if n in (k, 2 * k):
        return values
    if n == N_VERTICES_FSAVERAGE:
        return np.take(values, np.arange(k), axis=axis)
    if n == 2 * N_VERTICES_FSAVERAGE:
        idx = np.concatenate([np.arange(k), N_VERTICES_FSAVERAGE + np.arange(k)])
        return np.take(values, idx, axis=axis)
    raise InvalidInputError(
        f"Expected fsaverage vertex data with 163842 (one hemisphere) or 327684 (both) vertices, "
        f"or fsaverage5 data with 10242 or 20484, along axis {axis}; got {n}. "
        "Volumetric data must first be sampled onto the surface (nilearn.surface.vol_to_surf).")


@dataclass(frozen=True, eq=False)
class VisualAreas:
    """Visual-area labels and retinotopy for every fsaverage5 vertex (left then right).

    Attributes
    ----------
    labels : ndarray (20484,) of int
        0 = outside the labelled visual areas, else an :data:`AREA_NAMES` key.
    eccentricity : ndarray (20484,)
        Degrees of visual angle (NaN outside the areas).
    angle : ndarray (20484,)
        Polar angle in degrees, Benson's convention: 0 = upper vertical meridian,
        90 = horizontal meridian, 180 = lower vertical meridian, in the
        contralateral hemifield (NaN outside the areas).
    source : {"geometric", "benson"}
    """

    labels: np.ndarray
    eccentricity: np.ndarray
    angle: np.ndarray
    source: str

    def mask(self, *areas: str | int) -> np.ndarray:
        """Boolean vertex mask of the named areas; see :func:`area_mask`."""
        return area_mask(self.labels, *areas)

    def present(self) -> dict[int, str]:
        """The areas that have at least one vertex, ``{label: name}``."""
        return {k: v for k, v in AREA_NAMES.items() if (self.labels == k).any()}


def area_mask(labels: np.ndarray, *areas: str | int) -> np.ndarray:
    """Boolean mask of ``labels`` that belong to ``areas``.

    Parameters
    ----------
    labels : ndarray of int
        Area labels (:data:`AREA_NAMES` keys, 0 = outside the visual areas).
    *areas : str or int
        Area names (``"V1"``, ``"hV4"``...), label numbers, or the groups ``"early"``
        (V1-V3), ``"higher"`` (hV4 and beyond), ``"visual"`` (all) and ``"other"`` (label 0).
    """
    groups = {"early": set(EARLY_AREAS), "higher": set(HIGHER_AREAS),
              "visual": set(AREA_NAMES), "other": {0}}
    by_name = {v: k for k, v in AREA_NAMES.items()}
    keys: set[int] = set()
    for a in areas:
        if isinstance(a, str):
            check_choice("area", a, list(by_name) + list(groups))
            keys |= groups.get(a, {by_name.get(a)})
        else:
            keys.add(int(a))
    return np.isin(labels, sorted(keys))


@lru_cache(maxsize=4)
def load_visual_areas(source: str = "geometric") -> VisualAreas:
    """Visual areas and retinotopy on fsaverage5.

    Parameters
    ----------
    source : {"geometric", "benson", "auto"}
        ``"benson"`` reads Benson-2014 from the installed ``neuropythy`` package (first
        10,242 vertices of each fsaverage hemisphere); ``"geometric"`` uses the fitted
        flat-map model described in this module's docstring; ``"auto"`` takes Benson
        when neuropythy is installed and the geometric model otherwise.

    Returns
    -------
    VisualAreas
    """
    check_choice("source", source, ("geometric", "benson", "auto"))
    if source in ("benson", "auto"):
        try:
            return _benson_areas()
        except ImportError:
            if source == "benson":
                raise ImportError(
                    "source='benson' reads Benson-2014 from the optional 'neuropythy' package, "
                    "which is not installed: `pip install 'brainrecon[atlas]'` (AGPL-3.0), "
                    "or use source='geometric'.") from None
    return _geometric_areas()


def _benson_areas() -> VisualAreas:
    spec = importlib.util.find_spec("neuropythy")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("neuropythy")

    root = Path(list(spec.submodule_search_locations)[0]) / "lib/data/fsaverage/surf"
    out = {}
    for key in ("varea", "eccen", "angle"):
        parts = []
        for hh in ("lh", "rh"):
            img = nib.load(str(root / f"{hh}.benson14_{key}.v4_0.mgz"))
            parts.append(np.asarray(img.get_fdata()).ravel()[:N_VERTICES_FSAVERAGE5])
        out[key] = np.concatenate(parts)
    labels = out["varea"].astype(np.int64)
    inside = labels > 0
    return VisualAreas(labels=labels,
                       eccentricity=np.where(inside, out["eccen"], np.nan),
                       angle=np.where(inside, out["angle"], np.nan),
                       source="benson")


def _geometric_areas() -> VisualAreas:
    surf = load_fsaverage5()
    labels, ecc, ang = [], [], []
    for hemi in (surf.left, surf.right):
        sign = 1.0 if hemi.name == "left" else -1.0
        x = hemi.flat[:, 0] * sign
        y = hemi.flat[:, 1]
        # distance inward from the posterior cut, measured per 4-mm strip of y
        bins = np.digitize(y, np.arange(-140.0, 141.0, 4.0))
        edge = np.full(len(x), np.nan)
        for b in np.unique(bins[hemi.on_flat]):
            sel = bins == b
            edge[sel] = x[sel & hemi.on_flat].max()
        d = edge - x
        u = y - _FOVEA_Y[hemi.name]
        band = d / _BAND_MM
        lab = np.zeros(len(x), np.int64)
        ok = hemi.on_flat & (np.abs(u) < _MAX_U)
        lab[ok & (band < 1)] = 1
        lab[ok & (band >= 1) & (band < 2)] = 2
        lab[ok & (band >= 2) & (band < 3)] = 3
        high = ok & (band >= 3) & (band < 5.2) & (np.abs(u) < 0.8 * _MAX_U)
        lab[high & (u < -15) & (band < 4)] = 4           # hV4, ventral
        lab[high & (u < -15) & (band >= 4)] = 5          # VO1
        lab[high & (u >= -15) & (u < 12)] = 7            # LO1, lateral
        lab[high & (u >= 12) & (band < 4.4)] = 12        # V3a, dorsal
        # polar-angle deviation from the horizontal meridian: 0 at the cut (calcarine),
        # 90 at V1/V2 (vertical meridian), 0 at V2/V3, 90 at V3's outer border
        delta = 90.0 * np.abs(((band + 1.0) % 2.0) - 1.0)  # 0,1,0,1 at band 0,1,2,3
        angle = np.where(u >= 0, 90.0 + delta, 90.0 - delta)   # u>0: lower field (dorsal)
        e = np.exp(_LOG_ECC[0] * np.abs(u) + _LOG_ECC[1])
        inside = lab > 0
        labels.append(lab)
        ecc.append(np.where(inside, e, np.nan))
        ang.append(np.where(inside, angle, np.nan))
    return VisualAreas(labels=np.concatenate(labels), eccentricity=np.concatenate(ecc),
                       angle=np.concatenate(ang), source="geometric")
