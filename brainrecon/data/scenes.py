"""Procedural scenes for the toy world: shapes, colours, backgrounds and captions.

Every image holds 1 to ``max_objects`` flat shapes (:data:`CATEGORIES`) painted in one
of :data:`COLOURS` on a textured background (:data:`BACKGROUND_PATTERNS` ×
:data:`BACKGROUND_COLOURS`). Shapes are rendered from analytic signed-distance
functions with one-pixel anti-aliasing, fully vectorised in numpy, so thousands of
64×64 images take about a second.

Captions come from a small grammar::

    caption    := object ("," object)* " and " object " on a " pattern " " colour " background"
    object     := "a " size " " colour " " category " " place
    size       := "small" | "medium" | "large"
    place      := "at the top left" | "at the top" | ... | "in the centre" | ...

Objects are listed from the largest to the smallest: the **first-mentioned object is
the largest ("main") object**, whose attributes are also kept as flat arrays
(:attr:`Scenes.category`, :attr:`Scenes.colour`, :attr:`Scenes.bbox`) for evaluation.

Scenes are deterministic by seed, and *prefix-stable*: the first ``m`` scenes of
``make_scenes(n, seed=s)`` equal ``make_scenes(m, seed=s)`` (parameters are drawn in
fixed blocks of :data:`BLOCK` images, each from its own seeded generator).
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidInputError
from ..figures import Figure

__all__ = [
    "CATEGORIES",
    "COLOURS",
    "BACKGROUND_PATTERNS",
    "BACKGROUND_COLOURS",
    "SIZE_WORDS",
    "PLACE_WORDS",
    "POSES",
    "Scenes",
    "make_scenes",
    "render_masks",
    "render_category_maps",
    "caption_for",
    "caption_attributes",
    "swap_caption_word",
    "vocabulary",
    "plot_scenes",
]

CATEGORIES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross",
                               "ring", "diamond", "hexagon", "heart", "arrow")

#: Object colours, name -> RGB (uint8 values), well separated in hue and lightness.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (250, 140, 20),
    "yellow": (245, 225, 40),
    "green": (35, 165, 55),
    "cyan": (40, 205, 225),
    "blue": (35, 60, 215),
    "purple": (135, 45, 185),
    "pink": (250, 130, 195),
}

BACKGROUND_PATTERNS: tuple[str, ...] = ("plain", "shaded", "striped", "noisy", "checkered")

#: Background base colours, name -> RGB.
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "black": (25, 25, 25),
    "white": (232, 232, 232),
    "brown": (112, 80, 52),
}

#: Size words with their lower bound on the radius as a fraction of the image side.
SIZE_WORDS: dict[str, float] = {"small": 0.0, "medium": 0.13, "large": 0.2}

_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "centre", "right")
#: (row, column) -> phrase.
PLACE_WORDS: dict[tuple[str, str], str] = {
    ("top", "left"): "at the top left", ("top", "centre"): "at the top",
    ("top", "right"): "at the top right", ("middle", "left"): "on the left",
    ("middle", "centre"): "in the centre", ("middle", "right"): "on the right",
    ("bottom", "left"): "at the bottom left", ("bottom", "centre"): "at the bottom",
    ("bottom", "right"): "at the bottom right",
}

#: Images per parameter block (each block has its own seeded generator).
BLOCK = 64
_MAIN_SIZE = (0.16, 0.30)    # radius of the main object, fraction of the image side
_OTHER_SIZE = (0.07, 0.17)   # radius of the other objects


@dataclass(frozen=True, eq=False)
class Scenes:
    """A batch of rendered scenes with captions and ground truth.

    Attributes
    ----------
    images : ndarray (n, H, W, 3) uint8
    captions : list of str
    objects : list of list of dict
        Per image, objects from largest to smallest, each with ``category``,
        ``colour`` (names), ``centre`` (x, y pixels, y down), ``size`` (radius in
        pixels), ``rotation`` (degrees, counter-clockwise) and ``bbox``
        (x0, y0, x1, y1) in pixels, end-exclusive, of every pixel the shape touches.
    backgrounds : list of dict
        Per image ``pattern`` and ``colour`` names.
    category, colour : ndarray (n,) int
        Indices into :data:`CATEGORIES` / :data:`COLOURS` of the main object.
    bbox : ndarray (n, 4) float
        Bounding box of the main object.
    n_objects : ndarray (n,) int
    seed : int
        Seed the scenes were made with (-1 for subsets).
    """

    images: np.ndarray
    captions: list
    objects: list
    backgrounds: list
    category: np.ndarray
    colour: np.ndarray
    bbox: np.ndarray
    n_objects: np.ndarray
    seed: int = -1
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> int:
        """Side of the square images in pixels."""
        return int(self.images.shape[1])

    def subset(self, idx) -> "Scenes":
        """Scenes at ``idx`` (integer indices, a slice or a boolean mask), in that order."""
        try:
            idx = np.atleast_1d(np.arange(len(self))[idx])
        except IndexError as e:
            raise InvalidInputError(f"subset of {len(self)} scenes: {e}") from None
        return Scenes(images=self.images[idx], captions=[self.captions[i] for i in idx],
                      objects=[self.objects[i] for i in idx],
                      backgrounds=[self.backgrounds[i] for i in idx],
                      category=self.category[idx], colour=self.colour[idx],
                      bbox=self.bbox[idx], n_objects=self.n_objects[idx], seed=-1,
                      meta=dict(self.meta))


# --------------------------------------------------------------------------- geometry
def _sd_box(px, py, bx, by):
    dx, dy = np.abs(px) - bx, np.abs(py) - by
    out = np.hypot(np.maximum(dx, 0), np.maximum(dy, 0))
    return out + np.minimum(np.maximum(dx, dy), 0)


def _sd_star(px, py, r, n, m):
    """Inigo Quilez's regular star/polygon SDF (vertex on +y); ``m=2`` gives a polygon."""
    an, en = np.pi / n, np.pi / m
    acx, acy = np.cos(an), np.sin(an)
    ecx, ecy = np.cos(en), np.sin(en)
    bn = np.mod(np.arctan2(px, py), 2 * an) - an
    ln = np.hypot(px, py)
    qx, qy = ln * np.cos(bn) - r * acx, ln * np.abs(np.sin(bn)) - r * acy
    t = np.clip(-(qx * ecx + qy * ecy), 0.0, r * acy / ecy)
    qx, qy = qx + ecx * t, qy + ecy * t
    return np.hypot(qx, qy) * np.sign(qx)


