"""Cross-validated ridge regression on himalaya: MindDiffuser's decoders and the brain-correlation metric.

Two uses share :func:`fit_ridge`:

* **decoding** (MindDiffuser §3.3, §4.2): :class:`RidgeDecoder` maps a subject's voxels to a feature
  space — the text condition ``c``, the VAE latent ``z``, an image-encoder layer ``Z^i`` — with a
  ridge penalty chosen per target by ``cv``-fold cross-validation (himalaya's ``RidgeCV``; the official
  code's FastL2LiR takes one fixed α). For the layer features it first scores every dimension by the
  Pearson r of out-of-fold predictions (5 folds, as §4.2 says) and keeps the best ``select_fraction``
  (25 %) before refitting those on all the data (:meth:`RidgeDecoder.fit`);
* **encoding** (:class:`~brainrecon.metrics.RidgeEncodingModel`): image features → voxels.

Memory: the fit holds the inputs, the targets and one ``inputs × targets`` coefficient matrix
(one fold's, or the final one, never two at once); himalaya solves ``n_targets_batch`` targets at a time.
At NSD scale (MindDiffuser's sub01: 11,694 voxels, 8,859 training images) a 38,400-dimension CLIP layer's
coefficients take 11,694 × 38,400 × 4 B = 1.8 GB while fitting, and the 25 % kept 0.45 GB (fp32);
the 4 × 64 × 64 latent 0.77 GB, the 15 × 768 text condition 0.54 GB.

Backends are himalaya's: ``"numpy"`` (CPU), ``"torch"`` (CPU), ``"torch_cuda"`` (GPU).
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from ..errors import InvalidInputError, check_finite, check_range

__all__ = ["RidgeDecoder", "fit_ridge", "cross_validated_r", "pearson_columns", "RIDGE_BACKENDS", "DEFAULT_ALPHAS"]

RIDGE_BACKENDS = ("numpy", "torch", "torch_cuda")
#: ridge penalties searched per target (inputs z-scored, so the penalty scales with the sample count)
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-1, 7, 17))


@contextmanager
def _backend(name: str):
    """himalaya's backend ``name`` inside the block, the previous one restored after."""
    from himalaya.backend import get_backend, set_backend

    if name not in RIDGE_BACKENDS:
        raise InvalidInputError(f"ridge backend must be one of {RIDGE_BACKENDS}; got {name!r}.")
    prev = get_backend().name
    try:
        yield set_backend(name, on_error="raise")
    except (ImportError, RuntimeError, ValueError) as err:
        if name == "torch_cuda" and not torch.cuda.is_available():
            raise InvalidInputError("ridge backend 'torch_cuda' needs a CUDA GPU; this machine has none (use "
                                    "'numpy' or 'torch').") from err
        raise
    finally:
        set_backend(prev)


def _check_xy(x, y):
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.float32)
    if x.ndim != 2 or y.ndim != 2:
        raise InvalidInputError(f"ridge needs 2-D inputs (n, p) and targets (n, d); got {x.shape} and {y.shape}.")
    if len(x) != len(y):
        raise InvalidInputError(f"{len(x)} input rows but {len(y)} target rows; they must pair up.")
    if len(x) < 4:
        raise InvalidInputError(f"ridge needs at least 4 samples to cross-validate; got {len(x)}.")
    check_finite(torch.from_numpy(x), "ridge inputs")
    check_finite(torch.from_numpy(y), "ridge targets")
    return x, y


