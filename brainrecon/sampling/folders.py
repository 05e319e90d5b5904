"""Reconstructor folders: what :class:`~brainrecon.sampling.BrainToImagePipeline` saves and loads.

Every folder holds ``model_index.json`` (:mod:`brainrecon.models.index`: each component's library and
class, as diffusers writes it) and the method's ``conditioner/`` (its ``save_pretrained``), so
:func:`load_reconstructor` builds any method's pipeline without hard-coded classes. Two layouts:

* **light** — ``conditioner/`` + ``backbone.json`` (``{"backbone": "toy"}`` or a backbone folder, relative
  to the reconstructor or absolute); what ships in ``brainrecon/weights/neuropictor_toy/``;
* **full** — ``conditioner/`` + ``unet/ vae/ scheduler/`` (+ ``text_encoder/ tokenizer/``) +
  ``empty_prompt_embeds.safetensors``.

Both may hold ``pipeline.json`` (sampling defaults, flatmap settings, ``info``). Keys of
``backbone.json`` / ``pipeline.json`` that are not settings (``subject``, ``stage``...) end up in
``pipe.info``, with ``path``, the folder. Folders written before ``model_index.json`` existed (NeuroPictor's
``model/`` instead of ``conditioner/``, as the ``refine_subject`` stage writes them) still load.
"""
from __future__ import annotations

from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from ..backbones import load_backbone
from ..backbones.hub import _transformers_class
from ..errors import CheckpointError, DataNotFoundError, InvalidInputError, check_choice, check_device, reading
from ..io import atomic_dir, check_safetensors, read_json, write_json
from ..models import NeuroPictorModel
from ..models.index import INDEX_NAME, register_conditioner, resolve_conditioner, write_index  # noqa: F401

__all__ = ["save_reconstructor_folder", "load_reconstructor_folder", "load_reconstructor", "reconstructor_info",
           "TOY_RECONSTRUCTOR_DIR", "SHIPPED_RECONSTRUCTORS"]

#: Folder of the shipped toy reconstructor (light layout, trained by ``refine_subject``).
TOY_RECONSTRUCTOR_DIR = Path(__file__).resolve().parent.parent / "weights" / "neuropictor_toy"
#: The shipped toy reconstructors by method (light layouts; each has its data card).
SHIPPED_RECONSTRUCTORS = {"neuropictor": TOY_RECONSTRUCTOR_DIR,
                          "neuraldiffuser": TOY_RECONSTRUCTOR_DIR.parent / "neuraldiffuser_toy",
                          "minddiffuser": TOY_RECONSTRUCTOR_DIR.parent / "minddiffuser_toy",
                          "cad": TOY_RECONSTRUCTOR_DIR.parent / "cad_toy"}
_RECIPES = {"neuropictor": "Train one with the NeuroPictor stages (brainrecon train neuropictor; refine_subject "
                           "writes the folder) and pass its folder.",
            "neuraldiffuser": "Train one with brainrecon train neuraldiffuser (it writes OUT/reconstructor/) "
                              "and pass that folder.",
            "minddiffuser": "Fit one with brainrecon train minddiffuser (it writes OUT/reconstructor/) and pass "
                            "that folder.",
            "cad": "Train one with brainrecon train cad (it writes OUT/reconstructor/) and pass that folder."}
#: keys of backbone.json / pipeline.json read as settings; any others land in ``pipe.info``
_KNOWN = ("_class_name", "backbone", "backbone_source", "guidance_scale", "num_inference_steps", "flatmap", "info")
_HINT = ("A reconstructor folder holds model_index.json with conditioner/ (or, written before it, NeuroPictor's "
         "model/) and either backbone.json "
         "({\"backbone\": \"toy\"} or a backbone folder) or the backbone parts unet/ vae/ scheduler/. "
         "Write one with BrainToImagePipeline.save_pretrained or the refine_subject stage.")
_FIX = ("Copy the reconstructor folder again from where it came from, or rewrite it with "
        "BrainToImagePipeline.save_pretrained (or rerun the refine_subject stage).")