def _sd_rhombus(px, py, bx, by):
    px, py = np.abs(px), np.abs(py)
    h = np.clip(((bx - 2 * px) * bx - (by - 2 * py) * by) / (bx * bx + by * by), -1, 1)
    d = np.hypot(px - 0.5 * bx * (1 - h), py - 0.5 * by * (1 + h))
    return d * np.sign(px * by + py * bx - bx * by)


def _sd_heart(px, py):
    # IQ's heart has its tip at (0, 0) and spans y in [0, ~1.1]; centre and scale it.
    s = 0.58
    x, y = np.abs(px) * s, py * s + 0.52
    lobe = np.hypot(x - 0.25, y - 0.75) - np.sqrt(2) / 4
    m = np.maximum(x + y, 0) * 0.5
    body = np.sqrt(np.minimum(x * x + (y - 1) ** 2, (x - m) ** 2 + (y - m) ** 2)) * np.sign(x - y)
    return np.where(x + y > 1, lobe, body) / s


def _sdf(cat: int, px, py):
    """Signed distance (in object radii) of category ``cat``; shapes fill |p| <= ~1."""
    name = CATEGORIES[cat]
    if name == "circle":
        return np.hypot(px, py) - 1.0
    if name == "square":
        return _sd_box(px, py, 0.8, 0.8)
    if name == "triangle":
        return _sd_star(px, py + 0.2, 1.1, 3, 2)
    if name == "star":
        return _sd_star(px, py, 1.05, 5, 2.6)
    if name == "cross":
        return np.minimum(_sd_box(px, py, 0.95, 0.3), _sd_box(px, py, 0.3, 0.95))
    if name == "ring":
        return np.abs(np.hypot(px, py) - 0.75) - 0.25
    if name == "diamond":
        return _sd_rhombus(px, py, 0.7, 1.05)
    if name == "hexagon":
        return _sd_star(px, py, 1.0, 6, 2)
    if name == "heart":
        return _sd_heart(px, py)
    if name == "arrow":
        shaft = _sd_box(px + 0.35, py, 0.6, 0.2)
        head = _sd_star(-py, px - 0.2, 0.75, 3, 2)      # vertex pointing to +x
        return np.minimum(shaft, head)
    raise AssertionError(name)


