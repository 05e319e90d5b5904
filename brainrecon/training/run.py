"""Bookkeeping shared by every method's training runs: settings, inputs, device, checkpoints, records.

:class:`RunConfig` holds the settings every method's frozen config shares.

:class:`RunContext` is entered once per stage call. It creates the output folder, sets torch's
thread count for the stage, builds the data source (toy world or NSD) and the backbone, runs
:func:`~brainrecon.training.fit` with checkpoints under ``OUT/checkpoints/<phase>`` (so a
second call resumes), and writes the folder's records atomically:

* ``config.json`` — the stage config (plus the flatmap settings it trained on),
* ``metrics.json`` — held-out figures and per-phase loss summaries,
* ``history.json`` — every step's losses (for loss curves),
* ``run.json`` — stage, config, seed, package versions, device, wall time, steps, final loss.
"""
from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import PartialState

from ..backbones.hub import TOY_WEIGHTS_DIR
from ..errors import CheckpointError, DataNotFoundError, InvalidInputError, check_choice
from ..io import atomic_dir, write_json
from ..models.index import INDEX_NAME, write_index
from . import cache as sd
from .loop import FitConfig, fit

__all__ = ["RunConfig", "RunContext", "read_stage_config", "package_versions", "loss_summary", "ship_reconstructor"]



