"""The toy world's encoding model: images -> fsaverage5 vertex responses.

The model reads **images** (not scene labels), so it can score any image, including
reconstructions. Two kinds of image features feed it (see ``data_cards/toyworld.md``):

* **Maps** (early visual cortex, V1-V3): on a 32×32 grid, local luminance contrast
  ``|L - G_1.2px * L|``, colour-opponent energy ``|R - G|`` and ``|B - (R + G)/2|``, and
  signed luminance ``L - 0.5``. Each vertex pools them through a Gaussian receptive
  field (RF) placed from its eccentricity and polar angle, weighted by its own
  channel weights.
* **Objects** (higher visual cortex, hV4, VO1, LO1, V3a): saturated pixels
  (``max - min`` of RGB above 0.3) are assigned to the nearest palette colour and
  split into connected blobs; each blob gets a rotation-invariant shape descriptor
  (Fourier magnitudes of its radial profile, hole and spread statistics), a soft
  category posterior (softmax distance to category prototypes measured on
  single-object calibration scenes), a one-hot colour, a centroid and a weight
  ``sqrt(area / reference area)``. Higher vertices have broad RFs (Gaussian sigma
  0.3-0.45 of the image side and more) and smooth category and colour tuning maps
  over the flat surface.

A model is fully described by the arrays of :meth:`ToyEncodingModel.to_arrays`; the
noise-free response of vertex ``v`` to image ``i`` is::

    r_vi = sum_c W_vc <RF_v, map_ci> / s_c
         + sum_{b in i} a_b RF_v(x_b) (T_cat_v . p_cat_b + T_col_v . p_col_b) - offset_v
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage, sparse

from ..errors import InvalidInputError, check_finite
from .fsaverage import load_fsaverage5, load_visual_areas
from .scenes import CATEGORIES, COLOURS, make_scenes

__all__ = ["ToyEncodingModel", "ImageFeatures", "image_features", "EARLY_CHANNELS",
           "EARLY", "HIGHER", "to_float_images"]

EARLY_CHANNELS = ("contrast", "red-green", "blue-yellow", "luminance")
EARLY = (1, 2, 3)            # V1, V2, V3
HIGHER = (4, 5, 7, 12)       # hV4, VO1, LO1, V3a (the areas of the geometric atlas)
WORK = 64                    # images are resampled to WORK x WORK
GRID = 32                    # early feature maps are GRID x GRID
N_BINS = 24                  # angular bins of the blob radial profile
MIN_AREA = 8                 # blobs smaller than this (pixels at WORK) are ignored
REF_AREA = np.pi * (0.2 * WORK) ** 2
_PALETTE = np.array(list(COLOURS.values()), np.float32) / 255.0
_ARRAY_KEYS = ("vertices", "area", "rf_xy", "rf_sigma", "w_maps", "t_cat", "t_col", "offset",
               "channel_scale", "desc_mean", "desc_sd", "prototypes", "tau")


def to_float_images(images) -> np.ndarray:
    """Images as float32 (n, WORK, WORK, 3) in [0, 1].

    Accepts ``(n, H, W, 3)`` or one ``(H, W, 3)`` image, uint8 (0-255) or float (0-1),
    any square or rectangular size (resampled with antialiasing).
    """
    x = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise InvalidInputError(f"images must have shape (n, H, W, 3) (RGB, channels last); "
                                f"got {x.shape}.")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    else:
        x = x.astype(np.float32)
        check_finite(x, "images given to the toy encoding model")
    if x.shape[1:3] != (WORK, WORK) and len(x):
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
        if min(x.shape[1:3]) >= WORK:                   # box filter: exact for integer factors
            t = torch.nn.functional.interpolate(t, size=(WORK, WORK), mode="area")
        else:
            t = torch.nn.functional.interpolate(t, size=(WORK, WORK), mode="bilinear",
                                                align_corners=False)
        x = t.permute(0, 2, 3, 1).numpy()
    return np.clip(x, 0.0, 1.0)


@dataclass(frozen=True, eq=False)
class ImageFeatures:
    """Image features the encoding model responds to (see the module docstring).

    Attributes
    ----------
    maps : ndarray (n, 4, GRID*GRID) float32
        Early feature maps, channels :data:`EARLY_CHANNELS`, not yet scaled.
    blob_image : ndarray (B,) int
        Image of each blob.
    blob_xy : ndarray (B, 2)
        Blob centroid in normalised image coordinates (x right, y up, [-1, 1]).
    blob_weight : ndarray (B,)
    blob_colour : ndarray (B, 8)
        One-hot palette colour.
    blob_desc : ndarray (B, d)
        Shape descriptor.
    """

    maps: np.ndarray
    blob_image: np.ndarray
    blob_xy: np.ndarray
    blob_weight: np.ndarray
    blob_colour: np.ndarray
    blob_desc: np.ndarray

    def __len__(self) -> int:
        return len(self.maps)

    def subset(self, idx) -> "ImageFeatures":
        """Features of the images ``idx`` (unique integer indices), in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        pos = np.full(len(self), -1, np.int64)
        pos[idx] = np.arange(len(idx))
        keep = pos[self.blob_image] >= 0
        return ImageFeatures(self.maps[idx], pos[self.blob_image[keep]], self.blob_xy[keep],
                             self.blob_weight[keep], self.blob_colour[keep], self.blob_desc[keep])


