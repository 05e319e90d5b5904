"""Toy-world attribute scores: is the main object of a reconstruction the right one, in the right place?

The toy world knows every scene's ground truth (main object's category, colour and box),
so reconstructions are judged exactly against it with the shipped attribute classifier
(:class:`brainrecon.backbones.AttributeClassifier`):

* ``category_acc`` / ``colour_acc`` / ``both_acc``: the classifier's reading of the
  reconstruction equals the ground truth of the target;
* ``position_error``: distance between the centre of the box the classifier regresses on
  the reconstruction and the true box centre, as a fraction of the image side
  (0 = same place; the classifier's own error on the targets is ``position_error_targets``);
* ``box_iou``: IoU of the regressed and the true box.
"""
from __future__ import annotations

import numpy as np
import torch

from ..backbones.attributes import box_iou
from ..errors import InvalidInputError
from .lowlevel import as_tensor

__all__ = ["attribute_scores_per_image", "attribute_scores"]


def attribute_scores_per_image(reconstructions, category, colour, bbox, classifier, image_size=None) -> dict:
    """Per-image attribute scores of reconstructions against ground truth.

    Parameters
    ----------
    reconstructions : array-like
        Images (any form :func:`brainrecon.metrics.as_tensor` takes).
    category, colour : array (N,) int
        Ground-truth main-object category and colour indices of the targets.
    bbox : array (N, 4)
        Ground-truth main-object boxes ``(x0, y0, x1, y1)`` in pixels of the target images.
    classifier : AttributeClassifier
    image_size : int, optional
        Side of the target images in pixels (default: the reconstructions' side); the box
        is measured as a fraction of it.

    Returns
    -------
    dict of arrays (N,)
        ``category_ok``, ``colour_ok``, ``both_ok`` (0/1), ``position_error``, ``box_iou``.
    """
    x = as_tensor(reconstructions, "reconstructions")
    n = len(x)
    category, colour = np.asarray(category, np.int64), np.asarray(colour, np.int64)
    bbox = np.asarray(bbox, np.float64).reshape(-1, 4)
    if not (len(category) == len(colour) == len(bbox) == n):
        raise InvalidInputError(f"{n} reconstructions but {len(category)} categories, {len(colour)} colours "
                                f"and {len(bbox)} boxes; give one of each per reconstruction.")
    side = float(image_size or x.shape[-1])
    p = classifier.predict(x)
    pbox = p["bbox"].double().numpy() / x.shape[-1]       # fractions of the reconstruction's side
    tbox = bbox / side
    cat_ok = (p["category"].numpy() == category).astype(float)
    col_ok = (p["colour"].numpy() == colour).astype(float)
    centre = lambda b: (b[:, :2] + b[:, 2:]) / 2  # noqa: E731
    err = np.linalg.norm(centre(pbox) - centre(tbox), axis=1)
    iou = box_iou(torch.from_numpy(pbox), torch.from_numpy(tbox)).numpy()
    return {"category_ok": cat_ok, "colour_ok": col_ok, "both_ok": cat_ok * col_ok, "position_error": err,
            "box_iou": iou}


def attribute_scores(reconstructions, category, colour, bbox, classifier, image_size=None) -> dict:
    """Means of :func:`attribute_scores_per_image`: ``category_acc``, ``colour_acc``, ``both_acc``,
    ``position_error``, ``box_iou``."""
    s = attribute_scores_per_image(reconstructions, category, colour, bbox, classifier, image_size)
    names = {"category_ok": "category_acc", "colour_ok": "colour_acc", "both_ok": "both_acc"}
    return {names.get(k, k): float(np.mean(v)) for k, v in s.items()}
