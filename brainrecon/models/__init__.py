"""Models: NeuroPictor's calibrated encoder, High-Level Guiding and Low-Level Manipulation Networks.

Public names are importable from here (loaded lazily, so ``import brainrecon.models`` is cheap)::

    from brainrecon.models import CalibratedEncoder, HighLevelGuidingNetwork, NeuroPictorModel
"""
from importlib import import_module

_EXPORTS = {
    "CalibratedEncoder": "fmri_encoder",
    "HighLevelGuidingNetwork": "hlgn", "HighLevelGuidingOutput": "hlgn", "semantic_loss": "hlgn",
    "LowLevelManipulationNetwork": "llmn", "FeatureTransformation": "llmn",
    "NeuroPictorModel": "neuropictor", "NeuroPictorOutput": "neuropictor",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
