"""MindDiffuser's decoders: one subject's voxels → ``c``, ``z`` and image-encoder features, by ridge (§3.3, §4.2).

::

    from brainrecon.training.minddiffuser import MindDiffuserConfig, train_minddiffuser
    out = train_minddiffuser(MindDiffuserConfig.smoke(output_dir="runs/md"))   # seconds
    pipe = load_reconstructor(out / "reconstructor")                          # voxels -> images

Each decoder is a :class:`~brainrecon.models.ridge.RidgeDecoder` fitted on the subject's training scans
(repeats averaged, as the paper does) with the penalty chosen per target by cross-validation; the
image-encoder layers (``feature_layers``, the shallow ones) first score every dimension by 5-fold
cross-validated Pearson r and keep the best ``select_fraction`` (§4.2: 25 %). Each fitted decoder is
written to ``OUT/checkpoints/minddiffuser/<name>/`` as soon as it is done, so a killed run resumes with
the next one. The finished folder holds ``reconstructor/`` (light: the backbone comes from
``backbone.json``), the run records and ``metrics.json``: every decoder's held-out error against the
training-mean and shuffled-scan baselines, and the cross-validated r of the kept and the dropped
feature dimensions beside the kept ones' r on the held-out scans.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidInputError, check_range
from ..io import atomic_dir
from ..models.minddiffuser import MindDiffuserModel
from ..models.ridge import DEFAULT_ALPHAS, RIDGE_BACKENDS, RidgeDecoder, pearson_columns
from .cache import cache_stage_data
from .run import RunConfig, RunContext, ship_reconstructor

__all__ = ["MindDiffuserConfig", "train_minddiffuser", "ship_minddiffuser"]


@dataclass(frozen=True)
class MindDiffuserConfig(RunConfig):
    """Settings of :func:`train_minddiffuser` (the optimiser fields of :class:`RunConfig` are unused:
    ridge has a closed form)."""

    subject: str = "subj01"
    text_tokens: int = 16            # decoded text positions (§4.2: the first 15 of 77); the rest: training mean
    feature_layers: tuple = (1, 2)   # the image encoder's shallow layers (§4.2: Linear-2, -4, ... of ViT-B/32)
    select_fraction: float = 0.25    # kept share of each layer's dimensions (§4.2)
    folds: int = 5                   # cross-validation folds of the selection (§4.2)
    cv: int = 5                      # folds of each fit's penalty search
    ridge_backend: str = "numpy"     # himalaya backend: "numpy", "torch" or "torch_cuda"
    n_targets_batch: int | None = None

    _SMOKE = dict(toy_preset="smoke", feature_layers=(1,), text_tokens=8, folds=3, cv=3, n_eval=30, progress=False)
    _DEFAULT = dict(n_eval=300)


def _check(cfg: MindDiffuserConfig, bb) -> tuple:
    check_range("text_tokens", cfg.text_tokens, 1, int(bb.text_length))
    check_range("select_fraction", cfg.select_fraction, 1e-6, 1.0, float)
    check_range("folds", cfg.folds, 2)
    check_range("cv", cfg.cv, 2)
    if cfg.ridge_backend not in RIDGE_BACKENDS:
        raise InvalidInputError(f"ridge_backend must be one of {RIDGE_BACKENDS}; got {cfg.ridge_backend!r}.")
    layers = tuple(int(k) for k in cfg.feature_layers)
    n = bb.image_encoder_layers
    if layers and n == 0:
        raise InvalidInputError("MindDiffuser's stage 2 reads the backbone's image encoder, which this backbone "
                                "lacks; add an image_encoder/ folder or set feature_layers=().")
    bad = [k for k in layers if not -n <= k < n]
    if bad:
        raise InvalidInputError(f"feature_layers {list(layers)}: the backbone's image encoder has hidden states "
                                f"0..{n - 1}, so {bad} do not exist.")
    return layers


def _fit_or_resume(folder: Path, fit):
    """A decoder from ``folder`` if an earlier run finished it, else ``fit()`` written there atomically."""
    if (folder / "config.json").is_file():
        return RidgeDecoder.from_pretrained(folder, use_safetensors=True)
    dec = fit()
    with atomic_dir(folder) as tmp:
        dec.save_pretrained(tmp)
    return dec


@torch.no_grad()
def _evaluate(model: MindDiffuserModel, test, subject: str, n: int, train_latents, train_text) -> dict:
    """Held-out figures: each decoder against the training mean and the shuffled-scan baselines."""
    v, r = test.voxels[subject][:n].float(), test.rows(subject)[:n]
    st = model.encode_scans(v)
    perm = torch.roll(torch.arange(len(v)), len(v) // 2)
    t = int(model.text_decoder.config.output_shape[0])
    pairs = [("text", st["text_condition"][:, :t], test.text(r)[:, :t], train_text.mean(0)),
             ("latent", st["init_latents"], test.latents[r], train_latents.mean(0))]
    out = {"n_test": int(len(v))}
    for name, pred, y, mean in pairs:
        out[name] = {"error": float(F.mse_loss(pred, y)), "mean_baseline": float(F.mse_loss(mean.expand_as(y), y)),
                     "shuffled_scan": float(F.mse_loss(pred[perm], y)),
                     "r": float(np.mean(pearson_columns(pred.flatten(1).numpy(), y.flatten(1).numpy())))}
    for k, dec in model.feature_decoders.items():
        y = dec.take(test.features[int(k)][r].float())
        pred = st["features"][int(k)]
        kept = dec.cv_r[dec.selected]
        rest = torch.ones(len(dec.cv_r), dtype=torch.bool)
        rest[dec.selected] = False
        out[f"feature_{k}"] = {
            "error": float(F.mse_loss(pred, y)), "mean_baseline": float(F.mse_loss(dec.bias.float().expand_as(y), y)),   # intercept = training mean
            "shuffled_scan": float(F.mse_loss(pred[perm], y)),
            "kept": int(len(dec.selected)), "dims": int(len(dec.cv_r)),
            "cv_r_kept": float(kept.mean()), "cv_r_dropped": float(dec.cv_r[rest].mean()) if rest.any() else None,
            "test_r_kept": float(np.mean(pearson_columns(pred.numpy(), y.numpy())))}
    return out


def train_minddiffuser(config: MindDiffuserConfig, world=None, backbone=None) -> Path:
    """Fit the subject's three kinds of decoder, save the reconstructor, score it; return the folder.

    Parameters
    ----------
    config : MindDiffuserConfig
    world : ToyWorld, optional
        An already built toy world (else ``config.world`` / ``toy_preset``).
    backbone : Backbone, optional
        Else ``config.backbone`` is loaded.
    """
    cfg = config
    with RunContext(cfg, "minddiffuser", world=world) as ctx:
        bb = ctx.backbone(backbone)
        layers = _check(cfg, bb)
        subject = ctx.subjects([cfg.subject], ())[0]
        train = cache_stage_data(ctx.voxel_dataset([subject], "train"), bb, progress=False, feature_layers=layers)
        test = cache_stage_data(ctx.voxel_dataset([subject], "test"), bb, progress=False, feature_layers=layers)
        rows = train.rows(subject)
        x = train.voxels[subject].float()
        text = train.text(rows).float()
        lat = train.latents[rows].float()
        kw = dict(folds=cfg.folds, alphas=DEFAULT_ALPHAS, cv=cfg.cv, backend=cfg.ridge_backend,
                  n_targets_batch=cfg.n_targets_batch)
        ck = ctx.out / "checkpoints" / "minddiffuser"
        t = int(cfg.text_tokens)
        text_dec = _fit_or_resume(ck / "text_decoder", lambda: RidgeDecoder.fit(x, text[:, :t], **kw))
        lat_dec = _fit_or_resume(ck / "latent_decoder", lambda: RidgeDecoder.fit(x, lat, **kw))
        feats = {k: _fit_or_resume(ck / f"feature_decoder_{k}", lambda k=k: RidgeDecoder.fit(
            x, train.features[k][rows].float(), select_fraction=cfg.select_fraction, **kw)) for k in layers}
        model = MindDiffuserModel(text_dec, lat_dec, feats, subject, text[:, t:].mean(0))
        model.check_backbone(bb)
        metrics = _evaluate(model, test, subject, cfg.n_eval, lat, text[:, :t])
        ctx.save_reconstructor(model, bb, "minddiffuser", subject)
        ctx.finish({"subject": subject, "n_train": int(len(x)), "n_voxels": int(x.shape[1]), **metrics}, {})
    return Path(cfg.output_dir)


def ship_minddiffuser(run_dir, dest, dtype: torch.dtype = torch.float16) -> Path:
    """Copy a run's reconstructor for shipping, its decoders' weights stored as ``dtype`` (fp16 halves them).

    Parameters
    ----------
    run_dir : path-like
        A :func:`train_minddiffuser` output folder.
    dest : path-like
        The reconstructor folder to write (atomically), e.g. ``brainrecon/weights/minddiffuser_toy``.
    dtype : torch.dtype
        Storage dtype of the weights (loading casts them back to the pipeline's).
    """
    def halve(model):
        for dec in [model.text_decoder, model.latent_decoder, *model.feature_decoders.values()]:
            dec.weight.data = dec.weight.data.to(dtype)
    return ship_reconstructor(run_dir, dest, MindDiffuserModel, "minddiffuser", halve)