def fit_ridge(x, y, alphas=DEFAULT_ALPHAS, cv: int = 5, backend: str = "numpy", n_targets_batch: int | None = None):
    """Ridge ``y ≈ x W + b`` with the penalty picked per target column by ``cv``-fold cross-validation.

    Parameters
    ----------
    x : array (n, p)
        Inputs (standardise them first: the penalties are searched on one scale).
    y : array (n, d)
        Targets.
    alphas : sequence of float
        Penalties searched.
    cv : int
        Folds of the penalty search (contiguous, unshuffled: deterministic).
    backend : {"numpy", "torch", "torch_cuda"}
        himalaya's backend.
    n_targets_batch : int, optional
        Targets solved at once (bounds the solver's working memory).

    Returns
    -------
    weight : ndarray (p, d) float32
    bias : ndarray (d,) float32
    best_alpha : ndarray (d,) float32
    """
    from himalaya.kernel_ridge import KernelRidgeCV
    from himalaya.ridge import RidgeCV

    x, y = _check_xy(x, y)
    cv = check_range("cv", cv, 2, len(x))
    params = {} if n_targets_batch is None else {"n_targets_batch": int(n_targets_batch),
                                                "n_targets_batch_refit": int(n_targets_batch)}
    a = np.asarray(alphas, np.float32)
    with _backend(backend) as bk:
        if len(x) < x.shape[1]:        # fewer samples than inputs (NSD): the linear-kernel (dual) solver
            model = KernelRidgeCV(alphas=a, kernel="linear", fit_intercept=True, cv=int(cv), solver_params=params)
            model.fit(bk.asarray(x), bk.asarray(y))
            coef = model.get_primal_coef(bk.asarray(x))          # X^T (dual coefficients): (p, d)
        else:
            model = RidgeCV(alphas=a, fit_intercept=True, cv=int(cv), solver_params=params)
            model.fit(bk.asarray(x), bk.asarray(y))
            coef = model.coef_
        out = [np.asarray(bk.to_numpy(v), np.float32) for v in (coef, model.intercept_, model.best_alphas_)]
    return out[0].reshape(x.shape[1], y.shape[1]), out[1].reshape(-1), out[2].reshape(-1)


def pearson_columns(pred, y) -> np.ndarray:
    """Pearson r of each column of ``pred`` with the same column of ``y`` (0 where either is constant)."""
    p = np.asarray(pred, np.float64) - np.mean(pred, 0)
    t = np.asarray(y, np.float64) - np.mean(y, 0)
    den = np.sqrt((p ** 2).sum(0) * (t ** 2).sum(0))
    num = (p * t).sum(0)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0).astype(np.float32)


def cross_validated_r(x, y, folds: int = 5, alphas=DEFAULT_ALPHAS, cv: int = 5, backend: str = "numpy",
                      n_targets_batch: int | None = None) -> np.ndarray:
    """Per target column, the Pearson r of out-of-fold ridge predictions (``folds`` contiguous folds,
    each fitted with its own penalty search): MindDiffuser §4.2's feature-selection score."""
    x, y = _check_xy(x, y)
    folds = check_range("folds", folds, 2, len(x))
    pred = np.empty_like(y)
    edges = np.linspace(0, len(x), folds + 1).astype(int)
    for a, b in zip(edges[:-1], edges[1:]):
        train = np.r_[0:a, b:len(x)]
        mean, scale = _standardiser(x[train])
        w, bias, _ = fit_ridge((x[train] - mean) / scale, y[train], alphas, min(cv, len(train)), backend,
                               n_targets_batch)
        pred[a:b] = ((x[a:b] - mean) / scale) @ w + bias        # this fold's weights are dropped here
    return pearson_columns(pred, y)


def _standardiser(x: np.ndarray):
    mean = x.mean(0)
    scale = x.std(0)
    return mean, np.where(scale > 1e-8, scale, 1.0).astype(np.float32)