def _coverage(cat, cx, cy, size, rot, size_px):
    """Anti-aliased coverage (k, H, W) of k objects of one category."""
    g = np.arange(size_px, dtype=np.float32) + 0.5
    dx = g[None, None, :] - cx[:, None, None]
    dy = cy[:, None, None] - g[None, :, None]          # y up in the object's frame
    th = np.deg2rad(rot)[:, None, None]
    c, s = np.cos(th), np.sin(th)
    inv = 1.0 / size[:, None, None]
    px = (c * dx + s * dy) * inv
    py = (-s * dx + c * dy) * inv
    d = _sdf(cat, px, py) * size[:, None, None]          # in pixels
    return np.clip(0.5 - d, 0.0, 1.0).astype(np.float32)


def render_masks(objects: list, image_size: int) -> np.ndarray:
    """Anti-aliased coverage of each object of one scene, ignoring occlusion.

    Parameters
    ----------
    objects : list of dict
        One entry of :attr:`Scenes.objects`.
    image_size : int

    Returns
    -------
    ndarray (k, H, W) float32 in [0, 1]
    """
    out = np.zeros((len(objects), image_size, image_size), np.float32)
    for k, o in enumerate(objects):
        out[k] = _coverage(CATEGORIES.index(o["category"]), np.array([o["centre"][0]]),
                           np.array([o["centre"][1]]), np.array([o["size"]]),
                           np.array([o["rotation"]]), image_size)[0]
    return out


def render_category_maps(scenes: "Scenes") -> np.ndarray:
    """Which category covers each pixel of each scene: the renderer's own segmentation.

    Objects are painted largest first (as :func:`make_scenes` paints them), so a smaller
    object covers a larger one; a pixel belongs to the last object whose coverage there
    is at least one half.

    Parameters
    ----------
    scenes : Scenes

    Returns
    -------
    ndarray (n, H, W) uint8
        ``0`` for background, ``1 + c`` for category ``c`` of :data:`CATEGORIES`.
    """
    S = scenes.image_size
    out = np.zeros((len(scenes), S, S), np.uint8)
    for i, objs in enumerate(scenes.objects):
        for o, m in zip(objs, render_masks(objs, S)):
            out[i][m >= 0.5] = 1 + CATEGORIES.index(o["category"])
    return out


# --------------------------------------------------------------------------- captions
def _size_word(radius_frac: float) -> str:
    word = "small"
    for w, lo in SIZE_WORDS.items():
        if radius_frac >= lo:
            word = w
    return word


def _place(centre, image_size: int) -> str:
    x, y = centre
    col = _COLS[min(int(3 * x / image_size), 2)]
    row = _ROWS[min(int(3 * y / image_size), 2)]
    return PLACE_WORDS[(row, col)]


def caption_for(objects: list, background: dict, image_size: int = 64) -> str:
    """Caption of one scene from its objects (largest first) and background.

    Parameters
    ----------
    objects : list of dict
        Dicts with ``category``, ``colour``, ``centre`` (pixels) and ``size`` (radius, pixels).
    background : dict
        ``pattern`` and ``colour`` names.
    image_size : int
        Side of the image the pixel values refer to.

    Returns
    -------
    str
    """
    parts = [f"a {_size_word(o['size'] / image_size)} {o['colour']} {o['category']} "
             f"{_place(o['centre'], image_size)}" for o in objects]
    if len(parts) > 1:
        text = ", ".join(parts[:-1]) + " and " + parts[-1]
    else:
        text = parts[0]
    return f"{text} on a {background['pattern']} {background['colour']} background"


