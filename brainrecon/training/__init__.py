"""Training: one generic accelerate loop (:func:`fit`) that every stage reuses, and NeuroPictor's stages.

The stage functions and configs load lazily::

    from brainrecon.training import pretrain_encoder, EncoderPretrainConfig
"""
from importlib import import_module

from .loop import FitConfig, FitResult, fit, latest_checkpoint

_LAZY = {
    "EncoderPretrainConfig": "stages", "MultisubjectConfig": "stages", "RefineConfig": "stages",
    "pretrain_encoder": "stages", "pretrain_multisubject": "stages", "refine_subject": "stages",
    "train_toy_reconstructor": "toy_recipe",
}
__all__ = ["FitConfig", "FitResult", "fit", "latest_checkpoint", *sorted(_LAZY)]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
