"""NeuroPictor's three training stages as importable functions (NeuroPictor §3, §4.1).

Each stage takes a frozen config, writes a folder and returns its path; the next stage starts
from that folder::

    enc = pretrain_encoder(EncoderPretrainConfig.default(output_dir="runs/np/i"))
    pre = pretrain_multisubject(MultisubjectConfig.default(encoder_dir=enc, output_dir="runs/np/ii"))
    sub = refine_subject(RefineConfig.default(init_from=pre, subject="subj01", output_dir="runs/np/iii"))

* **i · calibrated encoding** (:func:`pretrain_encoder`): the guide-token MAE
  (:class:`~brainrecon.models.CalibratedEncoder`) rebuilds flatmaps of all subjects from one
  token; loss on cortex pixels only.
* **ii · multi-subject pre-training** (:func:`pretrain_multisubject`): encoder + HLGN + LLMN
  trained on every subject's pairs with the U-Net, VAE and text encoder frozen, no auxiliary
  branch; loss ``L_dif + λ·L_sem`` (Eq. 8, 9, 3); then a classifier-free-guidance phase in
  which ``cfg_drop`` (5 %) of semantic conditions become the empty caption's embedding (§4.1).
* **iii · single-subject refining** (:func:`refine_subject`): one subject, auxiliary branch
  added (zero-initialised, so training starts exactly at the stage-ii model), λ = 0.1, CFG
  phase; ``init_from=None`` trains the same network from scratch on that subject (Tab. 2's
  "no multi-subject pre-training"), ``train_fraction`` uses part of the subject's data.

The toy presets (``.default()``, ``.smoke()``) add two terms to stages ii–iii that the paper does
not have, ``layout_weight`` (a training-only probe reads ``z_0`` from the LLMN's ``F_0``) and
``x0_weight_max`` (ε-errors weighted towards high noise); without them the toy LLMN learns a
correction that ignores the scan (:mod:`~brainrecon.training.neuropictor_objective`). For the paper's
objective pass ``layout_weight=0, x0_weight_max=None``.

Everything runs through :func:`~brainrecon.training.fit` (accelerate: CPU, one GPU, or
``accelerate launch`` on several; bf16 on GPUs by default), checkpoints under
``OUT/checkpoints/`` and resumes exactly after a kill: call the stage again with the same
config. The frozen computations (flatmaps, VAE latents, caption features, the empty-caption
embedding) run once per call (:mod:`brainrecon.training.cache`). Shapes come from the
backbone and the maps, never from constants, so the same code trains on NSD
(``world=<NSD root>``, ``backbone=<SD folder>``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InvalidInputError
from ..io import atomic_dir
from ..models import CalibratedEncoder, NeuroPictorModel
from . import cache as sd
from .neuropictor_objective import train_denoiser
from .neuropictor_scores import score_encoder
from .run import RunConfig, RunContext, read_stage_config

__all__ = ["EncoderPretrainConfig", "MultisubjectConfig", "RefineConfig", "pretrain_encoder",
           "pretrain_multisubject", "refine_subject", "ENCODER_FILES", "MODEL_FILES"]

#: Files a stage-i folder must hold.
ENCODER_FILES = ("config.json", "encoder/config.json", "encoder/diffusion_pytorch_model.safetensors")
#: Files a stage-ii/iii folder must hold.
MODEL_FILES = ("config.json", "model/encoder/config.json", "model/hlgn/config.json", "model/llmn/config.json")


@dataclass(frozen=True)
class EncoderPretrainConfig(RunConfig):
    """Stage i settings: calibrated encoding (NeuroPictor §3.1).

    Flatmap: ``resolution`` × ``resolution`` pixels, ``crop`` (``"visual"``: NeuroPictor's
    visual-cortex crop; ``None``: whole cortex). ``repeats="each"`` trains on single trials
    (3× the maps of the repeat averages). The encoder/decoder sizes are
    :class:`~brainrecon.models.CalibratedEncoder`'s; ``mask_ratio`` hides input patches (the
    decoder always sees only the guide token). ``subjects=None``: every subject of the world,
    minus ``exclude_subjects``.
    """

    subjects: tuple | None = None
    exclude_subjects: tuple = ()
    resolution: int = 64
    crop: str | None = "visual"
    repeats: str = "each"
    patch_size: int = 8
    embed_dim: int = 64
    depth: int = 4
    num_heads: int = 4
    decoder_embed_dim: int = 64
    decoder_depth: int = 2
    decoder_num_heads: int = 4
    mask_ratio: float = 0.0

    _SMOKE = dict(toy_preset="smoke", resolution=32, embed_dim=32, depth=2, decoder_embed_dim=32,
                  decoder_depth=1, steps=40, batch_size=32, lr=2e-3, warmup_steps=5, checkpoint_every=20,
                  n_eval=40, progress=False)
    _DEFAULT = dict(steps=1500, batch_size=64, lr=1e-3, warmup_steps=100, checkpoint_every=250, n_eval=800)

    def encoder_kwargs(self) -> dict:
        return dict(image_size=self.resolution, patch_size=self.patch_size, in_channels=1,
                    embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads,
                    decoder_embed_dim=self.decoder_embed_dim, decoder_depth=self.decoder_depth,
                    decoder_num_heads=self.decoder_num_heads, mask_ratio=self.mask_ratio)


@dataclass(frozen=True)
class _DenoiseCommon(RunConfig):
    encoder_dir: str | None = None   # stage-i folder; None: a fresh (Xavier-initialised) encoder
    resolution: int | None = None    # None: the stage-i encoder's map size
    crop: str | None = "inherit"     # "inherit": the stage-i crop
    repeats: str = "average"
    hlgn_hidden_tokens: int = 64
    llmn_hidden_tokens: int | None = None
    semantic_weight: float = 0.1     # λ of Eq. 9
    train_encoder: bool = True       # False: Tab. 2's "frozen" encoder
    cfg_steps: int = 100             # classifier-free-guidance phase (§4.1)
    cfg_lr: float = 1e-4
    cfg_drop: float = 0.05           # share of semantic conditions replaced by the empty caption
    gradient_checkpointing: bool = False
    # Two additions to the paper's objective (0 / None = the paper's; the toy presets turn them on,
    # see DenoisingObjective and data_cards/neuropictor_toy.md for why and what they change):
    layout_weight: float = 0.0       # μ of μ·MSE(P(F_0), z_0), P a training-only 1×1 conv probe
    x0_weight_max: float | None = None   # γ: weight timestep t by min((1-ᾱ_t)/ᾱ_t, γ), mean 1

    def __post_init__(self):
        if self.layout_weight < 0:
            raise InvalidInputError(f"layout_weight must be ≥ 0; got {self.layout_weight}.")
        if self.x0_weight_max is not None and not self.x0_weight_max > 0:
            raise InvalidInputError(f"x0_weight_max must be > 0 or None; got {self.x0_weight_max}.")


@dataclass(frozen=True)
class MultisubjectConfig(_DenoiseCommon):
    """Stage ii settings: multi-subject pre-training (NeuroPictor §3.4, "Training Strategy").

    Every subject (minus ``exclude_subjects``, e.g. a held-out one) trains one model: encoder
    (from ``encoder_dir``) + HLGN (no auxiliary branch) + LLMN; U-Net, VAE and text encoder
    frozen. The official code uses λ = 0 here (reference/peers.md §1.6); the toy recipe keeps
    λ = 0.1 (``semantic_weight``) so F̃^txt reaches the text space early.
    """

    subjects: tuple | None = None
    exclude_subjects: tuple = ()

    _SMOKE = dict(toy_preset="smoke", steps=12, cfg_steps=4, batch_size=16, lr=1e-3, warmup_steps=2,
                  checkpoint_every=4, hlgn_hidden_tokens=16, n_eval=16, progress=False, layout_weight=1.0,
                  x0_weight_max=50.0)
    _DEFAULT = dict(steps=4000, cfg_steps=200, batch_size=32, lr=5e-4, cfg_lr=1e-4, warmup_steps=100,
                    checkpoint_every=200, n_eval=200, layout_weight=1.0, x0_weight_max=50.0)


@dataclass(frozen=True)
class RefineConfig(_DenoiseCommon):
    """Stage iii settings: single-subject refining (NeuroPictor §3.4).

    ``init_from``: a stage-ii folder; ``None`` trains from scratch on this subject (HLGN and
    LLMN fresh, encoder from ``encoder_dir`` or fresh) — the paper's Tab. 2 baseline.
    ``train_fraction`` keeps that share of the subject's training rows (seeded), e.g. 0.1
    for a held-out subject with little data. ``auxiliary`` adds HLGN's zero-initialised
    auxiliary branch (Eq. 4).
    """

    init_from: str | None = None
    subject: str = "subj01"
    train_fraction: float = 1.0
    auxiliary: bool = True

    _SMOKE = dict(toy_preset="smoke", steps=12, cfg_steps=4, batch_size=16, lr=1e-3, warmup_steps=2,
                  checkpoint_every=4, hlgn_hidden_tokens=16, n_eval=16, progress=False, layout_weight=1.0,
                  x0_weight_max=50.0)
    _DEFAULT = dict(steps=800, cfg_steps=100, batch_size=32, lr=3e-4, cfg_lr=5e-5, warmup_steps=50,
                    checkpoint_every=200, n_eval=100, layout_weight=1.0, x0_weight_max=50.0)


# =============================================================================== stage i
def pretrain_encoder(config: EncoderPretrainConfig, *, world=None, callbacks=()) -> Path:
    """Stage i: train the guide-token calibrated encoder on all subjects' flatmaps (§3.1, Eq. 1).

    Parameters
    ----------
    config : EncoderPretrainConfig
    world : ToyWorld, optional
        A prebuilt toy world to use instead of building ``config.toy_preset`` (saves time when
        several stages run in one process; its config is recorded in ``run.json``).
    callbacks : sequence of callable
        Passed to :func:`fit` (``cb(step, logs)`` after each step; raising stops the run, which
        a second call with the same config resumes from its last checkpoint).

    Returns
    -------
    Path
        ``config.output_dir`` with ``encoder/`` (decoder kept), ``config.json``, ``metrics.json``
        (held-out r / MSE vs the training mean map), ``history.json``, ``run.json``.
    """
    cfg = config
    with RunContext(cfg, "pretrain_encoder", world, callbacks) as run:
        subjects = run.subjects(cfg.subjects, cfg.exclude_subjects)
        train = sd.cache_stage_data(run.dataset(subjects, "train", cfg.resolution, cfg.crop, cfg.repeats),
                                    progress=cfg.progress, desc="stage i")
        test = sd.cache_stage_data(run.dataset(subjects, "test", cfg.resolution, cfg.crop, "average"),
                                   progress=False)
        torch.manual_seed(cfg.seed)
        encoder = CalibratedEncoder(**cfg.encoder_kwargs())
        mask = train.pixel_mask
        rank = run.rank

        def batches(step):
            return {"maps": train.batch(sd.sample_indices(len(train), cfg.batch_size, cfg.seed, 1, step, rank))["maps"],
                    "mask": mask}

        def loss_fn(model, batch, step):
            loss, _ = model(batch["maps"], pixel_mask=batch["mask"])
            return loss

        res = run.fit(encoder, loss_fn, batches, cfg.fit_config(cfg.steps, cfg.lr, "stage i · encoder"), "main")
        encoder = res.model.float().cpu().eval()
        metrics = score_encoder(encoder, test.maps[: cfg.n_eval], mask, train.maps.float().mean(0))
        metrics["subjects"] = subjects
        if run.is_main:
            with atomic_dir(run.out / "encoder") as d:
                encoder.save_pretrained(d)
        run.finish(metrics, {"main": res})
    return run.out


# =============================================================================== stages ii, iii
def _load_encoder(cfg, run):
    """Stage-i encoder (decoder dropped) and the flatmap settings it was trained on."""
    if cfg.encoder_dir is None:
        arch = EncoderPretrainConfig.default()
        res = cfg.resolution or arch.resolution
        crop = arch.crop if cfg.crop == "inherit" else cfg.crop
        torch.manual_seed(cfg.seed)
        enc = CalibratedEncoder(**{**arch.encoder_kwargs(), "image_size": res})
        return enc.drop_decoder(), res, crop
    d = sd.require_files(cfg.encoder_dir, ENCODER_FILES, "stage-i (calibrated encoding)", "pretrain_encoder")
    prev = read_stage_config(d)
    enc = sd.load_part(CalibratedEncoder.from_pretrained, d / "encoder", "the calibrated encoder")
    res = cfg.resolution if cfg.resolution is not None else enc.config.image_size
    sd.check_map_size(enc.config.image_size, res, f"stage ii/iii from {d}")
    crop = prev.get("crop", "visual") if cfg.crop == "inherit" else cfg.crop
    return enc.drop_decoder(), res, crop


def pretrain_multisubject(config: MultisubjectConfig, *, world=None, backbone=None, callbacks=()) -> Path:
    """Stage ii: multi-subject fMRI-to-image pre-training (§3.4; Eq. 8, 9, 3), then the CFG phase.

    Parameters
    ----------
    config : MultisubjectConfig
    world : ToyWorld, optional
        Prebuilt toy world (see :func:`pretrain_encoder`).
    backbone : Backbone, optional
        Preloaded backbone (default: ``load_backbone(config.backbone)``).
    callbacks : sequence of callable
        See :func:`pretrain_encoder`.

    Returns
    -------
    Path
        ``config.output_dir`` with ``model/`` (``NeuroPictorModel.save_pretrained``),
        ``backbone.json``, ``config.json``, ``metrics.json``, ``history.json``, ``run.json``.
    """
    cfg = config
    with RunContext(cfg, "pretrain_multisubject", world, callbacks) as run:
        encoder, res, crop = _load_encoder(cfg, run)
        bb = run.backbone(backbone)
        subjects = run.subjects(cfg.subjects, cfg.exclude_subjects)
        train = sd.cache_stage_data(run.dataset(subjects, "train", res, crop, cfg.repeats), bb,
                                    progress=cfg.progress, desc="stage ii")
        test = sd.cache_stage_data(run.dataset(subjects, "test", res, crop, "average"), bb, progress=False)
        torch.manual_seed(cfg.seed + 1)
        model = NeuroPictorModel.from_backbone(bb, encoder, use_auxiliary=False,
                                               hlgn_hidden_tokens=cfg.hlgn_hidden_tokens,
                                               llmn_hidden_tokens=cfg.llmn_hidden_tokens)
        model, results, metrics = train_denoiser(run, cfg, model, train, test, bb, tag=2)
        metrics["subjects"] = subjects
        run.save_model(model, bb, res, crop, subject=None)
        run.finish(metrics, results, flatmap={"resolution": res, "crop": crop})
    return run.out


def refine_subject(config: RefineConfig, *, world=None, backbone=None, callbacks=()) -> Path:
    """Stage iii: single-subject refining (§3.4), auxiliary branch on, then the CFG phase.

    Parameters
    ----------
    config : RefineConfig
        ``init_from`` a stage-ii folder, or ``None`` for the from-scratch baseline (Tab. 2).
    world, backbone, callbacks
        As :func:`pretrain_multisubject`.

    Returns
    -------
    Path
        ``config.output_dir`` with ``model/``, ``backbone.json`` (backbone name or folder and
        flatmap settings: enough to rebuild the reconstructor), ``config.json``,
        ``metrics.json`` (held-out scans of ``subject``), ``history.json``, ``run.json``.
    """
    cfg = config
    if not 0 < cfg.train_fraction <= 1:
        raise InvalidInputError(f"train_fraction must be in (0, 1]; got {cfg.train_fraction}.")
    with RunContext(cfg, "refine_subject", world, callbacks) as run:
        subject = run.subjects([cfg.subject], ())[0]
        bb = run.backbone(backbone)
        if cfg.init_from is not None:
            d = sd.require_files(cfg.init_from, MODEL_FILES, "stage-ii (multi-subject pre-training)",
                                 "pretrain_multisubject")
            prev = read_stage_config(d)
            model = sd.load_part(NeuroPictorModel.from_pretrained, d / "model", "the NeuroPictor model")
            res = cfg.resolution if cfg.resolution is not None else model.encoder.config.image_size
            sd.check_map_size(model.encoder.config.image_size, res, f"refine_subject from {d}")
            crop = prev.get("flatmap", {}).get("crop", prev.get("crop")) if cfg.crop == "inherit" else cfg.crop
            model = model.to(bb.device)
        else:
            encoder, res, crop = _load_encoder(cfg, run)
            torch.manual_seed(cfg.seed + 1)
            model = NeuroPictorModel.from_backbone(bb, encoder, hlgn_hidden_tokens=cfg.hlgn_hidden_tokens,
                                                   llmn_hidden_tokens=cfg.llmn_hidden_tokens)
        if cfg.auxiliary:
            torch.manual_seed(cfg.seed + 2)
            model.hlgn.add_auxiliary()                                         # Eq. 4, zero-initialised
        train = sd.cache_stage_data(run.dataset([subject], "train", res, crop, cfg.repeats), bb,
                                    progress=cfg.progress, desc="stage iii")
        if cfg.train_fraction < 1:
            g = torch.Generator().manual_seed(cfg.seed + 3)
            keep = torch.randperm(len(train), generator=g)[: max(1, round(cfg.train_fraction * len(train)))]
            train = train.subset(keep.sort().values)
        test = sd.cache_stage_data(run.dataset([subject], "test", res, crop, "average"), bb, progress=False)
        model, results, metrics = train_denoiser(run, cfg, model, train, test, bb, tag=3)
        metrics.update(subject=subject, n_train_rows=len(train), init="stage ii" if cfg.init_from else "scratch")
        run.save_model(model, bb, res, crop, subject=subject)
        run.finish(metrics, results, flatmap={"resolution": res, "crop": crop})
    return run.out
