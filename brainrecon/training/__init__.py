"""Training: one generic accelerate loop (:func:`fit`) that every stage reuses, and NeuroPictor's stages.

The stage functions and configs load lazily::

    from brainrecon.training import pretrain_encoder, EncoderPretrainConfig
"""
from .._lazy import lazy_exports
from .loop import FitConfig, FitResult, fit, latest_checkpoint

_LAZY = {
    "EncoderPretrainConfig": "stages", "MultisubjectConfig": "stages", "RefineConfig": "stages",
    "pretrain_encoder": "stages", "pretrain_multisubject": "stages", "refine_subject": "stages",
    "train_toy_reconstructor": "toy_recipe", "train_toy_backbones": "toy_backbones",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _LAZY, eager=["FitConfig", "FitResult", "fit",
                                                                   "latest_checkpoint"])
