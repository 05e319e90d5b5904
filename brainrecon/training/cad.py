"""Contrast, Attend and Diffuse's fMRI representation learning (FRL, CAD §3.2): phases 1 and 2.

:func:`train_cad_frl` runs, in one resumable folder, with the shared loop (``RunContext.fit``):

* **image MAE** (toy world only): a small ``transformers`` ViT MAE trained on the world's scenes — the
  toy stand-in for the paper's pre-trained ``facebook/vit-mae-base``, which a real-world run loads from
  ``config.image_mae`` (a local folder) instead;
* **phase 1**: the :class:`~brainrecon.models.dcmae.DoubleContrastiveMAE` on the subject's training
  responses, every repeat a sample (unlabelled: no image is read), with ``cross_weight`` / ``self_weight``
  (0 and 0: the plain-MAE ablation);
* **phase 2**: :class:`~brainrecon.models.cross_modal.CrossModalMAE` on the (response, seen image) pairs.

It writes ``OUT/fmri_mae/`` (phase 2's fMRI auto-encoder; phase 3 conditions the U-Net on its encoder),
``OUT/image_mae/`` (toy) and ``metrics.json``: the held-out masked-voxel MSE after each phase against the
training-mean response (the same masks for every row). Phase 3 (LDM conditioning) follows in
:func:`brainrecon.training.cad_ldm.train_cad`, which runs these phases first in the same folder.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidInputError, check_range
from ..io import atomic_dir
from ..models.cross_modal import CrossModalMAE
from ..models.dcmae import DoubleContrastiveMAE
from .run import RunConfig, RunContext

__all__ = ["CADConfig", "train_cad_frl", "run_frl", "check_frl_config", "make_toy_image_mae"]


@dataclass(frozen=True)
class CADConfig(RunConfig):
    """Settings of :func:`train_cad_frl` (``steps``: phase 1's; the paper's sizes in the comments)."""

    subject: str = "subj01"
    input_kind: str = "voxels"          # the paper's 1-D voxel vector, or "flatmap"
    patch_size: int = 16                # 16
    embed_dim: int = 128                # 1024
    depth: int = 4                      # 24
    num_heads: int = 4                  # 16
    decoder_embed_dim: int = 64         # 512
    decoder_depth: int = 2              # 8
    decoder_num_heads: int = 4          # 16
    mlp_ratio: float = 1.0              # 1.0 (official config)
    mask_ratio: float = 0.75            # 0.5 or 0.75
    sparsify: float = 0.2               # random sparsification, 20 %
    cross_weight: float = 0.5           # γ_C (1 or 0.5)
    self_weight: float = 1.0            # γ_S
    temperature: float = 0.1
    phase2_steps: int = 600
    phase2_lr: float = 3e-4
    fmri_weight: float = 0.25           # γ_F (Tab. 2, ID 14)
    image_weight: float = 1.5           # γ_I
    image_mask_ratio: float = 0.5
    image_mae: str | None = None        # a local ViTMAEForPreTraining folder (NSD: facebook/vit-mae-base)
    image_mae_steps: int = 1500         # toy: the image MAE's own pre-training
    ldm_steps: int = 1500               # phase 3 (§4.2.2: the fMRI encoder and the U-Net's cross-attention)
    ldm_lr: float = 3e-4                # 5.5e-5 at batch 5 in the paper
    cond_drop: float = 0.0              # share of conditions replaced by the empty caption (0: no CFG, the paper)

    _SMOKE = dict(toy_preset="smoke", steps=12, phase2_steps=8, image_mae_steps=8, ldm_steps=8, batch_size=16, lr=2e-3,
                  warmup_steps=2, checkpoint_every=6, embed_dim=32, depth=1, decoder_embed_dim=16,
                  decoder_depth=1, n_eval=30, progress=False)
    # toy: phase 3 at lr 1e-3 (at the paper's lr it learns nearly nothing in 1,500 CPU steps) and with 10 %
    # of conditions dropped, so it samples at the toy U-Net's guidance 5 (data_cards/cad_toy.md)
    _DEFAULT = dict(steps=1500, batch_size=64, lr=1e-3, warmup_steps=100, checkpoint_every=250, n_eval=200,
                    ldm_lr=1e-3, cond_drop=0.1)


def make_toy_image_mae(image_size: int, seed: int = 0, small: bool = False):
    """A small ``ViTMAEForPreTraining`` for ``image_size`` toy scenes (patch side ``image_size / 8``)."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    torch.manual_seed(seed)
    w = 32 if small else 96
    cfg = ViTMAEConfig(image_size=int(image_size), patch_size=max(1, int(image_size) // 8), num_channels=3,
                       hidden_size=w, num_hidden_layers=1 if small else 4, num_attention_heads=4,
                       intermediate_size=2 * w, decoder_hidden_size=w // 2, decoder_num_hidden_layers=1 if small else 2,
                       decoder_num_attention_heads=4, decoder_intermediate_size=w, mask_ratio=0.75)
    return ViTMAEForPreTraining(cfg)


def _load_image_mae(path):
    from transformers import ViTMAEForPreTraining

    folder = Path(path)
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise InvalidInputError(f"image_mae={str(path)!r}: expected a ViTMAEForPreTraining folder with config.json "
                                f"and *.safetensors weights (searched {folder / 'config.json'} and "
                                f"{folder / '*.safetensors'}); e.g. facebook/vit-mae-base saved locally.")
    return ViTMAEForPreTraining.from_pretrained(folder, use_safetensors=True)


def _new_fmri_mae(cfg: CADConfig, n_voxels: int, cross: float, self_: float) -> DoubleContrastiveMAE:
    torch.manual_seed(cfg.seed)
    return DoubleContrastiveMAE(num_voxels=n_voxels, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim,
                                depth=cfg.depth, num_heads=cfg.num_heads, decoder_embed_dim=cfg.decoder_embed_dim,
                                decoder_depth=cfg.decoder_depth, decoder_num_heads=cfg.decoder_num_heads,
                                mlp_ratio=cfg.mlp_ratio, mask_ratio=cfg.mask_ratio, sparsify=cfg.sparsify,
                                cross_weight=cross, self_weight=self_, temperature=cfg.temperature)


def _generator(seed: int, tag: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + tag * 10_007 + int(step))


@torch.no_grad()
def _held_out_mse(fmri: DoubleContrastiveMAE, x: torch.Tensor, mean: torch.Tensor, seed: int) -> dict:
    """Masked-voxel MSE of held-out responses (fixed masks) against predicting the training mean there."""
    fmri.eval()
    g = _generator(seed, 99, 0)
    t, r, mask = fmri.encode(x, fmri.config.mask_ratio, g)
    err = float(fmri.masked_mse(fmri.decode(t, r), x, mask))
    base = float(fmri.masked_mse(fmri.patchify(mean.expand_as(x)), x, mask))
    fmri.train()
    return {"masked_mse": err, "mean_baseline": base}


def train_cad_frl(config: CADConfig, world=None) -> Path:
    """Image MAE (toy), FRL phase 1 and phase 2 for ``config.subject``; return the output folder.

    Parameters
    ----------
    config : CADConfig
    world : ToyWorld, optional
        An already built toy world (else ``config.world`` / ``toy_preset``).
    """
    cfg = config
    check_frl_config(cfg, world)
    with RunContext(cfg, "cad_frl", world=world) as ctx:
        fmri, metrics, results = run_frl(ctx, cfg)
        ctx.finish(metrics, results)
    return Path(cfg.output_dir)


def check_frl_config(cfg: CADConfig, world=None) -> None:
    """Refuse FRL settings that cannot run, before any data is read."""
    check_range("phase2_steps", cfg.phase2_steps, 0)
    check_range("image_mae_steps", cfg.image_mae_steps, 0)
    if cfg.input_kind != "voxels":
        raise InvalidInputError("train_cad_frl reads voxel vectors for now (input_kind='voxels', the paper's); "
                                "DoubleContrastiveMAE itself also takes flatmaps.")
    if cfg.image_mae is None and world is None and cfg.world != "toy":
        raise InvalidInputError("phase 2 on NSD needs a pre-trained image MAE: pass image_mae=<a local "
                                "ViTMAEForPreTraining folder, e.g. facebook/vit-mae-base> (the toy image MAE is "
                                "trained on toy scenes only).")


def run_frl(ctx: RunContext, cfg: CADConfig) -> tuple:
    """FRL phases 1 and 2 (and the toy image MAE) inside an open run; ``(fmri, metrics, results)``.

    Writes ``OUT/fmri_mae/`` (and ``OUT/image_mae/``); each phase resumes from its checkpoints."""
    subject = ctx.subjects([cfg.subject], ())[0]
    train = ctx.voxel_dataset([subject], "train", repeats="each")
    paired = ctx.voxel_dataset([subject], "train")
    test = ctx.voxel_dataset([subject], "test")
    x_train = torch.as_tensor(np.asarray(train.records[0].responses, np.float32))
    x_test = torch.as_tensor(np.asarray(test.records[0].responses, np.float32))[:cfg.n_eval]
    mean = x_train.mean(0, keepdim=True)
    results, metrics = {}, {"subject": subject, "n_voxels": int(x_train.shape[1]),
                            "n_train_responses": int(len(x_train))}

    # image MAE: loaded (real world) or trained on the world's scenes (toy)
    if cfg.image_mae is not None:
        image = _load_image_mae(cfg.image_mae)
    else:
        done = ctx.out / "image_mae"
        if (done / "config.json").is_file():          # an earlier run of this folder trained it
            image = _load_image_mae(done)
        else:
            size = int(paired[0]["image"].shape[-1])
            image = make_toy_image_mae(size, cfg.seed, small=cfg.toy_preset == "smoke")
            keys = np.unique(np.concatenate([r.image_keys for r in paired.records]))
            imgs = torch.stack([paired[i]["image"] for i in range(len(paired))])

            def image_batch(step):
                rng = np.random.default_rng([cfg.seed, 21, int(step)])
                return (imgs[torch.as_tensor(rng.integers(0, len(imgs), cfg.batch_size))],)

            n_patch = (size // int(image.config.patch_size)) ** 2

            def image_loss(m, batch, step):
                noise = torch.rand(len(batch[0]), n_patch, generator=_generator(cfg.seed, 3, step))
                return m(pixel_values=batch[0], noise=noise.to(batch[0].device)).loss
            results["image_mae"] = ctx.fit(image, image_loss, image_batch,
                                           cfg.fit_config(cfg.image_mae_steps, cfg.lr, "CAD image MAE", tag=3),
                                           "image_mae")
            if ctx.is_main:
                with atomic_dir(done) as tmp:
                    image.save_pretrained(tmp, safe_serialization=True)
            metrics["image_mae_images"] = int(len(keys))

    # phase 1: the DC-MAE on every training response (no image)
    fmri = _new_fmri_mae(cfg, int(x_train.shape[1]), cfg.cross_weight, cfg.self_weight)

    def fmri_batch(step):
        rng = np.random.default_rng([cfg.seed, 22, int(step)])
        return (x_train[torch.as_tensor(rng.integers(0, len(x_train), cfg.batch_size))],)

    results["phase1"] = ctx.fit(fmri, lambda m, b, s: m(b[0], _generator(cfg.seed, 1, s)), fmri_batch,
                                cfg.fit_config(cfg.steps, cfg.lr, "CAD phase 1 (DC-MAE)", tag=1), "phase1")
    metrics["phase1"] = _held_out_mse(fmri, x_test, mean, cfg.seed)

    # phase 2: tuned with the image MAE through cross-attention, on (response, seen image) pairs
    if cfg.phase2_steps > 0:
        cross = CrossModalMAE.build(fmri, image, fmri_weight=cfg.fmri_weight, image_weight=cfg.image_weight,
                                    fmri_mask_ratio=cfg.mask_ratio, image_mask_ratio=cfg.image_mask_ratio)
        x_pair = torch.as_tensor(np.asarray(paired.records[0].responses, np.float32))
        s = int(image.config.image_size)

        def pair_batch(step):
            rng = np.random.default_rng([cfg.seed, 23, int(step)])
            i = rng.integers(0, len(x_pair), cfg.batch_size)
            u = torch.stack([paired[int(j)]["image"] for j in i]).float()
            if u.shape[-1] != s:
                u = torch.nn.functional.interpolate(u, size=(s, s), mode="bilinear", antialias=True)
            return x_pair[torch.as_tensor(i)], u

        fit2 = replace(cfg.fit_config(cfg.phase2_steps, cfg.phase2_lr, "CAD phase 2 (cross-modal)", tag=2),
                       find_unused_parameters=True)
        results["phase2"] = ctx.fit(cross, lambda m, b, st: m(b[0], b[1], _generator(cfg.seed, 2, st)),
                                    pair_batch, fit2, "phase2")
        metrics["phase2"] = _held_out_mse(fmri, x_test, mean, cfg.seed)
    if ctx.is_main:
        with atomic_dir(ctx.out / "fmri_mae") as tmp:
            fmri.save_pretrained(tmp)
    return fmri, metrics, results