def save_reconstructor_folder(pipe, save_directory, save_backbone: bool | None = None) -> Path:
    """Write ``pipe`` to ``save_directory`` atomically (see ``BrainToImagePipeline.save_pretrained``)."""
    source = pipe.config.backbone_source
    light = (source == "toy") if save_backbone is None else not save_backbone
    if light and source is None:
        raise InvalidInputError("this pipeline does not know its backbone's folder (it was not built with "
                                "from_backbone on a saved backbone); use save_backbone=True.")
    save_directory = Path(save_directory)
    parts = ("unet", "vae", "scheduler", "text_encoder", "tokenizer")
    with atomic_dir(save_directory) as tmp:
        pipe.conditioner.save_pretrained(tmp / "conditioner")
        write_index(tmp, pipe.conditioner, None if light else {n: getattr(pipe, n, None) for n in parts})
        if light:
            write_json(tmp / "backbone.json", {"backbone": source})
        else:
            for name in parts:
                part = getattr(pipe, name, None)
                if part is not None:
                    part.save_pretrained(tmp / name)

            save_file({"empty_prompt_embeds": pipe.empty_prompt_embeds.contiguous()},
                      str(tmp / "empty_prompt_embeds.safetensors"))
        write_json(tmp / "pipeline.json", {
            "_class_name": type(pipe).__name__, "guidance_scale": pipe.config.default_guidance_scale,
            "num_inference_steps": pipe.config.default_num_inference_steps,
            "flatmap": None if pipe.config.flatmap is None else dict(pipe.config.flatmap),
            "backbone_source": source, "info": {k: v for k, v in pipe.info.items() if k != "path"}})
    return save_directory


def _conditioner_dir(d: Path) -> Path:
    """``conditioner/`` (named by ``model_index.json``) or, in folders written before it, ``model/``."""
    if (d / INDEX_NAME).is_file():
        return d / "conditioner"
    return d / "model"


def _settings(directory) -> tuple[Path, dict]:
    """The folder and its merged ``backbone.json`` / ``pipeline.json`` settings (both checked)."""
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise DataNotFoundError(f"the reconstructor folder {str(directory)!r}", [d], hint=_HINT)
    if not _conditioner_dir(d).is_dir():
        raise CheckpointError(f"{d} is not a reconstructor folder: {_conditioner_dir(d)} is missing. {_HINT}")
    settings = {}
    for name in ("backbone.json", "pipeline.json"):
        if (d / name).is_file():
            settings.update(read_json(d / name, _FIX))
    return d, settings


def _info(d: Path, settings: dict) -> dict:
    return {**{k: v for k, v in settings.items() if k not in _KNOWN}, **settings.get("info", {}), "path": str(d)}


def reconstructor_info(path=None, method: str = "neuropictor") -> dict:
    """What ``load_reconstructor(path).info`` will hold (``subject``, ``toyworld``, ``path``...), read
    from the folder's JSON files without loading any model (default: the shipped toy reconstructor
    of ``method``)."""
    return _info(*_settings(_path_or_shipped(path, method)))


def load_reconstructor_folder(cls, directory, device=None, dtype: torch.dtype | None = None, **overrides):
    """A ``cls`` (``BrainToImagePipeline``) from a light or full reconstructor folder."""
    device = check_device(device)
    d, settings = _settings(directory)
    cdir = _conditioner_dir(d)
    if (d / INDEX_NAME).is_file():              # the class is named by the folder (diffusers' model_index.json)
        index = read_json(d / INDEX_NAME, _FIX)
        cond_cls = resolve_conditioner(index.get("conditioner"), d)
    else:                                       # written before model_index.json: NeuroPictor's model/
        cond_cls = NeuroPictorModel
    weight_dirs = [cdir] if (cdir / "config.json").is_file() else sorted(
        p.parent for p in cdir.glob("*/config.json"))
    for w in weight_dirs:
        check_safetensors(w, f"the conditioner part {w.relative_to(d)}", _FIX)
    with reading(cdir, _FIX):
        model = cond_cls.from_pretrained(cdir, use_safetensors=True)
    defaults = {k: overrides.get(k, settings.get(k)) for k in ("guidance_scale", "num_inference_steps", "flatmap")}
    if (d / "backbone.json").is_file():
        bb = load_backbone(_resolve_backbone(d, settings.get("backbone")), device=device, dtype=dtype)
        model.to(device or "cpu")
        pipe = cls.from_backbone(bb, model if dtype is None else model.to(dtype), **defaults)
        model.attach_backbone(bb)      # a BrainConditioner (resolve_conditioner checks); ND and MD read it
    else:
        pipe = _from_parts(cls, d, model, defaults, settings, device, dtype)
    pipe.info = _info(d, settings)
    return pipe


