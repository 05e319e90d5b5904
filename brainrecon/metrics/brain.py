"""Brain correlation: do the reconstructions evoke the measured responses? (§3.6)

An encoding model predicts each region's response to every reconstruction; the score of a
region is the mean over images of the Pearson r, across the region's voxels, between the
predicted response to reconstruction ``i`` and the measured (repeat-averaged) response to
target ``i``. Encoding models:

* toy world: the world's own image-computable model (:func:`toy_encoder`, subject-specific,
  noise-free);
* NSD: a voxel-wise ridge model brainrecon fits on the training set
  (:class:`RidgeEncodingModel`, himalaya kernel ridge on image features), or any callable
  ``images -> (N, V)`` the user supplies (e.g. a wrapper of MindEye2's GNet).
"""
from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from ..models.ridge import fit_ridge
from .lowlevel import as_tensor

__all__ = ["brain_correlation_per_image", "brain_correlation", "toy_encoder", "toy_regions", "toy_measured",
           "RidgeEncodingModel", "TOY_REGIONS"]

#: Regions reported for the toy world (MindEye2 reports nsdgeneral, V1, V2, V3, V4, higher).
TOY_REGIONS = ("visual", "V1", "V2", "V3", "hV4", "early", "higher")


def brain_correlation_per_image(predicted, measured, mask=None) -> np.ndarray:
    """Pearson r per image across the voxels in ``mask`` (all voxels by default), shape (N,)."""
    p, m = np.asarray(predicted, np.float64), np.asarray(measured, np.float64)
    if p.shape != m.shape:
        raise InvalidInputError(f"predicted responses {p.shape} and measured responses {m.shape} must match "
                                "(images × voxels, same voxel order).")
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != (p.shape[1],):
            raise InvalidInputError(f"region mask has {mask.shape} entries but there are {p.shape[1]} voxels.")
        p, m = p[:, mask], m[:, mask]
    if p.shape[1] < 2:
        return np.full(len(p), np.nan)
    p = p - p.mean(1, keepdims=True)
    m = m - m.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (p * m).sum(1) / np.sqrt((p * p).sum(1) * (m * m).sum(1))


def brain_correlation(reconstructions, measured, encoder, regions=None) -> dict:
    """Per-region brain correlation of ``reconstructions``.

    Parameters
    ----------
    reconstructions : array-like
        Images, anything :func:`brainrecon.metrics.as_tensor` accepts.
    measured : array (N, V)
        Measured responses to the targets, in the encoder's voxel order.
    encoder : callable
        ``encoder(images (N, 3, H, W) float tensor in [0, 1]) -> (N, V)``.
    regions : dict, optional
        ``{name: boolean mask (V,)}``; default one region ``"all"``.

    Returns
    -------
    dict
        ``{region: per-image r (N,)}``.
    """
    pred = np.asarray(encoder(as_tensor(reconstructions, "reconstructions")))
    regions = regions or {"all": None}
    return {name: brain_correlation_per_image(pred, measured, mask) for name, mask in regions.items()}


def toy_encoder(world, subject):
    """The toy subject's own noise-free encoding model as a callable of image tensors."""
    s = world.subject(subject)

    def encode(images):
        x = images.permute(0, 2, 3, 1).numpy() if hasattr(images, "permute") else np.asarray(images)
        return s.encode(x)

    return encode


def toy_regions(world, subject, names=TOY_REGIONS) -> dict:
    """``{area: mask}`` over the subject's vertices (areas without vertices left out)."""
    s = world.subject(subject)
    out = {n: s.area_mask(n) for n in names}
    return {n: m for n, m in out.items() if m.sum() >= 2}


def toy_measured(world, subject, image_ids) -> np.ndarray:
    """Repeat-averaged measured responses of ``subject`` to scenes ``image_ids`` (N, V)."""
    resp, images = world.average_repeats(subject)
    where = {int(i): k for k, i in enumerate(images)}
    missing = [int(i) for i in image_ids if int(i) not in where]
    if missing:
        raise InvalidInputError(f"{subject} never saw scene(s) {missing[:5]}; brain correlation needs the "
                                "subject's own measured responses (use world.test_images).")
    return resp[[where[int(i)] for i in image_ids]]


class RidgeEncodingModel:
    """Voxel-wise ridge encoding model on image features (:func:`brainrecon.models.ridge.fit_ridge`, himalaya), for NSD.

    Parameters
    ----------
    feature_set : RealFeatureSet or ToyFeatureSet
        Supplies the image features.
    feature : str
        Which feature (default ``"alexnet5"``, the layer of St-Yves' GNet trunk that
        predicts V1–V4 best among the metric networks).
    alphas : array, optional
        Ridge penalties searched by ``cv``-fold cross-validation, per voxel.
    cv : int

    Notes
    -----
    ``fit(images, responses)`` on the training images and their (z-scored,
    repeat-averaged) responses; calling the fitted model on images predicts ``(N, V)``.
    Features are z-scored with the training statistics; the solver is the shared ``fit_ridge``.
    """

    def __init__(self, feature_set, feature: str = "alexnet5", alphas=None, cv: int = 5):
        self.feature_set, self.feature, self.cv = feature_set, feature, int(cv)
        self.alphas = np.logspace(-1, 7, 17) if alphas is None else np.asarray(alphas, float)
        self.model = None

    def _features(self, images):
        f = self.feature_set.extract(as_tensor(images), names=(self.feature,))[self.feature].astype(np.float64)
        return f

    def fit(self, images, responses) -> "RidgeEncodingModel":
        try:
            import himalaya  # noqa: F401  (the shared ridge's solver)
        except ImportError as e:
            raise ImportError("the NSD ridge encoding model needs himalaya (pip install 'brainrecon[metrics]'); "
                              "or pass your own encoder callable to brain_correlation.") from e
        x = self._features(images)
        y = np.asarray(responses, np.float64)
        if len(x) != len(y):
            raise InvalidInputError(f"{len(x)} training images but {len(y)} rows of responses.")
        self.mean_, self.std_ = x.mean(0), x.std(0) + 1e-8
        # the shared ridge (brainrecon.models.ridge, MindDiffuser's decoders): per-voxel penalty by CV
        self.model = fit_ridge((x - self.mean_) / self.std_, y, alphas=self.alphas, cv=self.cv)
        return self

    def __call__(self, images) -> np.ndarray:
        if self.model is None:
            raise InvalidInputError("fit the RidgeEncodingModel on training images first (model.fit(images, responses)).")
        x = (self._features(images) - self.mean_) / self.std_
        w, b, _ = self.model
        return np.asarray(x @ w + b, np.float64)
