"""Training: one generic accelerate loop (:func:`fit`) that every stage reuses."""
from .loop import FitConfig, FitResult, fit, latest_checkpoint

__all__ = ["FitConfig", "FitResult", "fit", "latest_checkpoint"]
