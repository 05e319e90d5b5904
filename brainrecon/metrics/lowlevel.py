"""Pixel-level metrics and the resize chains of the published evaluation protocols.

Protocols (``nsd_and_metrics.md`` §3):

``"mindeye"`` (default; MindEye1/2)
    Both image sets are resized to 256×256 (bilinear, torch tensor resize), then each
    metric resizes again: 425 for PixCorr and SSIM, the network's own size for networks.
``"neuropictor"``
    As ``"mindeye"`` except the CLIP two-way resize is bicubic (NeuroPictor ``eval_metrics.py``).
``"brain-diffuser"``
    Reconstructions are rounded to 8-bit and PIL-resized (bicubic) to 425 for PixCorr/SSIM
    and to 224 for every network; SSIM is the column-wise 1-D SSIM that scikit-image ≤0.19
    computed for ``multichannel=True`` on grayscale images; EffNet-B uses the V1 weights.

Images may be given as ``(N, H, W, 3)`` or ``(N, 3, H, W)`` arrays or tensors, uint8 (0..255)
or float in ``[0, 1]``; :func:`as_tensor` turns any of them into ``(N, 3, H, W)`` float32 and
refuses every other encoding (0..255 floats, [-1, 1], int64...). PixCorr of a constant
image is undefined: it is NaN, with a warning that names the pairs.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.metrics import structural_similarity

from ..errors import InvalidInputError, check_choice, check_finite

__all__ = ["PROTOCOLS", "as_tensor", "as_uint8", "resize", "protocol_base", "pixcorr", "pixcorr_per_image", "ssim",
           "ssim_per_image", "lowlevel_per_image", "pil_resize"]

PROTOCOLS = ("mindeye", "neuropictor", "brain-diffuser")
#: torchvision ≤0.16 tensor ``Resize`` did not antialias (MindEye's environments); see §3.0.
DEFAULT_ANTIALIAS = False
#: Float images may stray this far outside [0, 1] (half an 8-bit level: rounding) and are clamped.
_ROUNDING = 0.5 / 255
#: An image whose values span less than this is constant (one 8-bit level is 1/255; resampling leaves ~1e-7).
_CONSTANT = 1e-5


def as_tensor(images, name: str = "images") -> torch.Tensor:
    """``(N, 3, H, W)`` float32 tensor in [0, 1] from uint8/float, NHWC/NCHW, numpy/torch.

    Only two encodings are accepted, because any other one would be scored silently wrong:
    ``uint8`` in 0..255 (divided by 255) and floats in [0, 1]. Floats up to half an 8-bit
    level outside [0, 1] (rounding) are clamped; anything further out (0..255 floats,
    [-1, 1] images) is refused, as are other integer or boolean types and NaN/Inf.

    Raises
    ------
    InvalidInputError
        Wrong shape, an integer type other than uint8, floats outside [0, 1], or NaN/Inf.
    """
    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(i) for i in images])
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise InvalidInputError(f"{name} must be a batch of RGB images, (N, H, W, 3) or (N, 3, H, W); "
                                f"got shape {tuple(x.shape)}.")
    if x.shape[1] != 3 and x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] != 3:
        raise InvalidInputError(f"{name} must have 3 colour channels; got shape {tuple(x.shape)}.")
    if x.dtype == torch.uint8:
        return x.float().div_(255.0).contiguous()
    if not x.dtype.is_floating_point:
        raise InvalidInputError(
            f"{name} are {str(x.dtype).replace('torch.', '')} values; images must be uint8 (0..255) or floats "
            "in [0, 1]. Convert 0..255 integers with x.astype(np.uint8) (numpy) or x.to(torch.uint8) (torch).")
    x = x.detach().to(torch.float32)
    check_finite(x, name)
    if x.numel():
        lo, hi = float(x.min()), float(x.max())
        if lo < -_ROUNDING or hi > 1 + _ROUNDING:
            raise InvalidInputError(
                f"{name} hold floats in [{lo:.4g}, {hi:.4g}]; float images must lie in [0, 1] (scoring them "
                "clamped would be wrong). Divide 0..255 floats by 255 (or pass uint8); map [-1, 1] images "
                "with (x + 1) / 2; clip anything else to [0, 1] yourself.")
    return x.clamp(0, 1).contiguous()


def as_uint8(images, name: str = "images") -> np.ndarray:
    """``(N, H, W, 3)`` uint8 of images (``round(255 x)``): exactly what a results folder stores.

    Score a method's images through this (``as_tensor(as_uint8(x))``) so that its figures equal
    what ``brainrecon evaluate`` finds in the folder it saved (:func:`~brainrecon.metrics.save_results`).
    """
    if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] == 3:
        return np.ascontiguousarray(images)
    t = as_tensor(images, name)
    return (t * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def resize(x: torch.Tensor, size: int, mode: str = "bilinear", antialias: bool = DEFAULT_ANTIALIAS,
           batch_size: int = 64) -> torch.Tensor:
    """torchvision's tensor ``Resize((size, size))``: ``F.interpolate`` without corner alignment.

    A no-op when the images already have that size (as torchvision's is, numerically).
    """
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    kw = dict(size=(size, size), mode=mode, align_corners=False, antialias=antialias)
    out = [F.interpolate(x[i:i + batch_size], **kw) for i in range(0, len(x), batch_size)]
    out = torch.cat(out) if out else x.new_zeros((0, 3, size, size))
    return out.clamp(0, 1) if mode == "bicubic" else out


def pil_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """brain-diffuser's resize: 8-bit RGB, ``PIL.Image.resize((size, size))`` (bicubic), then /255."""
    u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC)) for a in u8])
    return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255.0


