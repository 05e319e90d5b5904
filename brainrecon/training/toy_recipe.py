"""The shipped toy NeuroPictor reconstructor, end to end (``brainrecon train neuropictor``).

:func:`train_toy_reconstructor` runs the paper's recipe in the toy world with one held-out
subject, and the two comparisons of NeuroPictor's Tab. 2 / §4.3 that the toy world can answer:

====  ==============================  =====================================================
run   folder (under ``out``)          what
====  ==============================  =====================================================
i     ``i_encoder``                   calibrated encoding on every subject but the held-out one
ii    ``ii_multisubject``             multi-subject pre-training, same subjects
iii   ``iii_<subject>``               refining ``subject`` from ii  → **the shipped model**
s     ``iii_<subject>_scratch``       same subject and steps, from scratch (encoder from i)
h     ``iii_<heldout>_<p>pct``        the held-out subject refined from ii on ``p`` % of its data
hs    ``iii_<heldout>_<p>pct_scratch`` the same from scratch
====  ==============================  =====================================================

Each run is a stage folder (:mod:`brainrecon.training.neuropictor`); a finished one (``run.json``
present) is skipped and an interrupted one resumes from its checkpoints, so rerunning the same
call after a kill continues. ``recipe.json`` collects wall times, losses and held-out figures.
``ship_to`` copies the refined reconstructor (``model/`` + ``backbone.json`` and the records,
no backbone copy, no checkpoints) into a folder such as ``brainrecon/weights/neuropictor_toy``.
"""
from __future__ import annotations

import json
import numbers
import shutil
import time
from pathlib import Path

import torch

from ..backbones.hub import load_backbone
from ..data.toyworld import ToyWorldConfig, make_toyworld
from ..errors import InvalidInputError, check_choice, check_range
from ..io import atomic_dir, check_output_dir, write_json
from ..models.index import write_index
from ..models.neuropictor import NeuroPictorModel
from .neuropictor import (EncoderPretrainConfig, MultisubjectConfig, RefineConfig, pretrain_encoder,
                     pretrain_multisubject, refine_subject)

__all__ = ["train_toy_reconstructor", "ship_reconstructor", "SHIP_FILES", "MAX_SHIP_BYTES"]

#: Files copied next to ``conditioner/`` when shipping.
SHIP_FILES = ("backbone.json", "config.json", "metrics.json", "run.json")
#: Size limit of a shipped reconstructor.
MAX_SHIP_BYTES = 10 * 1024 * 1024


def ship_reconstructor(run_dir, dest) -> Path:
    """Copy a stage-iii folder's loadable parts to ``dest`` in the shipped layout.

    The stage's ``model/`` becomes ``conditioner/`` beside a ``model_index.json`` naming its class
    (:mod:`brainrecon.models.index`); ``backbone.json`` and the run's records come along.
    """
    run_dir, dest = Path(run_dir), Path(dest)
    with atomic_dir(dest) as d:
        shutil.copytree(run_dir / "model", d / "conditioner")
        write_index(d, NeuroPictorModel)
        for f in SHIP_FILES:
            shutil.copy2(run_dir / f, d / f)
        size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
        if size > MAX_SHIP_BYTES:
            raise InvalidInputError(f"the reconstructor in {run_dir} is {size / 2**20:.1f} MB, over the "
                                    f"{MAX_SHIP_BYTES / 2**20:.0f} MB limit for shipped weights.")
    return dest


def _summary(path: Path) -> dict:
    run = json.loads((path / "run.json").read_text())
    metrics = json.loads((path / "metrics.json").read_text())
    return {"dir": str(path), "wall_time_s": run["wall_time_s"], "train_wall_time_s": run["train_wall_time_s"],
            "steps": run["steps"], "final_loss": run["final_loss"], "metrics": metrics}