def _blobs(x: np.ndarray):
    n, H, W, _ = x.shape
    r, g, b = (np.ascontiguousarray(x[..., c]) for c in range(3))
    sat = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    on = sat > 0.3
    ii = np.nonzero(on)
    rgb = (r[ii], g[ii], b[ii])
    d = np.stack([sum((rgb[c] - p[c]) ** 2 for c in range(3)) for p in _PALETTE], 1)
    lab_on = d.argmin(1) if len(d) else np.zeros(0, np.int64)
    lab = np.zeros((n, H, W), np.int64)
    lab[ii] = lab_on
    counts = np.zeros((n, len(_PALETTE)), np.int64)
    np.add.at(counts, (ii[0], lab_on), 1)
    pi, pc = np.nonzero(counts >= MIN_AREA)               # (image, colour) pairs present
    masks = on[pi] & (lab[pi] == pc[:, None, None])
    st = np.zeros((3, 3, 3), bool)
    st[1] = ndimage.generate_binary_structure(2, 1)
    L, nl = ndimage.label(masks, structure=st)
    idx = np.nonzero(L.ravel())[0]
    lb = L.ravel()[idx] - 1
    yy = (idx // W) % H + 0.5
    xx = idx % W + 0.5
    area = np.bincount(lb, minlength=nl).astype(np.float64)
    cx = np.bincount(lb, xx, nl) / np.maximum(area, 1)
    cy = np.bincount(lb, yy, nl) / np.maximum(area, 1)
    dx, dy = xx - cx[lb], yy - cy[lb]
    r = np.hypot(dx, dy) + 0.5
    th = ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * N_BINS).astype(np.int64) % N_BINS
    prof = np.zeros((nl, N_BINS))
    np.maximum.at(prof, (lb, th), r)
    fill = np.maximum(np.roll(prof, 1, 1), np.roll(prof, -1, 1))
    prof = np.where(prof > 0, prof, fill)
    rmean = np.sqrt(area / np.pi)
    prof = prof / np.maximum(rmean[:, None], 1e-3)
    inner = np.bincount(lb, (r < 0.45 * rmean[lb]).astype(np.float64), nl)
    inner = inner / np.maximum(np.pi * (0.45 * rmean) ** 2, 1.0)
    spec = np.abs(np.fft.rfft(prof, axis=1))[:, :9] / N_BINS
    desc = np.c_[spec, np.minimum(inner, 1.5), prof.max(1), prof.min(1), prof.std(1)]
    keep = area >= MIN_AREA
    blob_pair = np.zeros(nl, np.int64)
    blob_pair[lb] = idx // (H * W)
    pair = blob_pair[keep]
    xy = np.c_[cx[keep] / W * 2 - 1, 1 - cy[keep] / H * 2]
    return (pi[pair], xy, np.sqrt(area[keep] / REF_AREA), np.eye(len(_PALETTE))[pc[pair]],
            desc[keep])