def caption_attributes(captions) -> dict:
    """What each caption says of its main (first-mentioned) object, read from its words alone.

    Parameters
    ----------
    captions : sequence of str
        Captions of the toy grammar (:func:`caption_for`).

    Returns
    -------
    dict of ndarray (n,) int
        ``category`` (index into :data:`CATEGORIES`), ``colour`` (into :data:`COLOURS`) and
        ``place`` (into ``list(PLACE_WORDS.values())``: row × 3 + column).

    Raises
    ------
    InvalidInputError
        For a caption outside the grammar, with the caption quoted.
    """
    places = sorted(enumerate(PLACE_WORDS.values()), key=lambda p: -len(p[1]))   # "at the top left" first
    cats, cols, plas = [], [], []
    for c in captions:
        w = str(c).split()
        if len(w) < 5 or w[0] != "a" or w[2] not in COLOURS or w[3] not in CATEGORIES:
            raise InvalidInputError(f"not a caption of the toy grammar: {c!r}")
        rest = " ".join(w[4:])
        hit = next((k for k, p in places if rest.startswith(p)), None)
        if hit is None:
            raise InvalidInputError(f"no place phrase after the first object of {c!r}")
        cats.append(CATEGORIES.index(w[3]))
        cols.append(list(COLOURS).index(w[2]))
        plas.append(hit)
    return {"category": np.array(cats, np.int64), "colour": np.array(cols, np.int64),
            "place": np.array(plas, np.int64)}


def swap_caption_word(captions, attribute: str, rng: np.random.Generator, which: str = "main") -> list[str]:
    """Hard-negative captions: one category, colour or place phrase replaced by another of its kind.

    Each caption keeps every other word, so telling it from the original needs exactly the
    swapped attribute (the "hard negatives" of NegCLIP, Yuksekgonul et al., ICLR 2023).

    Parameters
    ----------
    captions : sequence of str
        Grammar captions (:func:`caption_for`).
    attribute : {"category", "colour", "place"}
        Which kind of word to swap (object colours only, never the background's; a place is a whole
        phrase such as "at the top left").
    rng : numpy.random.Generator
        Picks the word (with ``which="any"``) and its replacement.
    which : {"main", "any"}
        ``"main"``: the first word of that kind, the main object's; ``"any"``: one of the
        caption's words of that kind, uniformly.

    Returns
    -------
    list of str
        Captions with the word replaced by a different one of the same kind, chosen uniformly;
        a caption without such a word is returned unchanged.
    """
    kinds = {"category": list(CATEGORIES), "colour": list(COLOURS), "place": list(PLACE_WORDS.values())}
    if attribute not in kinds or which not in ("main", "any"):
        raise InvalidInputError(f"swap_caption_word: attribute must be one of {sorted(kinds)} and which "
                                f"'main' or 'any'; got {attribute!r}, {which!r}.")
    if attribute == "place":
        return [_swap_place(cap, rng, which) for cap in captions]
    words = kinds[attribute]
    out = []
    for cap in captions:
        toks = cap.split(" ")
        pos = [i for i, w in enumerate(toks) if w.rstrip(",") in words]
        if pos:
            i = pos[0] if which == "main" else pos[int(rng.integers(len(pos)))]
            w = toks[i].rstrip(",")
            new = words[(words.index(w) + int(rng.integers(1, len(words)))) % len(words)]
            toks[i] = new + toks[i][len(w):]
        out.append(" ".join(toks))
    return out


def _swap_place(caption: str, rng: np.random.Generator, which: str) -> str:
    """``caption`` with one object's place phrase (the main one's, or any) replaced by another."""
    phrases = sorted(PLACE_WORDS.values(), key=len, reverse=True)    # "at the top left" before "at the top"
    spans, i = [], 0
    while i < len(caption):
        hit = next((ph for ph in phrases if caption.startswith(ph, i)
                    and (i + len(ph) == len(caption) or caption[i + len(ph)] in " ,")), None)
        if hit is not None and (i == 0 or caption[i - 1] == " "):
            spans.append((i, hit))
            i += len(hit)
        else:
            i += 1
    if not spans:
        return caption
    start, old = spans[0] if which == "main" else spans[int(rng.integers(len(spans)))]
    others = [ph for ph in PLACE_WORDS.values() if ph != old]
    new = others[int(rng.integers(len(others)))]
    return caption[:start] + new + caption[start + len(old):]