def _from_parts(cls, d: Path, model, defaults: dict, settings: dict, device, dtype):
    need = [d / "unet" / "config.json", d / "vae" / "config.json", d / "scheduler" / "scheduler_config.json"]
    has_te = (d / "text_encoder" / "config.json").is_file()
    if not has_te:
        need.append(d / "empty_prompt_embeds.safetensors")
    missing = [p for p in need if not p.is_file()]
    if missing:
        raise CheckpointError(f"{d} has model/ but neither backbone.json nor the backbone parts; missing: "
                              + ", ".join(str(p) for p in missing) + f". {_HINT}")
    for part in ("unet", "vae", "text_encoder") if has_te else ("unet", "vae"):
        check_safetensors(d / part, f"the {part} part", _FIX)
    sched_cfg = read_json(d / "scheduler" / "scheduler_config.json", _FIX)
    safe = dict(use_safetensors=True)   # never fall back to pickled .bin weights
    with reading(d, _FIX):
        unet = UNet2DConditionModel.from_pretrained(d / "unet", **safe)
        vae = AutoencoderKL.from_pretrained(d / "vae", **safe)
        sched = getattr(diffusers, sched_cfg.get("_class_name", "DDIMScheduler"), diffusers.DDIMScheduler)
        scheduler = sched.from_pretrained(d / "scheduler")
    text_encoder = tokenizer = empty = None
    if (d / "empty_prompt_embeds.safetensors").is_file():
        with reading(d / "empty_prompt_embeds.safetensors", _FIX):
            empty = load_file(str(d / "empty_prompt_embeds.safetensors"))["empty_prompt_embeds"]
    if has_te:
        te_cls = _transformers_class(d / "text_encoder", ("CLIPTextModel", "CLIPTextModelWithProjection"),
                                     "CLIPTextModel")
        with reading(d, _FIX):
            text_encoder = te_cls.from_pretrained(d / "text_encoder", **safe)
            tokenizer = AutoTokenizer.from_pretrained(d / "tokenizer")
    for m in (unet, vae, model, text_encoder):
        if m is not None:
            m.to(device or "cpu").eval().requires_grad_(False)
            if dtype is not None:
                m.to(dtype)
    gs, steps = defaults["guidance_scale"], defaults["num_inference_steps"]
    unet = model.adapt_unet(unet)
    return cls(unet, vae, scheduler, model, text_encoder=text_encoder, tokenizer=tokenizer,
               empty_prompt_embeds=empty, default_guidance_scale=5.0 if gs is None else gs,
               default_num_inference_steps=50 if steps is None else steps,
               backbone_source=settings.get("backbone_source"), flatmap=defaults["flatmap"])


def _resolve_backbone(d: Path, source):
    if source is None:
        raise CheckpointError(f"{d / 'backbone.json'} has no 'backbone' entry; write {{\"backbone\": \"toy\"}} "
                              "or the backbone folder.")
    if source == "toy":
        return "toy"
    p = Path(str(source)).expanduser()
    if not p.is_absolute() and (d / p).is_dir():
        return d / p
    return str(source) if not p.is_dir() else p


def load_reconstructor(path=None, device=None, dtype: torch.dtype | None = None, method: str = "neuropictor",
                       **kwargs):
    """Load a saved reconstructor; default the shipped toy one of ``method``.

    Light folders get their backbone attached (``conditioner.attach_backbone``), so NeuralDiffuser's
    feature guidance and retrieval, and MindDiffuser's stage 2, work at once.

    Parameters
    ----------
    path : path-like, optional
        A reconstructor folder (light or full layout). Default: the shipped toy reconstructor of
        ``method`` (:data:`SHIPPED_RECONSTRUCTORS`: ``brainrecon/weights/neuropictor_toy``,
        ``neuraldiffuser_toy``, ``minddiffuser_toy``, ``cad_toy``).
    device, dtype : optional
    method : {"neuropictor", "neuraldiffuser", "minddiffuser", "cad"}
        Which shipped reconstructor ``path=None`` loads (ignored when ``path`` is given).
    **kwargs
        ``guidance_scale``, ``num_inference_steps`` or ``flatmap`` override the saved defaults.

    Returns
    -------
    BrainToImagePipeline

    Raises
    ------
    InvalidInputError
        ``device`` is not available on this machine.
    DataNotFoundError
        The folder is missing (the message names it).
    CheckpointError
        The folder lacks ``model/`` or the backbone, or a file is truncated or corrupt (named),
        or weights are pickled only: safetensors alone are loaded (``use_safetensors=True``).
    """
    from .pipeline import BrainToImagePipeline

    return BrainToImagePipeline.from_pretrained(_path_or_shipped(path, method), device=device, dtype=dtype,
                                                **kwargs)


def _path_or_shipped(path, method: str = "neuropictor"):
    if path is not None:
        return path
    check_choice("method", method, tuple(SHIPPED_RECONSTRUCTORS))
    d = SHIPPED_RECONSTRUCTORS[method]
    if not _conditioner_dir(d).is_dir():
        raise DataNotFoundError(f"the shipped toy {method} reconstructor", [d, d / INDEX_NAME, d / "conditioner"],
                                data_card=f"{method}_toy.md", hint=_RECIPES[method])
    return d