def image_features(images, chunk: int = 256) -> ImageFeatures:
    """Compute :class:`ImageFeatures` of images (any size; see :func:`to_float_images`)."""
    maps, parts = [], []
    images = images if hasattr(images, "shape") else np.asarray(images)
    if getattr(images, "ndim", 4) == 3:
        images = images[None]
    for s in range(0, len(images), chunk):
        x = to_float_images(images[s:s + chunk])
        R, G, B = (np.ascontiguousarray(x[..., c]) for c in range(3))
        L = 0.299 * R + 0.587 * G + 0.114 * B
        con = np.abs(L - ndimage.gaussian_filter(L, (0, 1.2, 1.2), mode="nearest"))
        rg = np.abs(R - G)
        by = np.abs(B - 0.5 * (R + G))
        m = np.stack([con, rg, by, L - 0.5], 1)                      # (n,4,WORK,WORK)
        f = WORK // GRID
        m = m.reshape(len(x), 4, GRID, f, GRID, f).mean((3, 5))
        maps.append(m.reshape(len(x), 4, GRID * GRID).astype(np.float32))
        bi, xy, w, col, desc = _blobs(x)
        parts.append((bi + s, xy, w, col, desc))
    if not maps:
        raise InvalidInputError("no images were given to the toy encoding model.")
    cat = [np.concatenate([p[k] for p in parts]) for k in range(5)]
    return ImageFeatures(np.concatenate(maps), cat[0].astype(np.int64), cat[1], cat[2],
                         cat[3], cat[4].reshape(-1, 13))


def _grid_xy() -> np.ndarray:
    g = (np.arange(GRID) + 0.5) / GRID * 2 - 1
    gx, gy = np.meshgrid(g, -g)                     # row 0 = top = y +1
    return np.stack([gx.ravel(), gy.ravel()], 1)