def vocabulary() -> list[str]:
    """Every word the caption grammar can produce, sorted (punctuation ``","`` included)."""
    words = {"a", "and", "on", "background", ","}
    words |= set(CATEGORIES) | set(COLOURS) | set(BACKGROUND_PATTERNS) | set(BACKGROUND_COLOURS)
    words |= set(SIZE_WORDS)
    for phrase in PLACE_WORDS.values():
        words |= set(phrase.split())
    return sorted(words)


# --------------------------------------------------------------------------- sampling
def _sample_block(rng: np.random.Generator, n: int, max_objects: int):
    n_obj = rng.integers(1, max_objects + 1, size=n)
    cats = rng.integers(0, len(CATEGORIES), size=(n, max_objects))
    cols = rng.integers(0, len(COLOURS), size=(n, max_objects))
    sizes = np.empty((n, max_objects))
    sizes[:, 0] = rng.uniform(*_MAIN_SIZE, size=n)
    sizes[:, 1:] = rng.uniform(*_OTHER_SIZE, size=(n, max_objects - 1))
    sizes = -np.sort(-sizes, axis=1)                      # largest first
    rots = rng.uniform(0, 360, size=(n, max_objects))
    centres = np.zeros((n, max_objects, 2))
    for k in range(max_objects):
        lo, hi = sizes[:, k] * 1.05, 1 - sizes[:, k] * 1.05
        ok = np.zeros(n, bool)
        for _ in range(25):                               # rejection sampling, vectorised
            cand = lo[:, None] + (hi - lo)[:, None] * rng.random((n, 2))
            good = np.ones(n, bool)
            for j in range(k):
                dist = np.hypot(*(cand - centres[:, j]).T)
                good &= dist > 0.85 * (sizes[:, k] + sizes[:, j])
            take = ~ok & (good | (_ == 24))
            centres[take, k] = cand[take]
            ok |= take
    pattern = rng.integers(0, len(BACKGROUND_PATTERNS), size=n)
    bg_col = rng.integers(0, len(BACKGROUND_COLOURS), size=n)
    bg_par = rng.random((n, 4))                           # orientation, period, phase, amplitude
    col_jit = rng.uniform(0.9, 1.05, size=(n, max_objects))
    return n_obj, cats, cols, sizes, rots, centres, pattern, bg_col, bg_par, col_jit


def _backgrounds(rng, pattern, bg_col, bg_par, S):
    n = len(pattern)
    base = np.array(list(BACKGROUND_COLOURS.values()), np.float32)[bg_col] / 255.0   # (n,3)
    g = (np.arange(S, dtype=np.float32) + 0.5) / S
    X, Y = g[None, None, :], g[None, :, None]
    th = (bg_par[:, 0] * np.pi).astype(np.float32)[:, None, None]
    u = np.cos(th) * X + np.sin(th) * Y                                # (n,S,S)
    amp = (0.12 + 0.12 * bg_par[:, 3]).astype(np.float32)[:, None, None]
    mod = np.zeros((n, S, S), np.float32)
    names = np.array(BACKGROUND_PATTERNS)[pattern]
    sel = names == "shaded"
    mod[sel] = (2 * amp[sel]) * (u[sel] - 0.7)
    sel = names == "striped"
    if sel.any():
        period = (4 + 4 * bg_par[sel, 1]).astype(np.float32)[:, None, None]
        wave = np.sin(2 * np.pi * (period * u[sel] + bg_par[sel, 2, None, None]))
        mod[sel] = amp[sel] * np.clip(wave * S / (2 * np.pi * period), -1, 1)   # anti-aliased
    sel = names == "checkered"
    if sel.any():
        period = (2 + 3 * bg_par[sel, 1]).astype(np.float32)[:, None, None]
        wave = np.sin(2 * np.pi * period * X) * np.sin(2 * np.pi * period * Y)
        mod[sel] = amp[sel] * np.clip(wave * S / (2 * np.pi * period), -1, 1)
    img = np.broadcast_to(base[:, None, None, :], (n, S, S, 3)) + mod[..., None]
    sel = names == "noisy"
    # noise is drawn for every image so the stream does not depend on the pattern mix
    noise = rng.standard_normal((n, S, S, 1), dtype=np.float32)
    img = img + np.where(sel[:, None, None, None], 0.6 * amp[..., None] * noise, 0.0)
    return img.astype(np.float32)


