"""The results folder every reconstruction stage writes and ``brainrecon evaluate DIR`` reads.

Layout (``format = "brainrecon-results"``, ``version = 1``)::

    DIR/
      meta.json               format, version, world ("toy" | "nsd"), method, subject,
                              image_ids (scene / NSD 73k ids of the targets, in row order),
                              toyworld (toy only: {"config": ToyWorldConfig fields} or {"path": saved world}),
                              anything else the writer adds under "extra"
      reconstructions.npy     (N, H, W, 3) uint8 — one reconstruction per target
      targets.npy             (N, H', W', 3) uint8 — the seen images, same order
      brain_embeddings.npy    optional (N, ...) float — brain-predicted embeddings (retrieval)
      image_embeddings.npy    optional (N, ...) float — the targets' embeddings in that space
      measured.npy            optional (N, V) float — measured responses to the targets
      regions.npz             optional {region: bool (V,)} masks for brain correlation
      attributes.npz          optional category (N,), colour (N,), bbox (N, 4) px — toy ground truth

Write it with :func:`save_results` (atomic: the folder appears complete or not at all);
read it with :func:`load_results`. A folder that holds a results folder named ``results/`` (what
``brainrecon demo --out DIR`` writes) is read through it (:func:`find_results_dir`).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from ..data.toyworld import ToyWorldConfig, make_toyworld
from ..errors import CheckpointError, DataNotFoundError, InvalidInputError
from ..io import atomic_dir
from .lowlevel import as_uint8

__all__ = ["Results", "save_results", "load_results", "find_results_dir", "make_degraded_results", "RESULTS_FORMAT"]

RESULTS_FORMAT = "brainrecon-results"
_OPTIONAL = ("brain_embeddings", "image_embeddings", "measured")


@dataclass
class Results:
    """A loaded results folder (see the module docstring for the files)."""

    reconstructions: np.ndarray
    targets: np.ndarray
    meta: dict
    brain_embeddings: np.ndarray | None = None
    image_embeddings: np.ndarray | None = None
    measured: np.ndarray | None = None
    regions: dict | None = None
    attributes: dict | None = None
    path: Path | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.targets)


def save_results(directory, reconstructions, targets, *, method: str | None = None, world: str = "toy",
                 subject: str | None = None, image_ids=None, toyworld=None, brain_embeddings=None,
                 image_embeddings=None, measured=None, regions: dict | None = None, attributes: dict | None = None,
                 extra: dict | None = None) -> Path:
    """Write a results folder atomically and return its path.

    Parameters
    ----------
    directory : path-like
    reconstructions, targets : array-like
        Paired images (uint8 NHWC, or anything :func:`brainrecon.metrics.as_tensor` takes).
    method, world, subject : str
    image_ids : sequence of int, optional
        Scene / NSD ids of the targets (needed for toy brain correlation).
    toyworld : ToyWorld or ToyWorldConfig or dict or path-like, optional
        How to rebuild the toy world for brain correlation (its config is stored, or a path
        to a saved world).
    brain_embeddings, image_embeddings, measured : array, optional
    regions : dict, optional
        ``{name: bool mask over voxels}`` for ``measured``.
    attributes : dict, optional
        ``category``, ``colour``, ``bbox`` arrays (toy ground truth of the targets).
    extra : dict, optional
        JSON-able additions to ``meta.json``.
    """
    rec, tgt = as_uint8(reconstructions, "reconstructions"), as_uint8(targets, "targets")
    if len(rec) != len(tgt):
        raise InvalidInputError(f"{len(rec)} reconstructions but {len(tgt)} targets; they must pair up.")
    meta = {"format": RESULTS_FORMAT, "version": 1, "world": world, "method": method, "subject": subject,
            "n": int(len(tgt)), "image_ids": None if image_ids is None else [int(i) for i in image_ids],
            "toyworld": _toyworld_meta(toyworld), "extra": extra or {}}
    with atomic_dir(directory) as tmp:
        np.save(tmp / "reconstructions.npy", rec)
        np.save(tmp / "targets.npy", tgt)
        for name, arr in zip(_OPTIONAL, (brain_embeddings, image_embeddings, measured)):
            if arr is not None:
                arr = np.asarray(arr.detach().cpu() if hasattr(arr, "detach") else arr, dtype=np.float32)
                if len(arr) != len(tgt):
                    raise InvalidInputError(f"{name} has {len(arr)} rows but there are {len(tgt)} targets.")
                np.save(tmp / f"{name}.npy", arr)
        if regions:
            np.savez(tmp / "regions.npz", **{k: np.asarray(v, bool) for k, v in regions.items()})
        if attributes:
            np.savez(tmp / "attributes.npz", **{k: np.asarray(attributes[k]) for k in ("category", "colour", "bbox")})
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return Path(directory)


def _toyworld_meta(toyworld):
    if toyworld is None:
        return None
    if isinstance(toyworld, dict):
        return toyworld
    if isinstance(toyworld, (str, Path)):
        return {"path": str(Path(toyworld).resolve())}
    cfg = getattr(toyworld, "config", toyworld)
    return {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}}


_NEED = ("meta.json", "reconstructions.npy", "targets.npy")


def find_results_dir(directory) -> Path:
    """The results folder ``directory`` names: itself, or its ``results/`` sub-folder (a demo's output).

    Raises
    ------
    DataNotFoundError
        Neither holds ``meta.json``, ``reconstructions.npy`` and ``targets.npy``; every path
        tried is listed.
    """
    d = Path(directory).expanduser()
    for cand in (d, d / "results"):
        if all((cand / n).is_file() for n in _NEED):
            return cand
    tried = [d / n for n in _NEED] + ([d / "results"] if d.is_dir() else [])
    hint = ("Pass the folder that holds those files; for `brainrecon demo --out DIR` that is DIR/results, "
            "written when the demo finishes. " if d.is_dir() else "")
    raise DataNotFoundError(f"a brainrecon results folder at {d}", tried, data_card="metrics.md",
                            hint=hint + "Write one with brainrecon.metrics.save_results(dir, reconstructions, "
                                        "targets).")


def load_results(directory) -> Results:
    """Read a results folder written by :func:`save_results` (checks shapes and the format tag).

    ``directory`` may also be a folder holding one as ``results/`` (see :func:`find_results_dir`).
    """
    d = find_results_dir(directory)
    try:
        meta = json.loads((d / "meta.json").read_text())
        rec = np.load(d / "reconstructions.npy", allow_pickle=False)
        tgt = np.load(d / "targets.npy", allow_pickle=False)
        opt = {n: np.load(d / f"{n}.npy", allow_pickle=False) if (d / f"{n}.npy").exists() else None
               for n in _OPTIONAL}
        regions = dict(np.load(d / "regions.npz", allow_pickle=False)) if (d / "regions.npz").exists() else None
        attrs = dict(np.load(d / "attributes.npz", allow_pickle=False)) if (d / "attributes.npz").exists() else None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"the results folder {d} is unreadable: {e}") from e
    if meta.get("format") != RESULTS_FORMAT:
        raise CheckpointError(f"{d / 'meta.json'} is not a brainrecon results file (format={meta.get('format')!r}).")
    if len(rec) != len(tgt):
        raise CheckpointError(f"{d} holds {len(rec)} reconstructions but {len(tgt)} targets.")
    return Results(rec, tgt, meta, regions=regions, attributes=attrs, path=d, **opt)


def make_degraded_results(directory, world=None, subject: str = "subj01", n: int | None = None, blur: float = 1.5,
                          noise: float = 0.08, shuffle: float = 0.25, seed: int = 0, method: str = "degraded") -> Path:
    """A results folder of toy test images made worse on purpose (no model needed).

    Each reconstruction is its target blurred (Gaussian, ``blur`` px), with Gaussian pixel
    noise (``noise``); a ``shuffle`` share of them is swapped with other test images, so
    the scores lie between perfect and chance. ``image_ids``, the toy world's config and
    the ground-truth attributes are stored, so every toy metric but retrieval can run
    (there are no brain embeddings).

    Parameters
    ----------
    directory : path-like
    world : ToyWorld, optional
        Default ``make_toyworld(ToyWorldConfig.smoke())``.
    subject : str
    n : int, optional
        Number of test images (default all).
    """
    if world is None:
        world = make_toyworld(ToyWorldConfig.smoke(), progress=False)
    ids = np.asarray(world.test_images)[: n or None]
    rng = np.random.default_rng(seed)
    tgt = world.scenes.images[ids]
    x = tgt.astype(np.float64) / 255
    if blur > 0:
        x = gaussian_filter(x, sigma=(0, blur, blur, 0))
    x = np.clip(x + noise * rng.standard_normal(x.shape), 0, 1)
    k = int(round(shuffle * len(ids)))
    if k >= 2:
        sel = rng.choice(len(ids), k, replace=False)
        x[sel] = x[np.roll(sel, 1)]
    sc = world.scenes
    attrs = {"category": sc.category[ids], "colour": sc.colour[ids], "bbox": sc.bbox[ids]}
    return save_results(directory, (x * 255).round().astype(np.uint8), tgt, method=method, world="toy",
                        subject=subject, image_ids=ids, toyworld=world, attributes=attrs,
                        extra={"blur": blur, "noise": noise, "shuffle": shuffle, "seed": seed})