class ToyEncodingModel:
    """Noise-free encoding model: images -> responses of its vertices.

    Call it on images ``(n, H, W, 3)`` (uint8 or float in [0, 1]) to get ``(n, V)``
    float32 responses, V = ``len(model.vertices)``. The toy world's group model covers
    all 20,484 fsaverage5 vertices (zero outside the visual areas); each subject has
    its own perturbed copy over its native vertices.

    Build one with :func:`brainrecon.data.toyworld.make_toyworld` (``world.encoding_model``,
    ``world.subject(id).model``) or restore it with :meth:`from_arrays`.
    """

    def __init__(self, **arrays):
        missing = [k for k in _ARRAY_KEYS if k not in arrays]
        if missing:
            raise InvalidInputError(f"ToyEncodingModel needs arrays {missing}.")
        for k in _ARRAY_KEYS:
            a = np.array(arrays[k])
            a.setflags(write=False)
            setattr(self, k, a)
        V = len(self.vertices)
        for k in ("area", "rf_sigma", "offset", "rf_xy", "w_maps", "t_cat", "t_col"):
            if len(getattr(self, k)) != V:
                raise InvalidInputError(f"ToyEncodingModel: '{k}' has {len(getattr(self, k))} "
                                        f"rows but there are {V} vertices.")
        self._active = np.nonzero(self.area > 0)[0]
        self._rf = None

    # ------------------------------------------------------------------ state
    def to_arrays(self) -> dict:
        """All parameters as a dict of numpy arrays (for safetensors)."""
        return {k: np.ascontiguousarray(getattr(self, k)) for k in _ARRAY_KEYS}

    @classmethod
    def from_arrays(cls, arrays: dict) -> "ToyEncodingModel":
        """Rebuild a model from :meth:`to_arrays` output."""
        return cls(**arrays)

    def replace(self, **arrays) -> "ToyEncodingModel":
        """A copy with some arrays replaced."""
        d = self.to_arrays()
        d.update(arrays)
        out = ToyEncodingModel(**d)
        if not {"vertices", "area", "rf_xy", "rf_sigma"} & set(arrays):
            out._rf = self._rf                       # same receptive fields
        return out

    @property
    def n_vertices(self) -> int:
        return len(self.vertices)

    def rf_centres_pixels(self, image_size: int = 64) -> np.ndarray:
        """RF centres (V, 2) as (column, row) pixel coordinates of an ``image_size`` image."""
        return np.c_[(self.rf_xy[:, 0] + 1) / 2 * image_size, (1 - self.rf_xy[:, 1]) / 2 * image_size]

    # ------------------------------------------------------------------ response
    def _rf_matrix(self) -> np.ndarray:
        if self._rf is None:
            a = self._active
            g = _grid_xy()
            pix = 2.0 / GRID
            sig = np.maximum(self.rf_sigma[a], 0.5 * pix)
            d2 = ((self.rf_xy[a, None, :] - g[None]) ** 2).sum(-1)
            rf = np.exp(-d2 / (2 * sig[:, None] ** 2)) * (pix ** 2 / (2 * np.pi * sig[:, None] ** 2))
            self._rf = rf.astype(np.float32)
        return self._rf

    def category_posterior(self, desc: np.ndarray) -> np.ndarray:
        """Soft category posterior (B, n_categories) of blob descriptors."""
        z = (desc - self.desc_mean) / self.desc_sd
        d2 = ((z[:, None, :] - self.prototypes[None]) ** 2).sum(-1)
        lg = -d2 / (2 * float(self.tau.ravel()[0]) ** 2)
        lg -= lg.max(1, keepdims=True) if len(lg) else 0
        p = np.exp(lg)
        return p / p.sum(1, keepdims=True)

    def terms(self, feats: ImageFeatures):
        """The three uncentred response terms (maps, category, colour) of active vertices."""
        a = self._active
        n = len(feats)
        rf = self._rf_matrix()
        maps = feats.maps / self.channel_scale[None, :, None].astype(np.float32)
        pooled = (maps.reshape(n * maps.shape[1], -1) @ rf.T).reshape(n, maps.shape[1], -1)
        t_maps = np.einsum("ncv,vc->nv", pooled, self.w_maps[a].astype(np.float32))
        B = len(feats.blob_image)
        t_cat = np.zeros((n, len(a)), np.float32)
        t_col = np.zeros((n, len(a)), np.float32)
        if B:
            d2 = ((feats.blob_xy[:, None, :] - self.rf_xy[a][None]) ** 2).sum(-1)
            g = np.exp(-d2 / (2 * self.rf_sigma[a][None] ** 2)) * feats.blob_weight[:, None]
            S = sparse.csr_matrix((np.ones(B), (feats.blob_image, np.arange(B))), shape=(n, B))
            pc = self.category_posterior(feats.blob_desc)
            t_cat = np.asarray(S @ (g * (pc @ self.t_cat[a].T)), np.float32)
            t_col = np.asarray(S @ (g * (feats.blob_colour @ self.t_col[a].T)), np.float32)
        return t_maps, t_cat, t_col

    def respond(self, feats: ImageFeatures) -> np.ndarray:
        """Responses (n, V) float32 to precomputed :class:`ImageFeatures`."""
        out = np.zeros((len(feats), self.n_vertices), np.float32)
        if len(self._active):
            t_maps, t_cat, t_col = self.terms(feats)
            out[:, self._active] = t_maps + t_cat + t_col - self.offset[self._active]
        return out

    def __call__(self, images, batch_size: int = 512) -> np.ndarray:
        """Responses (n, V) float32 of the model's vertices to ``images``."""
        images = images if hasattr(images, "shape") else np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        outs = [self.respond(image_features(images[s:s + batch_size]))
                for s in range(0, len(images), batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, self.n_vertices), np.float32)

    def __repr__(self) -> str:
        return (f"ToyEncodingModel({self.n_vertices} vertices, {len(self._active)} visual, "
                f"grid {GRID}x{GRID}, {len(CATEGORIES)} categories, {len(COLOURS)} colours)")


# ---------------------------------------------------------------------- construction
@lru_cache(maxsize=4)
def fit_codebook(n: int = 600, seed: int = 0):
    """Category prototypes from single-object scenes: (desc_mean, desc_sd, prototypes)."""
    sc = make_scenes(n, image_size=WORK, seed=seed, max_objects=1)
    f = image_features(sc.images)
    best = np.full(n, -1)
    best_w = np.zeros(n)
    for j, (i, w) in enumerate(zip(f.blob_image, f.blob_weight)):
        if w > best_w[i]:
            best[i], best_w[i] = j, w
    ok = best >= 0
    D, y = f.blob_desc[best[ok]], sc.category[ok]
    mean, sd = D.mean(0), D.std(0) + 1e-6
    Z = (D - mean) / sd
    protos = np.stack([Z[y == c].mean(0) for c in range(len(CATEGORIES))])
    return mean, sd, protos


