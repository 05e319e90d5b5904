"""Models: the conditioner interface every method implements, NeuroPictor's calibrated encoder,
High-Level Guiding and Low-Level Manipulation Networks, NeuralDiffuser's voxel encoder and decoders,
MindDiffuser's conditioner and the ridge decoders it shares with the brain-correlation metric.

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
    "NeuralDiffuserModel": "neuraldiffuser", "DiffusionPrior": "neuraldiffuser", "VoxelEncoder": "neuraldiffuser", "MixerDecoder": "neuraldiffuser", "LatentDecoder": "neuraldiffuser",
    "mixco_mix": "neuraldiffuser", "mixco_loss": "neuraldiffuser", "soft_clip_loss": "neuraldiffuser",
    "align_first_order": "neuraldiffuser",
    "MindDiffuserModel": "minddiffuser", "RidgeDecoder": "ridge", "fit_ridge": "ridge",
    "cross_validated_r": "ridge",
    "DoubleContrastiveMAE": "dcmae", "CrossModalMAE": "cross_modal", "CADModel": "cad", "CADConditionHead": "cad",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
