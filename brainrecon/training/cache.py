"""What a method's training reads, computed once per run: brain inputs, latents, text, image features.

The frozen parts of the backbone (VAE, text encoder, image encoder) and the flatmap projection
never change while a method trains, so :func:`cache_stage_data` runs them once over a
:class:`~brainrecon.data.pairs.BrainImageDataset` (toy world or NSD, one code path) and keeps
plain tensors: a training step then only indexes them. The brain input is either the flatmap
(``representation="flatmap"``, NeuroPictor) or each subject's own voxel vector
(``representation="voxels"``: NeuralDiffuser, MindDiffuser, CAD; vectors differ in length between
subjects, so they are kept per subject). Text features are stored once per distinct caption
(``text_table`` + ``text_index``), which keeps the cache small when captions repeat.

Memory: ``N·(H·W + c·h·w)`` numbers plus ``U·L_T·d_T`` for ``U`` distinct captions (the toy
default: 4,800 rows × (64² + 16·8²) floats ≈ 100 MB), plus ``N·tokens·width`` per cached
image-encoder layer. For NSD at full size pass ``dtype=torch.float16``.

This module also resolves the runs' shared inputs: the world (toy preset or NSD root), the
backbone, subject names (:func:`check_subjects`) and previous-stage folders
(:func:`require_files`), with errors that name what is known or expected.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..backbones.hub import load_backbone
from ..data.nsd import load_nsd
from ..data.pairs import make_nsd_dataset, make_toy_dataset
from ..data.surface import FlatmapProjector
from ..data.toyworld import ToyWorldConfig, make_toyworld
from ..errors import CheckpointError, DataNotFoundError, InvalidInputError

__all__ = ["StageData", "cache_stage_data", "check_subjects", "require_files", "load_stage_world",
           "make_stage_dataset", "resolve_backbone", "sample_indices"]


@dataclass(eq=False)
class StageData:
    """Cached training tensors of one split (see :func:`cache_stage_data`).

    Attributes
    ----------
    maps : Tensor ``(N, 1, H, W)`` or None
        Flatmaps (the calibrated encoder's input ``S``); None for a voxel dataset.
    pixel_mask : Tensor ``(H, W)`` bool or None
        Cortex pixels (the projector's ``pixel_mask``; stage i's loss is restricted to them).
    subjects : Tensor ``(N,)`` long
        Position of each row's subject in ``subject_ids``.
    subject_ids : list of str
    image_keys : Tensor ``(N,)`` long
    captions : list of str
    latents : Tensor ``(N, c, h, w)`` or None
        ``Backbone.encode_latents`` of the images resized to the backbone's ``image_size``.
    text_table : Tensor ``(U, L_T, d_T)`` or None
        ``Backbone.encode_text`` of each distinct caption.
    text_index : Tensor ``(N,)`` long or None
        Row of ``text_table`` of each row's caption.
    empty_text : Tensor ``(1, L_T, d_T)`` or None
        The empty caption's features (classifier-free guidance's unconditional context).
    voxels : dict or None
        For a voxel dataset: subject name -> ``(N_s, V_s)`` voxel vectors, in row order (the rows
        of subject ``s`` are :meth:`rows` ``(s)``).
    features : dict or None
        Image-encoder layer -> ``(N, tokens, width)`` hidden states of the images
        (``Backbone.encode_image_features``; NeuralDiffuser's guidance targets).
    """

    maps: torch.Tensor
    pixel_mask: torch.Tensor
    subjects: torch.Tensor
    subject_ids: list
    image_keys: torch.Tensor
    captions: list
    latents: torch.Tensor | None = None
    text_table: torch.Tensor | None = None
    text_index: torch.Tensor | None = None
    empty_text: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)
    voxels: dict | None = None
    features: dict | None = None

    def __len__(self) -> int:
        return len(self.subjects)

    def rows(self, subject: str) -> torch.Tensor:
        """Row indices of one subject's scans, in order (``voxels[subject][i]`` is row ``rows(subject)[i]``)."""
        if subject not in self.subject_ids:
            raise InvalidInputError(f"unknown subject {subject!r}; this cache has {self.subject_ids}.")
        return torch.nonzero(self.subjects == self.subject_ids.index(subject)).flatten()

    def text(self, idx) -> torch.Tensor:
        """Caption features of rows ``idx``, ``(len(idx), L_T, d_T)``."""
        return self.text_table[self.text_index[idx]]

    def batch(self, idx) -> dict:
        """Rows ``idx`` as a dict of tensors (``maps`` and, when cached, ``latents``, ``text``)."""
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        if self.maps is None:
            raise InvalidInputError("batch() serves flatmap caches; a voxel cache is indexed per subject "
                                    "(voxels[subject], rows(subject)).")
        out = {"maps": self.maps[idx].float()}
        if self.latents is not None:
            out["latents"] = self.latents[idx].float()
        if self.text_table is not None:
            out["text"] = self.text(idx).float()
        return out

    def subset(self, idx) -> "StageData":
        """A new :class:`StageData` with rows ``idx`` (tables shared)."""
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        pick = (lambda t: None if t is None else t[idx])
        voxels = None
        if self.voxels is not None:                     # each subject keeps its own rows among idx, in order
            pos = {int(r): i for s in self.subject_ids for i, r in enumerate(self.rows(s))}
            voxels = {s: self.voxels[s][[pos[int(r)] for r in idx if self.subject_ids[int(self.subjects[r])] == s]]
                      for s in self.subject_ids}
        return StageData(pick(self.maps), self.pixel_mask, self.subjects[idx], list(self.subject_ids),
                         self.image_keys[idx], [self.captions[i] for i in idx.tolist()], pick(self.latents),
                         self.text_table, pick(self.text_index), self.empty_text, dict(self.meta), voxels,
                         None if self.features is None else {k: f[idx] for k, f in self.features.items()})


def sample_indices(n: int, batch_size: int, seed: int, tag: int, step: int, rank: int = 0) -> np.ndarray:
    """Batch ``step`` of a deterministic sampler with replacement (exact resumption in :func:`fit`)."""
    return np.random.default_rng([int(seed), int(tag), int(step), int(rank)]).integers(0, n, batch_size)


@torch.no_grad()
def cache_stage_data(dataset, backbone=None, batch_size: int = 128, dtype=torch.float32,
                     progress: bool = True, desc: str = "cache", feature_layers=()) -> StageData:
    """Read every row's brain input and run the frozen backbone parts once.

    Parameters
    ----------
    dataset : BrainImageDataset
        ``representation="flatmap"`` (rows projected to flatmaps, NeuroPictor) or ``"voxels"``
        (each subject's voxel vectors kept as they are); toy world or
        :func:`~brainrecon.data.pairs.make_nsd_dataset`.
    backbone : Backbone, optional
        Without it only the brain inputs are cached (NeuroPictor's stage i); with it also VAE
        latents of the images resized to ``backbone.image_size`` and the captions' text features.
    batch_size : int
        Images per VAE / text-encoder / image-encoder call.
    dtype : torch.dtype
        Storage type of the cached tensors (``torch.float16`` halves NSD-scale memory).
    progress : bool
        tqdm bar over the rows.
    desc : str
        Label of the bar.
    feature_layers : tuple of int
        Image-encoder layers to cache as well (``Backbone.encode_image_features``; needs a
        backbone with an image encoder).
    """
    rep = getattr(dataset, "representation", None)
    if rep not in ("flatmap", "voxels"):
        raise InvalidInputError(f"cache_stage_data reads a BrainImageDataset (representation 'flatmap' or "
                                f"'voxels'); got {type(dataset).__name__} with representation={rep!r}.")
    if len(dataset) == 0:
        raise InvalidInputError(f"{dataset!r} has no rows to train on.")
    if feature_layers and (backbone is None or getattr(backbone, "image_encoder", None) is None):
        raise InvalidInputError(f"feature_layers={tuple(feature_layers)} need a backbone with an image encoder "
                                "(an image_encoder/ folder); pass one or set feature_layers=().")
    subjects, keys, captions = [], [], []
    for s, rec in enumerate(dataset.records):
        subjects.append(torch.full((len(rec),), s, dtype=torch.long))
        keys.append(torch.as_tensor(rec.image_keys, dtype=torch.long))
        captions += [c[0] if c else "" for c in rec.captions]
    if rep == "flatmap":                                  # one sparse product per subject
        proj = dataset.projector
        maps = torch.cat([torch.as_tensor(proj.transform(rec.responses, vertices=rec.vertices)).to(dtype)
                          for rec in dataset.records])
        data = StageData(maps, torch.from_numpy(np.array(proj.pixel_mask, dtype=bool)), torch.cat(subjects),
                         list(dataset.subjects), torch.cat(keys), captions,
                         meta={"resolution": list(proj.resolution), "crop": proj.crop, "mask": proj.mask})
    else:
        voxels = {rec.subject: torch.as_tensor(np.asarray(rec.responses, dtype=np.float32)).to(dtype)
                  for rec in dataset.records}
        data = StageData(None, None, torch.cat(subjects), list(dataset.subjects), torch.cat(keys), captions,
                         meta={"representation": "voxels", "voxels": {k: int(v.shape[1]) for k, v in voxels.items()}},
                         voxels=voxels)
    if backbone is None:
        return data
    device = backbone.device
    latents, feats = [], {int(k): [] for k in feature_layers}
    bar = tqdm(total=len(dataset), desc=f"{desc}: VAE latents", disable=not progress, leave=False)
    for i in range(0, len(dataset), batch_size):
        idx = range(i, min(i + batch_size, len(dataset)))
        images = backbone.resize(torch.stack([dataset[j]["image"] for j in idx])).to(device)
        latents.append(backbone.encode_latents(images).to("cpu", dtype))
        if feats:
            f = backbone.encode_image_features(images, layers=tuple(feats))
            for k in feats:
                feats[k].append(f[k].to("cpu", dtype))
        bar.update(len(idx))
    bar.close()
    data.latents = torch.cat(latents)
    if feats:
        data.features = {k: torch.cat(v) for k, v in feats.items()}
    uniq, inverse = np.unique(np.asarray(captions, dtype=object).astype(str), return_inverse=True)
    table = [backbone.encode_text(list(uniq[i:i + batch_size])).to("cpu", dtype)
             for i in range(0, len(uniq), batch_size)]
    data.text_table = torch.cat(table)
    data.text_index = torch.as_tensor(inverse.reshape(-1), dtype=torch.long)
    data.empty_text = backbone.encode_text([""]).to("cpu", torch.float32)
    return data


# ----------------------------------------------------------------------------- inputs
def check_subjects(requested, known, what: str = "subject") -> list:
    """``requested`` (a name, a list, or None = all) checked against ``known``; unknown names listed."""
    known = list(known)
    if requested is None:
        return known
    req = [requested] if isinstance(requested, str) else list(requested)
    bad = [s for s in req if s not in known]
    if bad:
        raise InvalidInputError(f"unknown {what}(s) {bad}; this world has {len(known)}: {known}.")
    return req


def require_files(directory, files, stage: str, made_by: str) -> Path:
    """Check that a previous stage's folder holds ``files``; name every missing one otherwise."""
    d = Path(directory)
    missing = [d / f for f in files if not (d / f).is_file()]
    if missing:
        raise DataNotFoundError(
            f"the {stage} folder {d}", missing,
            hint=f"Expected {', '.join(files)} in it, as written by {made_by}(...). "
                 f"Run {made_by} first (or point to its output folder).")
    return d


def load_stage_world(world: str = "toy", toy_preset: str = "default", seed: int = 0, subjects=None,
                     nsd_sessions=None, toy_n_test: int | None = None):
    """The data source of a run: a toy world (``world="toy"``) or NSD subjects from a root folder.

    ``toy_n_test`` overrides the toy preset's number of shared test images (e.g. 300 for the
    field's 300-way retrieval). Returns ``("toy", ToyWorld)`` or ``("nsd", list of NSDSubjectData)``
    (fsaverage surface betas).
    """
    if world == "toy":
        if toy_preset not in ("default", "smoke"):
            raise InvalidInputError(f"toy_preset must be 'default' or 'smoke'; got {toy_preset!r}.")
        extra = {} if toy_n_test is None else {"n_test": int(toy_n_test)}
        cfg = ToyWorldConfig.smoke(seed=seed, **extra) if toy_preset == "smoke" else ToyWorldConfig(seed=seed, **extra)
        return "toy", make_toyworld(cfg, progress=False)
    subs = list(subjects) if subjects else [f"subj{i:02d}" for i in range(1, 9)]
    return "nsd", [load_nsd(world, s, space="fsaverage", n_sessions=nsd_sessions) for s in subs]


def make_stage_dataset(source, subjects, split: str, resolution: int, crop, repeats: str = "average",
                       representation: str = "flatmap"):
    """A flatmap (or voxel) :class:`~brainrecon.data.pairs.BrainImageDataset` of ``subjects`` from a stage world.

    Parameters
    ----------
    source : ToyWorld, or list of NSDSubjectData
    subjects : list of str
        Already checked with :func:`check_subjects`.
    split : {"train", "test"}
    resolution, crop
        :class:`~brainrecon.data.surface.FlatmapProjector` settings.
    repeats : {"average", "each"}
        Toy world only: repeat averages or single trials (NSD rows are as ``load_nsd`` made them).
    representation : {"flatmap", "voxels"}
        ``"voxels"``: each subject's own response vectors (``resolution`` and ``crop`` unused).
    """
    proj = FlatmapProjector(resolution, crop=crop) if representation == "flatmap" else None
    if isinstance(source, (list, tuple)):
        chosen = [d for d in source if f"subj{d.subject:02d}" in subjects]
        return make_nsd_dataset(chosen, split=split, representation=representation, projector=proj)
    return make_toy_dataset(source, subjects=subjects, split=split, representation=representation, projector=proj,
                            repeats=repeats)


def known_subjects(source) -> list:
    """Subject ids of a stage world."""
    if isinstance(source, (list, tuple)):
        return [f"subj{d.subject:02d}" for d in source]
    return list(source.subject_ids)


def resolve_backbone(backbone):
    """A :class:`~brainrecon.backbones.hub.Backbone` from ``"toy"``, a folder, or a Backbone (kept)."""
    if hasattr(backbone, "unet"):
        return backbone
    return load_backbone(backbone)


def check_map_size(encoder_size, resolution, where: str) -> None:
    """Refuse flatmaps whose size differs from the calibrated encoder's ``image_size``."""
    enc = tuple(encoder_size) if isinstance(encoder_size, (list, tuple)) else (encoder_size, encoder_size)
    res = tuple(resolution) if isinstance(resolution, (list, tuple)) else (resolution, resolution)
    if tuple(map(int, enc)) != tuple(map(int, res)):
        raise InvalidInputError(
            f"{where}: flatmaps are {res[0]}×{res[1]} but the calibrated encoder was built for "
            f"{enc[0]}×{enc[1]} maps; use resolution={enc[0]} (or None to inherit it) or retrain stage i.")


def load_part(loader, directory, what: str):
    """Load a diffusers part (safetensors only), turning unreadable files into a :class:`CheckpointError`."""
    try:
        return loader(directory, use_safetensors=True)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        files = sorted(p.name for p in Path(directory).glob("*")) if Path(directory).is_dir() else []
        raise CheckpointError(f"{what} in {directory} could not be loaded ({type(err).__name__}: {err}); "
                              f"found {files}. Expected config.json and a .safetensors weights file: "
                              "rerun the stage that wrote it.") from err