#: Object poses :func:`make_scenes` can draw (``pose=``).
POSES: tuple[str, ...] = ("random", "upright", "centred", "placed", "sized", "gridded", "one_size")
_ONE_OBJECT_POSES = ("centred", "placed", "sized", "gridded")
_GRID = 8                    # "gridded": centres on multiples of 1/8 side (the shipped 4x VAE's cell at 32 px)
_CENTRED_RADIUS = 0.25       # the main object's radius in the "centred" pose, fraction of the side


def make_scenes(n: int, image_size: int = 64, seed: int = 0, max_objects: int = 3,
                pose: str = "random") -> Scenes:
    """Render ``n`` random scenes.

    Parameters
    ----------
    n : int
        Number of images.
    image_size : int
        Side in pixels (8 to 256).
    seed : int
        Random seed; same seed, same arrays (and the first ``m`` scenes of a larger
        call equal a call with ``n = m``).
    max_objects : int
        Objects per image are drawn uniformly from 1 to this (1 to 3).
    pose : {"random", "upright", "centred", "placed", "sized", "gridded", "one_size"}
        ``"random"`` (the default world): every object at a random place, size and rotation.
        ``"upright"``: the same places and sizes, every rotation 0 (arrows point right).
        ``"centred"``: one upright object of radius 0.25 image sides at the centre, an
        MNIST-like world for diagnosing generators (needs ``max_objects=1``).
        ``"placed"``: one upright object of radius 0.25 at a random place; ``"sized"``: one
        upright object at the centre at a random size (the two halves of the difference
        between ``"upright"`` and ``"centred"``; both need ``max_objects=1``). ``"gridded"``:
        ``"placed"`` with the centre rounded to a multiple of 1/8 side (one cell of the shipped
        8×8 latent at 32 px; 3×3 places), so every object has the same offset from the latent
        grid. ``"one_size"``: the default world (any number of objects, random places and
        rotations) but every main object at radius 0.25, the others as drawn (smaller): the
        default world without its main object's size variety. All poses draw the same random
        stream, so colours, categories and backgrounds agree across poses.

    Returns
    -------
    Scenes
    """
    if not (isinstance(n, (int, np.integer)) and n >= 0):
        raise InvalidInputError(f"n must be a non-negative integer; got {n!r}.")
    if not 8 <= int(image_size) <= 256:
        raise InvalidInputError(f"image_size must lie in [8, 256]; got {image_size!r}.")
    if not 1 <= int(max_objects) <= 3:
        raise InvalidInputError(f"max_objects must lie in [1, 3]; got {max_objects!r}.")
    if pose not in POSES:
        raise InvalidInputError(f"pose must be one of {POSES}; got {pose!r}.")
    if pose in _ONE_OBJECT_POSES and int(max_objects) != 1:
        raise InvalidInputError(f"pose={pose!r} draws one object: pass max_objects=1 (got {max_objects!r}).")
    S, K = int(image_size), int(max_objects)
    palette = np.array(list(COLOURS.values()), np.float32) / 255.0
    col_names, cat_names = list(COLOURS), list(CATEGORIES)
    bg_pat_names, bg_col_names = list(BACKGROUND_PATTERNS), list(BACKGROUND_COLOURS)
    images = np.empty((n, S, S, 3), np.uint8)
    captions, objects, backgrounds = [], [], []
    main_cat = np.zeros(n, np.int64)
    main_col = np.zeros(n, np.int64)
    main_bbox = np.zeros((n, 4), np.float64)
    n_objects = np.zeros(n, np.int64)
    for b0 in range(0, n, BLOCK):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), b0 // BLOCK, K]))
        (n_obj, cats, cols, sizes, rots, centres, pattern, bg_col, bg_par,
         col_jit) = _sample_block(rng, BLOCK, K)
        if pose not in ("random", "one_size"):
            rots[:] = 0.0
        if pose in ("centred", "sized"):
            centres[:, 0] = 0.5
        if pose in ("centred", "placed", "gridded", "one_size"):
            # the random places were drawn for the random size: rescale them into the fixed radius's range
            lo = sizes[:, 0] * 1.05
            frac = (centres[:, 0] - lo[:, None]) / (1 - 2 * lo)[:, None]
            sizes[:, 0] = _CENTRED_RADIUS
            if pose in ("placed", "gridded", "one_size"):
                r = _CENTRED_RADIUS * 1.05
                centres[:, 0] = r + frac * (1 - 2 * r)
            if pose == "gridded":
                centres[:, 0] = np.clip(np.round(centres[:, 0] * _GRID), np.ceil(r * _GRID),
                                        np.floor((1 - r) * _GRID)) / _GRID
        m = min(BLOCK, n - b0)
        img = _backgrounds(rng, pattern, bg_col, bg_par, S)[:m]
        bboxes = np.zeros((m, K, 4))
        px_size, px_centre = sizes[:m] * S, centres[:m] * S
        for k in range(K):
            alpha = np.zeros((m, S, S), np.float32)
            present = n_obj[:m] > k
            for c in range(len(CATEGORIES)):
                sel = np.nonzero(present & (cats[:m, k] == c))[0]
                if sel.size:
                    alpha[sel] = _coverage(c, px_centre[sel, k, 0].astype(np.float32),
                                           px_centre[sel, k, 1].astype(np.float32),
                                           px_size[sel, k].astype(np.float32),
                                           rots[sel, k].astype(np.float32), S)
            colour = np.clip(palette[cols[:m, k]] * col_jit[:m, k, None], 0, 1)
            img = img * (1 - alpha[..., None]) + colour[:, None, None, :] * alpha[..., None]
            on = alpha > 0
            rows, cols_any = on.any(2), on.any(1)
            idx = np.arange(S)
            big = S + 1
            bboxes[:, k, 0] = np.where(cols_any, idx, big).min(1)
            bboxes[:, k, 1] = np.where(rows, idx, big).min(1)
            bboxes[:, k, 2] = np.where(cols_any, idx + 1, -1).max(1)
            bboxes[:, k, 3] = np.where(rows, idx + 1, -1).max(1)
        images[b0:b0 + m] = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
        for i in range(m):
            objs = [dict(category=cat_names[cats[i, k]], colour=col_names[cols[i, k]],
                         centre=(float(px_centre[i, k, 0]), float(px_centre[i, k, 1])),
                         size=float(px_size[i, k]), rotation=float(rots[i, k]),
                         bbox=tuple(float(v) for v in bboxes[i, k]))
                    for k in range(int(n_obj[i]))]
            bg = dict(pattern=bg_pat_names[pattern[i]], colour=bg_col_names[bg_col[i]])
            objects.append(objs)
            backgrounds.append(bg)
            captions.append(caption_for(objs, bg, S))
            main_cat[b0 + i], main_col[b0 + i] = cats[i, 0], cols[i, 0]
            main_bbox[b0 + i] = bboxes[i, 0]
            n_objects[b0 + i] = n_obj[i]
    return Scenes(images=images, captions=captions, objects=objects, backgrounds=backgrounds,
                  category=main_cat, colour=main_col, bbox=main_bbox, n_objects=n_objects,
                  seed=int(seed), meta=dict(image_size=S, max_objects=K, **({} if pose == "random" else {"pose": pose})))


# --------------------------------------------------------------------------- plotting
def plot_scenes(scenes: Scenes, n: int = 8, ncols: int = 4, width: int = 28, panel: float = 2.4):
    """Show the first ``n`` scenes with their captions (wrapped) as titles.

    Parameters
    ----------
    scenes : Scenes
    n : int
        Number of scenes shown.
    ncols : int
        Panels per row.
    width : int
        Characters per caption line.
    panel : float
        Panel side in inches.

    Returns
    -------
    matplotlib.figure.Figure
    """
    n = min(int(n), len(scenes))
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig = Figure(figsize=(panel * ncols, (panel + 0.9) * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        ax = axes.ravel()[i]
        ax.imshow(scenes.images[i], interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(scenes.captions[i], width)), fontsize=7)
    fig.tight_layout()
    return fig
