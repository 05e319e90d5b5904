"""Training pairs from either world: (flatmap or voxel vector, image, caption, subject).

Both worlds are first turned into :class:`BrainRecords` — one subject's response rows
with, for each row, the key of the image it answers, its split, how many trials it
averages and its captions — and one :class:`BrainImageDataset` serves them all:

* toy world: :func:`records_from_toyworld` (rows = single trials or repeat averages);
* NSD: :func:`records_from_nsd` (rows as :func:`~brainrecon.data.nsd.load_nsd` made them,
  with its ``average=`` and ``zscore=`` choices).

``representation="flatmap"`` projects each row onto the subject-agnostic 1×H×W cortical
flatmap (NeuroPictor §3.1: every subject in one input space), ``"voxels"`` keeps the
subject's native vector (MindDiffuser, NeuralDiffuser, CAD); voxel vectors differ in length
between subjects, so :class:`SubjectBatchSampler` makes single-subject batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..errors import InvalidInputError, check_choice, check_finite
from .nsd import load_nsd_images
from .surface import FlatmapProjector

__all__ = [
    "BrainRecords",
    "BrainImageDataset",
    "SubjectBatchSampler",
    "records_from_toyworld",
    "records_from_nsd",
    "make_toy_dataset",
    "make_nsd_dataset",
]


@dataclass(frozen=True, eq=False)
class BrainRecords:
    """One subject's response rows, world-independent.

    Attributes
    ----------
    subject : str
        Subject id (``"subj01"``...).
    responses : ndarray (n_rows, n_features) float32
    image_keys : ndarray (n_rows,) int
        Key of each row's image in the world's image source (scene index or NSD 73k id).
    split : ndarray (n_rows,) of str
        ``"train"`` or ``"test"``.
    n_repeats : ndarray (n_rows,) int
        Trials averaged into each row (1 for single trials).
    captions : list of list of str
        Captions of each row's image (NSD has up to five; the toy world one).
    vertices : ndarray or None
        fsaverage5 vertex indices of the features (None for volumes: no flatmap then).
    """

    subject: str
    responses: np.ndarray
    image_keys: np.ndarray
    split: np.ndarray
    n_repeats: np.ndarray
    captions: list
    vertices: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.responses)
        for name in ("image_keys", "split", "n_repeats", "captions"):
            if len(getattr(self, name)) != n:
                raise InvalidInputError(
                    f"BrainRecords of {self.subject}: {name} has {len(getattr(self, name))} rows "
                    f"but responses has {n}; every per-row array must have one entry per row.")
        if self.vertices is not None and len(self.vertices) != self.responses.shape[1]:
            raise InvalidInputError(
                f"BrainRecords of {self.subject}: {len(self.vertices)} vertices but "
                f"{self.responses.shape[1]} response columns; they must match.")
        check_finite(self.responses, f"responses of {self.subject}")

    def __len__(self) -> int:
        return len(self.responses)

    def select(self, split: str) -> "BrainRecords":
        """Only the rows of ``split`` (``"train"``, ``"test"`` or ``"all"``)."""
        check_choice("split", split, ("train", "test", "all"))
        if split == "all":
            return self
        keep = np.flatnonzero(self.split == split)
        return BrainRecords(self.subject, self.responses[keep], self.image_keys[keep],
                            self.split[keep], self.n_repeats[keep],
                            [self.captions[i] for i in keep], self.vertices)


def records_from_toyworld(world, subject: str, repeats: str = "average") -> BrainRecords:
    """A toy-world subject as :class:`BrainRecords`.

    Parameters
    ----------
    world : ToyWorld
    subject : str
        One of ``world.subject_ids``.
    repeats : {"average", "each"}
        ``"average"``: one row per image, the mean of its repeats (NSD test-set protocol);
        ``"each"``: one row per trial.
    """
    check_choice("repeats", repeats, ("average", "each"))
    s = world.subject(subject)
    test = set(int(i) for i in s.test_images)
    if repeats == "average":
        responses, keys = world.average_repeats(s.id)
        n_rep = np.bincount(np.searchsorted(keys, s.trial_image), minlength=len(keys))
    else:
        responses, keys = s.responses, s.trial_image
        n_rep = np.ones(len(keys), np.int64)
    split = np.array(["test" if int(k) in test else "train" for k in keys])
    captions = [[world.scenes.captions[int(k)]] for k in keys]
    return BrainRecords(s.id, np.asarray(responses, np.float32), np.asarray(keys, np.int64), split,
                        n_rep.astype(np.int64), captions, np.asarray(s.vertices, np.int64))


def records_from_nsd(data) -> BrainRecords:
    """An :class:`~brainrecon.data.nsd.NSDSubjectData` as :class:`BrainRecords`.

    Rows keep ``load_nsd``'s averaging and z-scoring. Surface data (``space="fsaverage"``)
    carries its fsaverage5 vertices so it can be projected to flatmaps; volumes cannot.
    """
    captions = data.captions if data.captions is not None else [[] for _ in range(data.n_rows)]
    return BrainRecords(f"subj{data.subject:02d}", np.asarray(data.betas, np.float32),
                        np.asarray(data.image_ids, np.int64), np.asarray(data.split),
                        np.asarray(data.n_repeats, np.int64), list(captions),
                        None if data.vertices is None else np.asarray(data.vertices, np.int64))


class BrainImageDataset(Dataset):
    """Pairs of brain responses and the images that evoked them, from either world.

    Parameters
    ----------
    records : sequence of BrainRecords
        One per subject (the order fixes the integer ``subject`` label).
    load_images : callable
        ``keys (n,) -> uint8 (n, H, W, 3)``: the world's image source.
    split : {"train", "test", "all"}
    representation : {"flatmap", "voxels"}
    projector : FlatmapProjector, optional
        Needed for ``"flatmap"`` (one projector for all subjects).
    image_size : int, optional
        Resize images to this side (bilinear); default: as stored.

    Items are dicts: ``brain`` (float32 tensor, ``(1, H, W)`` or ``(n_features,)``),
    ``image`` (float32 ``(3, S, S)`` in [0, 1]), ``caption`` (str, the first caption or
    ``""``), ``subject`` (int), ``image_key`` (int), ``n_repeats`` (int).
    """

    def __init__(self, records: Sequence[BrainRecords], load_images: Callable, split: str = "train",
                 representation: str = "flatmap", projector=None, image_size: int | None = None):
        check_choice("representation", representation, ("flatmap", "voxels"))
        if not records:
            raise InvalidInputError("BrainImageDataset needs at least one subject's records.")
        if representation == "flatmap":
            if projector is None:
                raise InvalidInputError("representation='flatmap' needs a projector "
                                        "(brainrecon.data.surface.FlatmapProjector).")
            for r in records:
                if r.vertices is None:
                    raise InvalidInputError(
                        f"{r.subject} has volumetric features (no surface vertices), so it cannot "
                        "become a flatmap: load NSD with space='fsaverage', or use "
                        "representation='voxels'.")
        self.records = [r.select(split) for r in records]
        self.subjects = [r.subject for r in self.records]
        if len(set(self.subjects)) != len(self.subjects):
            raise InvalidInputError(f"duplicate subjects in records: {self.subjects}")
        self.split, self.representation, self.projector = split, representation, projector
        self.image_size = image_size
        self._load_images = load_images
        sizes = [len(r) for r in self.records]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.subject_of_item = np.repeat(np.arange(len(sizes)), sizes)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """``(subject position, row)`` of dataset item ``index``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index = index % len(self)
        s = int(self.subject_of_item[index])
        return s, int(index - self._offsets[s])

    def brain(self, index: int) -> torch.Tensor:
        """The brain input of one item (flatmap or voxel vector)."""
        s, row = self.locate(index)
        rec = self.records[s]
        x = rec.responses[row]
        if self.representation == "flatmap":
            x = self.projector.transform(x, vertices=rec.vertices)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def __getitem__(self, index: int) -> dict:
        s, row = self.locate(index)
        rec = self.records[s]
        key = int(rec.image_keys[row])
        image = torch.from_numpy(np.asarray(self._load_images(np.array([key]))[0])).permute(2, 0, 1)
        image = image.float() / 255.0
        if self.image_size is not None and image.shape[-1] != self.image_size:
            image = torch.nn.functional.interpolate(image[None], size=(self.image_size,) * 2,
                                                    mode="bilinear", align_corners=False,
                                                    antialias=True)[0].clamp(0, 1)
        caps = rec.captions[row]
        return {"brain": self.brain(index), "image": image, "caption": caps[0] if caps else "",
                "subject": s, "image_key": key, "n_repeats": int(rec.n_repeats[row])}

    def __repr__(self) -> str:
        per = ", ".join(f"{r.subject}: {len(r)}" for r in self.records)
        return (f"BrainImageDataset({len(self)} items, split={self.split!r}, "
                f"representation={self.representation!r}; {per})")


