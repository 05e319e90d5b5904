"""Training: one accelerate loop (:func:`fit`), one run context (:mod:`.run`) and cache (:mod:`.cache`), one module per method.

The stage functions and configs load lazily::

    from brainrecon.training import pretrain_encoder, EncoderPretrainConfig
"""
from .._lazy import lazy_exports
from .loop import FitConfig, FitResult, fit, latest_checkpoint

_LAZY = {
    "EncoderPretrainConfig": "neuropictor", "MultisubjectConfig": "neuropictor", "RefineConfig": "neuropictor",
    "pretrain_encoder": "neuropictor", "pretrain_multisubject": "neuropictor", "refine_subject": "neuropictor",
    "train_toy_reconstructor": "toy_recipe", "train_toy_backbones": "toy_backbones",
    "MindDiffuserConfig": "minddiffuser", "train_minddiffuser": "minddiffuser", "ship_minddiffuser": "minddiffuser",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _LAZY, eager=["FitConfig", "FitResult", "fit",
                                                                   "latest_checkpoint"])
