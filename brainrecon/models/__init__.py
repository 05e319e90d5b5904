"""Models: the conditioner interface every method implements, and NeuroPictor's calibrated encoder,
High-Level Guiding and Low-Level Manipulation Networks.

Public names are importable from here (loaded lazily, so ``import brainrecon.models`` is cheap)::

    from brainrecon.models import CalibratedEncoder, HighLevelGuidingNetwork, NeuroPictorModel
"""
from .._lazy import lazy_exports

_EXPORTS = {
    "CalibratedEncoder": "fmri_encoder",
    "HighLevelGuidingNetwork": "hlgn", "HighLevelGuidingOutput": "hlgn", "semantic_loss": "hlgn",
    "LowLevelManipulationNetwork": "llmn", "FeatureTransformation": "llmn",
    "NeuroPictorModel": "neuropictor", "NeuroPictorOutput": "neuropictor",
    "BrainConditioner": "conditioner", "register_conditioner": "index",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