def protocol_base(x: torch.Tensor, protocol: str = "mindeye", antialias: bool = DEFAULT_ANTIALIAS) -> torch.Tensor:
    """The common first step of a protocol: 256×256 bilinear (MindEye) or unchanged (brain-diffuser)."""
    check_choice("protocol", protocol, PROTOCOLS)
    return x if protocol == "brain-diffuser" else resize(x, 256, "bilinear", antialias)


def _to_metric_size(x: torch.Tensor, protocol: str, antialias: bool, size: int = 425) -> torch.Tensor:
    if protocol == "brain-diffuser":
        return pil_resize(x, size)
    return resize(x, size, "bilinear", antialias)


def _check_pairs(rec: torch.Tensor, gt: torch.Tensor) -> None:
    if len(rec) != len(gt):
        raise InvalidInputError(f"reconstructions and targets must pair up one to one; got {len(rec)} "
                                f"reconstructions and {len(gt)} targets.")
    if len(rec) == 0:
        raise InvalidInputError("no images were given.")


def _rowwise_pearson(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Pearson r of matching rows, in float64 (as ``np.corrcoef`` per pair)."""
    a = a.flatten(1).to(torch.float64, copy=True)            # fresh copies: centred in place
    b = b.flatten(1).to(torch.float64, copy=True)
    a -= a.mean(1, keepdim=True)
    b -= b.mean(1, keepdim=True)

    def dot(u, v):                                           # row-wise dot products without a product array
        return torch.bmm(u[:, None, :], v[:, :, None]).view(-1)

    return (dot(a, b) / (dot(a, a) * dot(b, b)).sqrt()).numpy()


def lowlevel_per_image(reconstructions, targets, protocol: str = "mindeye", antialias: bool = DEFAULT_ANTIALIAS,
                       columnwise: bool | None = None, batch_size: int = 32, _based: bool = False,
                       want=("pixcorr", "ssim")) -> dict:
    """PixCorr and SSIM per image from one 425×425 resize per batch: ``{"pixcorr": (N,), "ssim": (N,)}``."""
    if columnwise is None:
        columnwise = protocol == "brain-diffuser"
    rec, gt = (reconstructions, targets) if _based else _prepare(reconstructions, targets, protocol, antialias)
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
    if columnwise:
        kw["channel_axis"] = -1
    out = {k: [] for k in want}
    for i in range(0, len(rec), batch_size):
        g = _to_metric_size(gt[i:i + batch_size], protocol, antialias)
        r = _to_metric_size(rec[i:i + batch_size], protocol, antialias)
        if "pixcorr" in out:
            pc = _rowwise_pearson(g, r)
            pc[_constant(g) | _constant(r)] = np.nan            # r is undefined, whatever rounding left over
            out["pixcorr"].append(pc)
        if "ssim" in out:
            gg, rg = _gray(g), _gray(r)
            out["ssim"].append(np.array([structural_similarity(rg[k], gg[k], **kw) for k in range(len(rg))]))
    res = {k: np.concatenate(v).astype(np.float64) for k, v in out.items()}
    if "pixcorr" in res:
        _warn_constant(res["pixcorr"])
    return res


def _constant(x: torch.Tensor) -> np.ndarray:
    """Images of ``(N, 3, H, W)`` with (up to resampling rounding) a single value: zero variance."""
    flat = x.flatten(1)
    return ((flat.amax(1) - flat.amin(1)) < _CONSTANT).numpy()


def _warn_constant(pixcorr_values: np.ndarray) -> None:
    """Warn that PixCorr is NaN where a reconstruction or target is constant (zero variance)."""
    bad = np.flatnonzero(~np.isfinite(pixcorr_values))
    if bad.size:
        shown = ", ".join(map(str, bad[:10])) + (", ..." if bad.size > 10 else "")
        warnings.warn(f"PixCorr is undefined (NaN) for {bad.size} of {len(pixcorr_values)} image pair(s) whose "
                      f"reconstruction or target is constant (zero variance): pair(s) {shown}. Their NaN makes "
                      "the mean NaN; drop those pairs, or check why the images are blank.", stacklevel=3)


def pixcorr_per_image(reconstructions, targets, protocol: str = "mindeye", antialias: bool = DEFAULT_ANTIALIAS,
                      batch_size: int = 32, _based: bool = False) -> np.ndarray:
    """Per-image PixCorr: Pearson r over all RGB values at 425×425 (§3.1), shape (N,).

    Parameters
    ----------
    reconstructions, targets : array-like
        Paired images (see :func:`as_tensor`).
    protocol : {"mindeye", "neuropictor", "brain-diffuser"}
    antialias : bool
        Antialiasing of the tensor resizes (False = torchvision ≤0.16, as published).
    """
    return lowlevel_per_image(reconstructions, targets, protocol, antialias, batch_size=batch_size, _based=_based,
                              want=("pixcorr",))["pixcorr"]


def pixcorr(reconstructions, targets, protocol: str = "mindeye", antialias: bool = DEFAULT_ANTIALIAS) -> float:
    """PixCorr (mean of :func:`pixcorr_per_image`); 1 for identical images, higher is better."""
    return float(np.mean(pixcorr_per_image(reconstructions, targets, protocol, antialias)))


def _prepare(reconstructions, targets, protocol, antialias):
    rec, gt = as_tensor(reconstructions, "reconstructions"), as_tensor(targets, "targets")
    _check_pairs(rec, gt)
    return protocol_base(rec, protocol, antialias), protocol_base(gt, protocol, antialias)


def _gray(x: torch.Tensor) -> np.ndarray:
    """skimage ``rgb2gray`` (0.2125 R + 0.7154 G + 0.0721 B) of (N, 3, H, W) -> (N, H, W) float64."""
    x = x.double()
    return (0.2125 * x[:, 0] + 0.7154 * x[:, 1] + 0.0721 * x[:, 2]).numpy()


def ssim_per_image(reconstructions, targets, protocol: str = "mindeye", antialias: bool = DEFAULT_ANTIALIAS,
                   columnwise: bool | None = None, batch_size: int = 32, _based: bool = False) -> np.ndarray:
    """Per-image SSIM of grayscale 425×425 images, scikit-image's Gaussian SSIM (§3.2), shape (N,).

    Parameters
    ----------
    reconstructions, targets : array-like
    protocol : {"mindeye", "neuropictor", "brain-diffuser"}
    antialias : bool
    columnwise : bool, optional
        Column-wise 1-D SSIM (scikit-image ≤0.19 with ``multichannel=True``). Default: only
        for ``protocol="brain-diffuser"``; otherwise true 2-D SSIM (``channel_axis=None``).

    Notes
    -----
    ``structural_similarity(rec, gt, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1.0)``, exactly as MindEye/NeuroPictor call it.
    """
    return lowlevel_per_image(reconstructions, targets, protocol, antialias, columnwise, batch_size, _based,
                              want=("ssim",))["ssim"]


def ssim(reconstructions, targets, protocol: str = "mindeye", antialias: bool = DEFAULT_ANTIALIAS,
         columnwise: bool | None = None) -> float:
    """SSIM (mean of :func:`ssim_per_image`); 1 for identical images, higher is better."""
    return float(np.mean(ssim_per_image(reconstructions, targets, protocol, antialias, columnwise)))