class RidgeDecoder(ModelMixin, ConfigMixin):
    """A fitted linear decoder from one subject's voxels to a feature space (MindDiffuser's ``f``).

    ``forward(voxels)`` returns the decoded targets: ``(B, *output_shape)``, or, when only a selection
    of the dimensions was kept (:attr:`selected`), ``(B, K)`` for those ``K`` (flattened indices).
    Build one with :meth:`fit`; save and load it like any diffusers model (safetensors + config).

    Parameters
    ----------
    n_inputs : int
        Voxels.
    output_shape : list of int
        Shape of one full target (e.g. ``[L, d]`` tokens, ``[c, h, w]`` latents).
    n_kept : int, optional
        Dimensions kept (default: all of ``output_shape``).
    """

    @register_to_config
    def __init__(self, n_inputs: int, output_shape: list, n_kept: int | None = None):
        super().__init__()
        n_out = int(np.prod(output_shape))
        k = n_out if n_kept is None else int(n_kept)
        if not (0 < k <= n_out and int(n_inputs) > 0):
            raise InvalidInputError(f"RidgeDecoder needs n_inputs > 0 and 0 < n_kept <= {n_out}; got "
                                    f"{n_inputs} and {n_kept}.")
        self.register_buffer("input_mean", torch.zeros(int(n_inputs)))
        self.register_buffer("input_scale", torch.ones(int(n_inputs)))
        self.register_buffer("weight", torch.zeros(int(n_inputs), k))
        self.register_buffer("bias", torch.zeros(k))
        self.register_buffer("selected", torch.arange(k, dtype=torch.long))
        #: cross-validated r of every full dimension (the selection's score; empty without selection)
        self.register_buffer("cv_r", torch.zeros(n_out if n_kept is not None else 0))
        #: the penalty chosen for each kept dimension
        self.register_buffer("alpha", torch.zeros(k))

    @property
    def is_selective(self) -> bool:
        """Whether only some dimensions were kept (:attr:`selected` indexes the flattened target)."""
        return self.config.n_kept is not None

    def forward(self, voxels: torch.Tensor) -> torch.Tensor:
        n = int(self.config.n_inputs)
        if voxels.ndim != 2 or voxels.shape[1] != n:
            raise InvalidInputError(f"this decoder reads (B, {n}) voxel vectors; got {tuple(voxels.shape)}.")
        w = self.weight.float()           # stored fp16 when shipped; computed in fp32
        x = (voxels.float() - self.input_mean.float()) / self.input_scale.float()
        out = x @ w + self.bias.float()
        return out if self.is_selective else out.reshape(len(out), *self.config.output_shape)

    def take(self, full: torch.Tensor) -> torch.Tensor:
        """The kept dimensions of full targets ``(B, *output_shape)`` → ``(B, K)`` (what ``forward`` returns)."""
        return full.flatten(1)[:, self.selected.to(full.device)]

    @classmethod
    def fit(cls, voxels, targets, select_fraction: float | None = None, folds: int = 5, alphas=DEFAULT_ALPHAS,
            cv: int = 5, backend: str = "numpy", n_targets_batch: int | None = None) -> "RidgeDecoder":
        """Fit on training voxels ``(n, V)`` and targets ``(n, *shape)``.

        Parameters
        ----------
        voxels, targets : array or Tensor
        select_fraction : float in (0, 1], optional
            Keep only this share of the target dimensions, those best predicted by ``folds``-fold
            cross-validation (Pearson r of out-of-fold predictions), refitted on all the data
            (MindDiffuser §4.2: 0.25, 5 folds). ``None``: every dimension, no selection pass.
        folds, alphas, cv, backend, n_targets_batch
            See :func:`cross_validated_r` and :func:`fit_ridge`.
        """
        x = np.asarray(torch.as_tensor(voxels).float().numpy(), np.float32)
        t = torch.as_tensor(targets).float()
        shape = [int(s) for s in t.shape[1:]]
        y = t.flatten(1).numpy()
        x, y = _check_xy(x, y)
        r = None
        keep = np.arange(y.shape[1])
        if select_fraction is not None:
            frac = check_range("select_fraction", select_fraction, 1e-6, 1.0, float)
            r = cross_validated_r(x, y, folds, alphas, cv, backend, n_targets_batch)
            k = max(1, int(round(frac * y.shape[1])))
            keep = np.sort(np.argsort(-r, kind="stable")[:k])
        mean, scale = _standardiser(x)
        w, b, a = fit_ridge((x - mean) / scale, y[:, keep], alphas, cv, backend, n_targets_batch)
        dec = cls(x.shape[1], shape, None if select_fraction is None else len(keep))
        with torch.no_grad():
            dec.input_mean.copy_(torch.from_numpy(mean))
            dec.input_scale.copy_(torch.from_numpy(scale))
            dec.weight.copy_(torch.from_numpy(w))
            dec.bias.copy_(torch.from_numpy(b))
            dec.alpha.copy_(torch.from_numpy(a))
            dec.selected.copy_(torch.from_numpy(keep))
            if r is not None:
                dec.cv_r.copy_(torch.from_numpy(r))
        return dec.eval().requires_grad_(False)