def train_toy_reconstructor(out="runs/neuropictor_toy", preset: str = "default", subject: str = "subj01",
                            heldout: str | None = "auto", heldout_fraction: float = 0.1,
                            baselines: bool = True, ship_to=None, threads: int | None = 1,
                            progress: bool = True) -> Path:
    """Train the toy reconstructor (stages i → ii → iii) and its comparison runs.

    Parameters
    ----------
    out : path-like
        Parent folder of every run (see the module docstring) and ``recipe.json``.
    preset : {"default", "smoke"}
        Stage presets (``.default()``: the shipped recipe; ``.smoke()``: seconds, smoke toy world).
    subject : str
        Subject refined in stage iii (the shipped model's subject).
    heldout : str or None
        Subject left out of stages i and ii and refined on ``heldout_fraction`` of its data
        (``None``: no held-out subject; ``"auto"``: the world's last subject, subj08 in the default
        world and subj03 in the smoke world).
    baselines : bool
        Also train the from-scratch comparisons at the same steps.
    ship_to : path-like, optional
        Copy the refined reconstructor there (:func:`ship_reconstructor`).
    threads : int, optional
        ``torch.set_num_threads`` for the whole recipe (1: on a busy 2-core machine a second
        thread made steps up to 10× slower, measured).

    Raises
    ------
    InvalidInputError
        Any argument is wrong (an unknown subject, a fraction outside (0, 1], an output folder
        that cannot be written...); every one is checked before anything is built or written.
    """
    check_choice("preset", preset, ("default", "smoke"))
    world_config = ToyWorldConfig.smoke() if preset == "smoke" else ToyWorldConfig()
    world_config.check_subject(subject, "subject")
    if heldout == "auto":
        heldout = world_config.subject_ids[-1]
    elif heldout is not None:
        world_config.check_subject(heldout, "heldout")
    if not (isinstance(heldout_fraction, numbers.Real) and 0 < heldout_fraction <= 1):
        raise InvalidInputError("'heldout_fraction' must be in (0, 1] (the share of the held-out subject's "
                                f"scans it is refined on); {heldout_fraction!r} was provided.")
    if threads is not None:
        check_range("threads", threads, 1)
    out = check_output_dir(out, "the output folder (out)")
    if ship_to is not None:
        check_output_dir(ship_to, "the ship_to folder")
    out.mkdir(parents=True, exist_ok=True)
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    try:
        world = make_toyworld(world_config, progress=False)
        backbone = load_backbone("toy")
        common = dict(progress=progress)
        make = (lambda cls, **kw: getattr(cls, preset)(**common, **kw))
        excl = (heldout,) if heldout else ()
        runs = {}

        def stage(name, fn, cfg, **kw):
            path = out / name
            if not (path / "run.json").is_file():
                fn(cfg, world=world, **kw)
            runs[name] = _summary(path)
            write_json(out / "recipe.json", {"preset": preset, "subject": subject, "heldout": heldout,
                                             "heldout_fraction": heldout_fraction, "runs": runs,
                                             "wall_time_s_this_call": round(time.perf_counter() - t0, 1),
                                             "threads": torch.get_num_threads()})
            return path

        enc = stage("i_encoder", pretrain_encoder,
                    make(EncoderPretrainConfig, output_dir=str(out / "i_encoder"), exclude_subjects=excl))
        pre = stage("ii_multisubject", pretrain_multisubject,
                    make(MultisubjectConfig, output_dir=str(out / "ii_multisubject"), encoder_dir=str(enc),
                         exclude_subjects=excl), backbone=backbone)
        main = stage(f"iii_{subject}", refine_subject,
                     make(RefineConfig, output_dir=str(out / f"iii_{subject}"), init_from=str(pre),
                          subject=subject), backbone=backbone)
        if ship_to is not None:
            ship_reconstructor(main, ship_to)
        if baselines:
            stage(f"iii_{subject}_scratch", refine_subject,
                  make(RefineConfig, output_dir=str(out / f"iii_{subject}_scratch"), init_from=None,
                       encoder_dir=str(enc), subject=subject), backbone=backbone)
        if heldout:
            pct = int(round(100 * heldout_fraction))
            for init, suffix in ((str(pre), ""), (None, "_scratch")):
                if init is None and not baselines:
                    continue
                name = f"iii_{heldout}_{pct}pct{suffix}"
                stage(name, refine_subject,
                      make(RefineConfig, output_dir=str(out / name), init_from=init, encoder_dir=str(enc),
                           subject=heldout, train_fraction=heldout_fraction), backbone=backbone)
    finally:
        torch.set_num_threads(old)
    return out