def calibrate(model: ToyEncodingModel, feats: ImageFeatures, shares: dict) -> ToyEncodingModel:
    """Rescale a model's terms per area so the median vertex has the target variance.

    ``shares[area] = (maps, category, colour)`` variances (summing to 1); the offset
    is set so the mean response over the calibration images is 0.
    """
    a = model._active
    terms = model.terms(feats)
    area = model.area[a]
    arrays = {"w_maps": model.w_maps.astype(np.float64).copy(),
              "t_cat": model.t_cat.astype(np.float64).copy(),
              "t_col": model.t_col.astype(np.float64).copy()}
    for lab in np.unique(area):
        rows = area == lab
        for k, (key, t) in enumerate(zip(("w_maps", "t_cat", "t_col"), terms)):
            share = shares[int(lab)][k]
            sd = t[:, rows].std(0)
            med = np.median(sd[sd > 1e-3 * max(sd.max(), 1e-12)]) if (sd > 0).any() else 0.0
            factor = np.sqrt(share) / med if (share > 0 and med > 0) else 0.0
            arrays[key][a[rows]] *= factor
    tmp = model.replace(offset=np.zeros(model.n_vertices), **arrays)
    t = tmp.terms(feats)
    offset = np.zeros(model.n_vertices)
    offset[a] = (t[0] + t[1] + t[2]).mean(0)
    return tmp.replace(offset=offset)


#: Variance shares (maps, category, colour) of each area's response.
SHARES = {1: (1.0, 0.0, 0.0), 2: (1.0, 0.0, 0.0), 3: (1.0, 0.0, 0.0),
          4: (0.15, 0.35, 0.5), 5: (0.1, 0.45, 0.45), 7: (0.15, 0.7, 0.15), 12: (0.5, 0.3, 0.2)}
#: Early RF sigma in degrees: a + b * eccentricity.
EARLY_SIGMA = {1: (0.3, 0.12), 2: (0.45, 0.18), 3: (0.6, 0.26)}
#: Higher RF sigma in image half-widths (+ 0.3 * eccentricity / field radius).
HIGHER_SIGMA = {4: 0.6, 5: 0.8, 7: 0.9, 12: 0.7}
#: Mean early channel weights (contrast, red-green, blue-yellow, luminance).
EARLY_WEIGHTS = {1: (0.55, 0.2, 0.15, 0.1), 2: (0.5, 0.22, 0.18, 0.1), 3: (0.45, 0.25, 0.2, 0.1)}


def _smooth_field(xy: np.ndarray, rng, dim: int, n_bumps: int, length: float) -> np.ndarray:
    """Random smooth field (len(xy), dim): a sum of Gaussian bumps at random vertices."""
    centres = xy[rng.choice(len(xy), size=min(n_bumps, len(xy)), replace=False)]
    coef = rng.standard_normal((len(centres), dim))
    out = np.zeros((len(xy), dim))
    for s in range(0, len(xy), 4096):
        d2 = ((xy[s:s + 4096, None] - centres[None]) ** 2).sum(-1)
        out[s:s + 4096] = np.exp(-d2 / (2 * length ** 2)) @ coef
    return out


def flat_xy(vertices: np.ndarray) -> np.ndarray:
    """Flat-map coordinates of global vertex indices, hemispheres 1000 mm apart."""
    surf = load_fsaverage5()
    xy = np.concatenate([surf.left.flat, surf.right.flat + [1000.0, 0.0]])
    return xy[vertices]