@dataclass(frozen=True)
class RunConfig:
    """Settings every method's training run shares (each method's config adds its own fields).

    ``output_dir``, ``world`` ("toy" or an NSD root), ``toy_preset``, ``backbone`` ("toy" or a local
    Stable Diffusion folder), ``seed``, optimiser settings (``steps``, ``batch_size``, ``lr``,
    ``weight_decay``, ``warmup_steps``), ``checkpoint_every``, ``mixed_precision`` ("auto": bf16 on a
    GPU, else none), ``cpu``, ``threads``, ``n_eval`` (held-out rows scored into ``metrics.json``),
    ``nsd_sessions``, ``toy_n_test`` (the toy world's shared test images; None: the preset's) and ``progress``. Subclasses set ``_SMOKE`` and ``_DEFAULT`` for
    :meth:`smoke` and :meth:`default`.
    """

    output_dir: str = "runs/neuropictor"
    world: str = "toy"               # "toy", or an NSD root folder (fsaverage betas)
    toy_preset: str = "default"      # toy world size: "default" or "smoke"
    backbone: str = "toy"            # "toy" or a local Stable Diffusion folder
    seed: int = 0
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    checkpoint_every: int = 200
    mixed_precision: str = "auto"    # "auto" (bf16 on a GPU, else no), "no", "fp16", "bf16"
    cpu: bool | None = None
    threads: int | None = None       # torch.set_num_threads during the stage (None: leave)
    n_eval: int = 200                # held-out rows scored into metrics.json
    nsd_sessions: int | None = None
    toy_n_test: int | None = None    # toy world: shared test images (None: the preset's; 300 for 300-way retrieval)
    progress: bool = True

    def precision(self) -> str:
        """The mixed-precision mode actually used."""
        if self.mixed_precision != "auto":
            check_choice("mixed_precision", self.mixed_precision, ("auto", "no", "fp16", "bf16"))
            return self.mixed_precision
        gpu = torch.cuda.is_available() and not self.cpu
        return "bf16" if gpu and torch.cuda.is_bf16_supported() else "no"

    def fit_config(self, steps: int, lr: float, desc: str, tag: int = 0) -> FitConfig:
        return FitConfig(max_steps=int(steps), lr=float(lr), weight_decay=self.weight_decay,
                         warmup_steps=min(self.warmup_steps, max(0, int(steps) // 10)),
                         checkpoint_every=self.checkpoint_every, cpu=self.cpu,
                         mixed_precision=self.precision(), seed=self.seed * 7 + tag,
                         progress=self.progress, desc=desc)

    @classmethod
    def smoke(cls, **overrides):
        """Seconds-sized run for tests and CI (smoke toy world, tiny steps)."""
        return cls(**{**cls._SMOKE, **overrides})

    @classmethod
    def default(cls, **overrides):
        """The shipped toy recipe of this method (its data card gives the time it takes)."""
        return cls(**{**cls._DEFAULT, **overrides})


def package_versions() -> dict:
    """Versions of the packages a run depends on."""
    out = {"python": platform.python_version()}
    for mod in ("brainrecon", "torch", "diffusers", "transformers", "accelerate", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            out[mod] = None
    return out


def read_stage_config(directory) -> dict:
    """``config.json`` of a stage folder (a :class:`CheckpointError` names it when unreadable)."""
    f = Path(directory) / "config.json"
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{f} is not valid JSON ({err}); the stage folder is corrupt: "
                              "rerun the stage that wrote it.") from err


def loss_summary(result, keys=("loss", "diffusion", "semantic", "layout"), k: int | None = None) -> dict:
    """Mean of each logged value over the first and last ``k`` steps (default: a tenth, ≥ 1)."""
    n = len(result.history)
    if n == 0:
        return {"steps": 0}
    k = k or max(1, min(50, n // 10))
    out = {"steps": n, "resumed_from": result.resumed_from, "wall_time_s": round(result.wall_time, 1)}
    for key in keys:
        if key in result.history[-1]:
            out[f"{key}_first"] = result.mean_loss(first=k, key=key)
            out[f"{key}_final"] = result.mean_loss(last=k, key=key)
    return out


class RunContext:
    """One stage call's folder, inputs, device and records (see the module docstring)."""

    def __init__(self, config, stage: str, world=None, callbacks=()):
        self.config, self.stage, self._world, self.callbacks = config, stage, world, tuple(callbacks)
        self.stage_label = {"pretrain_encoder": "stage i", "pretrain_multisubject": "stage ii",
                            "refine_subject": "stage iii"}.get(stage, stage)
        self.out = Path(config.output_dir)

    # ------------------------------------------------------------------ enter / exit
    def __enter__(self) -> "RunContext":
        cfg = self.config
        self._threads = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        self.t0 = time.perf_counter()
        cpu = (not torch.cuda.is_available()) if cfg.cpu is None else bool(cfg.cpu)
        state = PartialState(cpu=cpu)
        self.device, self.rank, self.is_main = state.device, state.process_index, state.is_main_process
        self._state = state
        if self._world is not None:
            self.kind, self.source = "toy", self._world
        else:
            wanted = getattr(cfg, "subjects", None) or ([cfg.subject] if hasattr(cfg, "subject") else None)
            self.kind, self.source = sd.load_stage_world(cfg.world, cfg.toy_preset, cfg.seed, wanted,
                                                         cfg.nsd_sessions, cfg.toy_n_test)
        self.out.mkdir(parents=True, exist_ok=True)
        self.backbone_name = None
        return self

    def __exit__(self, exc_type, *exc):
        torch.set_num_threads(self._threads)
        if exc_type is None:     # every process leaves once the main one has written the folder
            self._state.wait_for_everyone()
        return False

    # ------------------------------------------------------------------ inputs
    def subjects(self, requested, exclude) -> list:
        """Checked subject ids: ``requested`` (None = all) minus ``exclude``."""
        known = sd.known_subjects(self.source)
        chosen = sd.check_subjects(requested, known)
        dropped = sd.check_subjects(list(exclude), known, "excluded subject") if exclude else []
        chosen = [s for s in chosen if s not in dropped]
        if not chosen:
            raise InvalidInputError(f"{self.stage}: no subject left to train on (asked {requested}, "
                                    f"excluded {list(exclude)}; known: {known}).")
        return chosen

    def dataset(self, subjects, split, resolution, crop, repeats):
        return sd.make_stage_dataset(self.source, subjects, split, resolution, crop, repeats)

    def voxel_dataset(self, subjects, split, repeats: str = "average"):
        """Each subject's own response vectors (methods whose input is ``"voxels"``)."""
        return sd.make_stage_dataset(self.source, subjects, split, 0, None, repeats, representation="voxels")

    def backbone(self, backbone=None):
        """The backbone (loaded from ``config.backbone`` unless given), frozen, on the device."""
        bb = sd.resolve_backbone(backbone if backbone is not None else self.config.backbone)
        path = Path(bb.path).resolve() if bb.path is not None else None
        self.backbone_name = "toy" if path in (None, TOY_WEIGHTS_DIR.resolve()) else str(path)
        return bb.to(self.device).eval()

    # ------------------------------------------------------------------ training
    def fit(self, model, loss_fn, batches, fit_config, phase: str):
        """:func:`fit` with resumable checkpoints in ``OUT/checkpoints/<phase>``."""
        return fit(model, loss_fn, batches, fit_config, output_dir=self.out / "checkpoints" / phase,
                   callbacks=self.callbacks)

    # ------------------------------------------------------------------ records
    def save_model(self, model, backbone, resolution, crop, subject=None) -> None:
        """``model/`` (NeuroPictorModel.save_pretrained) and ``backbone.json`` (main process only)."""
        if not self.is_main:
            return
        model.save_pretrained(self.out / "model")
        write_json(self.out / "backbone.json", {
            "backbone": self.backbone_name or "toy",
            "method": "neuropictor", "stage": self.stage, "subject": subject,
            "flatmap": {"resolution": int(resolution), "crop": crop},
            "guidance_scale": float(getattr(backbone, "guidance_scale", 5.0)),
            "image_size": int(backbone.image_size)})

    def save_reconstructor(self, model, backbone, method: str, subject: str,
                           guidance_scale: float | None = None) -> None:
        """``OUT/reconstructor/``, a light folder (``conditioner/`` + ``model_index.json`` +
        ``backbone.json``) of a voxel method's conditioner, written atomically (main process only);
        ``guidance_scale`` defaults to the backbone's."""
        if not self.is_main:
            return
        with atomic_dir(self.out / "reconstructor") as d:
            model.eval().save_pretrained(d / "conditioner")
            write_index(d, model)
            write_json(d / "backbone.json", {"backbone": self.backbone_name or "toy", "method": method,
                                             "subject": subject,
                                             "guidance_scale": float(getattr(backbone, "guidance_scale", 5.0)
                                                                     if guidance_scale is None else guidance_scale)})

    def finish(self, metrics: dict, results: dict, **extra) -> None:
        """Write ``config.json``, ``metrics.json``, ``history.json`` and ``run.json`` (main process only)."""
        self._state.wait_for_everyone()
        if not self.is_main:
            return
        cfg = self.config
        conf = {"stage": self.stage, **asdict(cfg), **extra}
        if hasattr(cfg, "resolution") and "flatmap" not in extra:
            conf["flatmap"] = {"resolution": cfg.resolution, "crop": cfg.crop}
        losses = {phase: loss_summary(r) for phase, r in results.items()}
        last = [r for r in results.values() if r.history]
        final = last[-1].mean_loss(last=max(1, min(50, len(last[-1].history) // 10))) if last else None
        write_json(self.out / "config.json", conf)
        write_json(self.out / "metrics.json", {**metrics, "losses": losses})
        write_json(self.out / "history.json", {p: r.history for p, r in results.items()})
        world = asdict(self.source.config) if self.kind == "toy" else {"nsd_root": str(cfg.world)}
        write_json(self.out / "run.json", {
            "stage": self.stage, "config": asdict(cfg), "seed": cfg.seed, "versions": package_versions(),
            "device": str(self.device), "mixed_precision": cfg.precision(), "threads": torch.get_num_threads(),
            "world": world, "backbone": self.backbone_name,
            "wall_time_s": round(time.perf_counter() - self.t0, 1),
            "train_wall_time_s": {p: round(r.wall_time, 1) for p, r in results.items()},
            "steps": {p: r.step for p, r in results.items()}, "final_loss": final,
            "platform": platform.platform()})


def ship_reconstructor(run_dir, dest, model_cls, method: str, prepare=None) -> Path:
    """Copy a run's light ``reconstructor/`` to ``dest`` (atomically) with its run records, for shipping.

    The conditioner is loaded with ``model_cls``, changed by ``prepare(model)`` (e.g. dropping other
    subjects' parts, storing fp16) and saved again without local paths (``_name_or_path``);
    ``metrics.json``, ``run.json`` and ``config.json`` of the run go beside it.
    """
    run = Path(run_dir)
    src = run / "reconstructor"
    need = [src / INDEX_NAME, src / "backbone.json", src / "conditioner", run / "metrics.json", run / "run.json",
            run / "config.json"]
    missing = [p for p in need if not p.exists()]
    if missing:
        raise DataNotFoundError(f"the {method} run {str(run)!r}", missing,
                                hint=f"Finish it first: brainrecon train {method} --out RUN (it resumes).")
    model = model_cls.from_pretrained(src / "conditioner", use_safetensors=True)
    if prepare is not None:
        prepare(model)
    with atomic_dir(dest) as d:
        model.save_pretrained(d / "conditioner")
        for cfg_file in (d / "conditioner").glob("*/config.json"):    # no local path in what ships
            part = json.loads(cfg_file.read_text())
            part.pop("_name_or_path", None)
            write_json(cfg_file, part)
        write_index(d, model)
        shutil.copy2(src / "backbone.json", d / "backbone.json")
        for name in ("metrics.json", "run.json", "config.json"):
            shutil.copy2(run / name, d / name)
    return Path(dest)
