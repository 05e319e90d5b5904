"""The toy feature set: toy-CLIP layers standing in for the published metric networks.

The mapping (documented in :mod:`brainrecon.metrics.networks` and ``data_cards/metrics.md``)
is fixed by the depth ``L`` of the toy CLIP image tower, so it holds for any toy backbone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..backbones import load_backbone
from ..errors import DataNotFoundError, InvalidInputError
from .lowlevel import DEFAULT_ANTIALIAS, protocol_base

__all__ = ["ToyFeatureSet"]

_NAMES = ("alexnet2", "alexnet5", "inception", "clip", "effnet", "swav")


class ToyFeatureSet:
    """Toy-CLIP layers standing in for the published networks (mapping in the module docstring).

    Parameters
    ----------
    backbone : Backbone or path-like or "toy"
        Anything :func:`brainrecon.backbones.load_backbone` takes; needs ``image_encoder/``.
    protocol : str
        Only the 256 base resize differs between protocols here.
    """

    kind = "toy"

    def __init__(self, backbone="toy", protocol: str = "mindeye", device="cpu", batch_size: int = 256,
                 antialias: bool = DEFAULT_ANTIALIAS):
        if not hasattr(backbone, "encode_image_features"):
            backbone = load_backbone(backbone, device=device)
        backbone._require_image_encoder()
        self.backbone, self.protocol, self.batch_size, self.antialias = backbone, protocol, int(batch_size), antialias
        n = int(backbone.image_encoder.config.num_hidden_layers)
        early, mid = max(1, round(n / 3)), max(1, round(2 * n / 3))
        #: name -> (hidden-state index or "image_embeds", pooling)
        self.mapping = {"alexnet2": (early, "flatten"), "alexnet5": (mid, "flatten"), "inception": (n, "mean_patches"),
                        "clip": ("image_embeds", None), "effnet": (n, "cls"), "swav": (mid, "mean_patches")}

    @property
    def attribute_classifier(self):
        return self.backbone.attribute_classifier

    @torch.no_grad()
    def extract(self, images: torch.Tensor, names=_NAMES, based: bool = False) -> dict:
        """``{name: (N, D) float32 numpy}``: one toy-CLIP pass per batch serves every name."""
        for n in names:
            if n not in self.mapping:
                raise InvalidInputError(f"the toy feature set has no {n!r}; it answers {tuple(self.mapping)}.")
        x = images if based else protocol_base(images, self.protocol, self.antialias)
        layers = sorted({self.mapping[n][0] for n in names if self.mapping[n][0] != "image_embeds"})
        out = {n: [] for n in names}
        for i in range(0, len(x), self.batch_size):
            f = self.backbone.encode_image_features(x[i:i + self.batch_size], layers=tuple(layers))
            for n in names:
                layer, pool = self.mapping[n]
                h = f[layer].float()
                h = {None: h, "flatten": h, "cls": h[:, 0] if h.ndim == 3 else h,
                     "mean_patches": h[:, 1:].mean(1) if h.ndim == 3 else h}[pool]
                out[n].append(h.flatten(1).cpu())
        return {n: torch.cat(v).numpy() for n, v in out.items()}

    @torch.no_grad()
    def class_probabilities(self, images: torch.Tensor, classifier=None) -> np.ndarray:
        """Softmax of the attribute classifier's category head (the toy n-way classifier)."""
        clf = self.attribute_classifier
        if clf is None:
            raise DataNotFoundError("the toy attribute classifier (attribute_classifier/)",
                                    [Path(self.backbone.path or ".") / "attribute_classifier"], "toy_backbones.md")
        dev = next(clf.parameters()).device
        out = [torch.softmax(clf(images[i:i + self.batch_size].to(dev))["category_logits"].float(), -1).cpu()
               for i in range(0, len(images), self.batch_size)]
        return torch.cat(out).numpy()