def build_group_model(rng: np.random.Generator, field_radius_deg: float, calib: ImageFeatures,
                      atlas: str = "geometric", codebook_seed: int = 0) -> ToyEncodingModel:
    """The group encoding model over all 20,484 vertices (see the data card)."""
    va = load_visual_areas(atlas)
    V = len(va.labels)
    area = np.where(np.isin(va.labels, EARLY + HIGHER), va.labels, 0).astype(np.int64)
    ecc = np.nan_to_num(va.eccentricity)
    ang = np.deg2rad(np.nan_to_num(va.angle))
    hemi = np.where(np.arange(V) < V // 2, 1.0, -1.0)            # left sees the right field
    rf_xy = np.c_[hemi * ecc * np.sin(ang), ecc * np.cos(ang)] / field_radius_deg
    rf_sigma = np.ones(V)
    w_maps = np.zeros((V, 4))
    for lab, (a0, a1) in EARLY_SIGMA.items():
        m = area == lab
        rf_sigma[m] = (a0 + a1 * ecc[m]) / field_radius_deg
        w = rng.dirichlet(20 * np.array(EARLY_WEIGHTS[lab]), size=m.sum())
        w[:, 3] *= rng.choice([-1.0, 1.0], size=m.sum())             # ON / OFF luminance
        w_maps[m] = w
    for lab, s0 in HIGHER_SIGMA.items():
        m = area == lab
        rf_sigma[m] = s0 + 0.3 * ecc[m] / field_radius_deg
        w_maps[m, 0] = 1.0
    hi = np.nonzero(np.isin(area, HIGHER))[0]
    xy = flat_xy(hi)
    t_cat = np.zeros((V, len(CATEGORIES)))
    t_col = np.zeros((V, len(COLOURS)))
    t_cat[hi] = _smooth_field(xy, rng, len(CATEGORIES), 80, 6.0)
    t_col[hi] = _smooth_field(xy, rng, len(COLOURS), 80, 6.0)
    for t in (t_cat, t_col):
        t[hi] /= np.linalg.norm(t[hi], axis=1, keepdims=True) + 1e-9
        t[hi] += 0.15 * rng.standard_normal(t[hi].shape) / np.sqrt(t.shape[1])
    mean, sd, protos = fit_codebook(seed=codebook_seed)
    raw = ToyEncodingModel(vertices=np.arange(V), area=area, rf_xy=rf_xy, rf_sigma=rf_sigma,
                           w_maps=w_maps, t_cat=t_cat, t_col=t_col, offset=np.zeros(V),
                           channel_scale=calib.maps.std((0, 2)).astype(np.float64) + 1e-6,
                           desc_mean=mean, desc_sd=sd, prototypes=protos, tau=np.array([1.0]))
    return calibrate(raw, calib, SHARES)


def perturb_model(group: ToyEncodingModel, vertices: np.ndarray, rng: np.random.Generator,
                  calib: ImageFeatures, rf_jitter: float = 0.05, sigma_jitter: float = 0.1,
                  tuning_jitter: float = 0.3) -> ToyEncodingModel:
    """A subject's model: the group model on ``vertices`` with perturbed maps, recalibrated.

    RF centres move by a smooth warp of the visual field (amplitude ``rf_jitter`` image
    half-widths) plus a per-vertex jitter of a tenth of the RF size; RF sizes scale by a
    subject factor and a per-vertex factor (log-sd ``sigma_jitter`` each); early channel
    weights are mixed 20 % with random ones; tuning vectors get independent noise of
    ``tuning_jitter`` times their RMS.
    """
    g = {k: np.array(v[vertices]) if k in ("vertices", "area", "rf_xy", "rf_sigma", "w_maps",
                                           "t_cat", "t_col", "offset") else v
         for k, v in group.to_arrays().items()}
    V = len(vertices)
    xy = g["rf_xy"]
    f = rng.normal(0, 1.5, size=(3, 2, 2))
    ph = rng.uniform(0, 2 * np.pi, size=(3, 2))
    warp = sum(np.sin(xy @ f[k] + ph[k]) for k in range(3)) / np.sqrt(3)
    g["rf_xy"] = xy + rf_jitter * warp + 0.1 * g["rf_sigma"][:, None] * rng.standard_normal((V, 2))
    g["rf_sigma"] = g["rf_sigma"] * np.exp(sigma_jitter * (rng.standard_normal()
                                                            + rng.standard_normal(V)))
    early = np.isin(g["area"], EARLY)
    rnd = rng.dirichlet(np.ones(4), size=V)
    rnd[:, 3] *= np.sign(g["w_maps"][:, 3] + 1e-12)
    g["w_maps"] = np.where(early[:, None], 0.8 * g["w_maps"] + 0.2 * rnd, g["w_maps"])
    for k in ("t_cat", "t_col"):
        t = g[k]
        rms = np.sqrt((t ** 2).mean()) if t.size else 0.0
        g[k] = t + tuning_jitter * rms * rng.standard_normal(t.shape) * (np.abs(t).sum(1, keepdims=True) > 0)
    return calibrate(ToyEncodingModel(**g), calib, SHARES)
