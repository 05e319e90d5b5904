"""``model_index.json`` of reconstructor folders: which class each component is, as diffusers writes it.

A reconstructor folder names every component's library and class, so
:func:`~brainrecon.sampling.load_reconstructor` builds any method's pipeline without hard-coded classes::

    {"_class_name": "BrainToImagePipeline", "_brainrecon_version": "0.1.0",
     "conditioner": ["brainrecon.models.neuropictor", "NeuroPictorModel"],
     "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"], ...}

(``null`` for a component the folder does not hold: a light folder's backbone parts come from
``backbone.json``.) Only classes from brainrecon itself, or registered with :func:`register_conditioner`,
are ever built from an index: a folder cannot make brainrecon import arbitrary code.
"""
from __future__ import annotations

import json
from importlib import import_module
from pathlib import Path

from .. import __version__
from ..errors import CheckpointError
from ..models.conditioner import BrainConditioner

__all__ = ["register_conditioner", "conditioner_entry", "resolve_conditioner", "write_index", "INDEX_NAME"]

#: the backbone components an index names (``None`` where a light folder takes them from ``backbone.json``)
BACKBONE_PARTS = ("unet", "vae", "scheduler", "text_encoder", "tokenizer")

INDEX_NAME = "model_index.json"
_REGISTRY: dict[tuple[str, str], type] = {}


def register_conditioner(cls: type) -> type:
    """Allow ``cls`` (a conditioner defined outside brainrecon) to be built from reconstructor folders.

    Usable as a class decorator; returns ``cls``.
    """
    _REGISTRY[(cls.__module__, cls.__name__)] = cls
    return cls


def conditioner_entry(conditioner) -> list[str]:
    """``[module, class]`` of a conditioner (or of a conditioner class), as the index records it."""
    cls = conditioner if isinstance(conditioner, type) else type(conditioner)
    return [cls.__module__, cls.__name__]


def write_index(folder, conditioner, parts: dict | None = None) -> Path:
    """Write ``folder/model_index.json`` for a reconstructor: the conditioner's class and, for a full
    folder, each backbone part's ``[library, class]`` (``parts``: ``{name: object}``; missing → ``null``)."""
    index = {"_class_name": "BrainToImagePipeline", "_brainrecon_version": __version__,
             "conditioner": conditioner_entry(conditioner)}
    for name in BACKBONE_PARTS:
        part = (parts or {}).get(name)
        index[name] = None if part is None else [type(part).__module__.split(".")[0], type(part).__name__]
    path = Path(folder) / INDEX_NAME
    path.write_text(json.dumps(index, indent=2) + "\n")
    return path


def resolve_conditioner(entry, folder) -> type:
    """The class an index entry names, if brainrecon may build it; else a :class:`CheckpointError`."""
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
        raise CheckpointError(f"{folder}/{INDEX_NAME}: 'conditioner' must be [module, class]; got {entry!r}. "
                              f"Rewrite the folder with BrainToImagePipeline.save_pretrained.")
    module, name = entry
    cls = _REGISTRY.get((module, name))
    if cls is None:
        if not (module == "brainrecon" or module.startswith("brainrecon.")):
            raise CheckpointError(f"{folder}/{INDEX_NAME} names the conditioner {module}.{name}, which is not part "
                                  f"of brainrecon: import it and call brainrecon.sampling.register_conditioner"
                                  f"({name}) before loading.")
        try:
            cls = getattr(import_module(module), name)
        except (ImportError, AttributeError) as err:
            raise CheckpointError(f"{folder}/{INDEX_NAME} names the conditioner {module}.{name}, which this "
                                  f"brainrecon does not have ({err}); update brainrecon or rewrite the folder.") from None
    if not (isinstance(cls, type) and issubclass(cls, BrainConditioner)):
        raise CheckpointError(f"{folder}/{INDEX_NAME}: {module}.{name} is not a BrainConditioner.")
    return cls