class SubjectBatchSampler(Sampler):
    """Batches that each hold items of one subject (voxel vectors differ in length).

    Parameters
    ----------
    dataset : BrainImageDataset
    batch_size : int
    shuffle : bool
        Shuffle items within subjects and the order of batches (seeded, per epoch).
    seed : int
    drop_last : bool
    """

    def __init__(self, dataset: BrainImageDataset, batch_size: int, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False):
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1; got {batch_size}.")
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng(self.seed + self.epoch)
        out = []
        for s in range(len(self.dataset.records)):
            idx = np.flatnonzero(self.dataset.subject_of_item == s)
            if self.shuffle:
                idx = rng.permutation(idx)
            for i in range(0, len(idx), self.batch_size):
                b = idx[i:i + self.batch_size]
                if len(b) == self.batch_size or not self.drop_last:
                    out.append(b.tolist())
        if self.shuffle:
            out = [out[i] for i in rng.permutation(len(out))]
        return out

    def __iter__(self):
        batches = self._batches()
        self.epoch += 1
        return iter(batches)

    def __len__(self) -> int:
        return len(self._batches())


def make_toy_dataset(world, subjects: Sequence[str] | None = None, split: str = "train",
                     representation: str = "flatmap", projector=None, resolution: int = 64,
                     repeats: str = "average", image_size: int | None = None) -> BrainImageDataset:
    """Training pairs from the toy world.

    Parameters
    ----------
    world : ToyWorld
    subjects : list of str, optional
        Default: every subject.
    split, representation, image_size
        As :class:`BrainImageDataset`.
    projector : FlatmapProjector, optional
        Default for flatmaps: ``FlatmapProjector(resolution)`` (whole cortex).
    resolution : int
        Flatmap side used when no projector is given.
    repeats : {"average", "each"}
        See :func:`records_from_toyworld`.
    """
    subjects = list(world.subject_ids) if subjects is None else list(subjects)
    records = [records_from_toyworld(world, s, repeats=repeats) for s in subjects]
    if representation == "flatmap" and projector is None:
        projector = FlatmapProjector(resolution)
    images = world.scenes.images
    return BrainImageDataset(records, lambda keys: images[keys], split=split,
                             representation=representation, projector=projector,
                             image_size=image_size)


def make_nsd_dataset(data, split: str = "train", representation: str = "flatmap", projector=None,
                     resolution: int = 64, image_size: int | None = None) -> BrainImageDataset:
    """Training pairs from NSD subjects loaded with :func:`~brainrecon.data.nsd.load_nsd`.

    Parameters
    ----------
    data : NSDSubjectData or list of them
        All from the same NSD root (images are read lazily from its ``nsd_stimuli.hdf5``).
    split, representation, projector, resolution, image_size
        As :func:`make_toy_dataset`.
    """
    data = list(data) if isinstance(data, (list, tuple)) else [data]
    roots = {str(d.root) for d in data}
    if len(roots) != 1:
        raise InvalidInputError(f"all subjects must come from one NSD root; got {sorted(roots)}.")
    if representation == "flatmap" and projector is None:
        projector = FlatmapProjector(resolution)
    root = data[0].root
    return BrainImageDataset([records_from_nsd(d) for d in data],
                             lambda keys: load_nsd_images(root, keys), split=split,
                             representation=representation, projector=projector,
                             image_size=image_size)
