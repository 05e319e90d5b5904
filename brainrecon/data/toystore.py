"""Saving and loading toy worlds: safetensors + JSON in one folder, never pickle.

Import these from :mod:`brainrecon.data.toyworld`.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from ..errors import CheckpointError, DataNotFoundError, InvalidInputError
from ..io import atomic_dir
from .fsaverage import N_VERTICES_FSAVERAGE5
from .scenes import Scenes
from . import toybrain as tb

__all__ = ["save_toyworld", "load_toyworld"]

FORMAT = "brainrecon-toyworld"
VERSION = 1


_SUBJECT_ARRAYS = ("vertices", "area", "responses", "trial_image", "train_images",
                   "test_images", "vertex_noise_sd")


def save_toyworld(world, path) -> Path:
    """Write a toy world to the folder ``path`` atomically (safetensors + JSON, no pickle).

    Layout: ``toyworld.json`` (format, config, subjects), ``scenes.safetensors`` and
    ``scenes.json`` (captions, objects, backgrounds), ``encoding_model.safetensors``,
    ``subjects/<id>.safetensors`` (responses, trials, vertices and the subject's model).
    """
    path = Path(path)
    with atomic_dir(path) as tmp:
        sc = world.scenes
        save_file({"images": np.ascontiguousarray(sc.images), "category": sc.category,
                   "colour": sc.colour, "bbox": sc.bbox, "n_objects": sc.n_objects},
                  str(tmp / "scenes.safetensors"))
        (tmp / "scenes.json").write_text(json.dumps(
            dict(captions=sc.captions, objects=sc.objects, backgrounds=sc.backgrounds,
                 seed=sc.seed, meta=sc.meta)))
        save_file(world.encoding_model.to_arrays(), str(tmp / "encoding_model.safetensors"))
        (tmp / "subjects").mkdir()
        subjects = {}
        for sid, s in world.subjects.items():
            arrays = {k: np.ascontiguousarray(getattr(s, k)) for k in _SUBJECT_ARRAYS}
            arrays.update({f"model.{k}": v for k, v in s.model.to_arrays().items()})
            save_file(arrays, str(tmp / "subjects" / f"{sid}.safetensors"))
            subjects[sid] = dict(gain=s.gain, noise_sd=s.noise_sd, n_vox=s.n_vox,
                                 n_trials=int(len(s.trial_image)))
        (tmp / "toyworld.json").write_text(json.dumps(
            dict(format=FORMAT, version=VERSION, config=asdict(world.config), subjects=subjects,
                 test_images=world.test_images.tolist()), indent=2))
    return path


def _read(file: Path) -> dict:
    try:
        return load_file(str(file))
    except Exception as e:                       # truncated, not safetensors, ...
        raise CheckpointError(f"{file} is not a readable safetensors file ({e}). The toy world "
                              "folder is corrupt: rebuild it with make_toyworld(...).save(path).") from e


def _json(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{file} is not valid JSON ({e}); the toy world folder is corrupt.") from e


def load_toyworld(path):
    """Read a toy world written by :func:`save_toyworld` (validated; never pickled).

    Raises
    ------
    DataNotFoundError
        If the folder or one of its files is missing (every path is listed).
    CheckpointError
        If a file is corrupt or its arrays do not match the rest of the folder.
    """
    from .toyworld import ToySubject, ToyWorld, ToyWorldConfig

    path = Path(path)
    meta_file = path / "toyworld.json"
    if not meta_file.exists():
        raise DataNotFoundError(f"A saved toy world at {path}", searched=[path, meta_file],
                                data_card="toyworld.md")
    meta = _json(meta_file)
    if meta.get("format") != FORMAT or "config" not in meta or "subjects" not in meta:
        raise CheckpointError(f"{meta_file} is not a brainrecon toy world description "
                              f"(format {meta.get('format')!r}, expected {FORMAT!r}).")
    files = [path / "scenes.safetensors", path / "scenes.json", path / "encoding_model.safetensors"]
    files += [path / "subjects" / f"{sid}.safetensors" for sid in meta["subjects"]]
    missing = [f for f in files if not f.exists()]
    if missing:
        raise DataNotFoundError(f"Part of the saved toy world at {path}", searched=missing,
                                data_card="toyworld.md")
    try:
        cfg = ToyWorldConfig(**meta["config"])
    except TypeError as e:
        raise CheckpointError(f"{meta_file}: config does not match ToyWorldConfig ({e}).") from e
    sa, sj = _read(files[0]), _json(files[1])
    n = len(sa.get("images", ()))
    if n != cfg.n_images or len(sj.get("captions", ())) != n:
        raise CheckpointError(f"{files[0]} / {files[1]} hold {n} images and "
                              f"{len(sj.get('captions', ()))} captions; the config needs {cfg.n_images}.")
    objects = [[{**o, "centre": tuple(o["centre"]), "bbox": tuple(o["bbox"])} for o in objs]
               for objs in sj["objects"]]
    scenes = Scenes(images=sa["images"], captions=sj["captions"], objects=objects,
                    backgrounds=sj["backgrounds"], category=sa["category"], colour=sa["colour"],
                    bbox=sa["bbox"], n_objects=sa["n_objects"], seed=sj["seed"], meta=sj["meta"])
    group = _model(_read(files[2]), files[2])
    subjects = {}
    for sid, info in meta["subjects"].items():
        f = path / "subjects" / f"{sid}.safetensors"
        a = _read(f)
        if any(k not in a for k in _SUBJECT_ARRAYS):
            raise CheckpointError(f"{f} lacks arrays {[k for k in _SUBJECT_ARRAYS if k not in a]}.")
        model = _model({k[6:]: v for k, v in a.items() if k.startswith("model.")}, f)
        V = len(a["vertices"])
        if (a["responses"].shape != (len(a["trial_image"]), V) or model.n_vertices != V
                or len(a["area"]) != V or V != info["n_vox"]
                or (len(a["trial_image"]) and a["trial_image"].max() >= n)
                or (V and a["vertices"].max() >= N_VERTICES_FSAVERAGE5 * 2)):
            raise CheckpointError(
                f"{f}: responses {a['responses'].shape}, {len(a['trial_image'])} trials, {V} vertices, "
                f"model of {model.n_vertices} vertices and {info['n_vox']} voxels in {meta_file} "
                "do not match.")
        subjects[sid] = ToySubject(id=sid, model=model, gain=float(info["gain"]),
                                   noise_sd=float(info["noise_sd"]), **{k: a[k] for k in _SUBJECT_ARRAYS})
    return ToyWorld(config=cfg, scenes=scenes, subjects=subjects, encoding_model=group,
                    test_images=np.asarray(meta["test_images"], np.int64))


def _model(arrays: dict, file: Path) -> tb.ToyEncodingModel:
    try:
        return tb.ToyEncodingModel.from_arrays(arrays)
    except (InvalidInputError, ValueError) as e:
        raise CheckpointError(f"{file}: not a toy encoding model ({e}).") from e
