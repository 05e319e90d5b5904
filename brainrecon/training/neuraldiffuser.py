"""NeuralDiffuser's training: multi-subject pre-training, then one subject's fine-tuning (§4.2.3).

::

    from brainrecon.training.neuraldiffuser import NeuralDiffuserConfig, train_neuraldiffuser
    out = train_neuraldiffuser(NeuralDiffuserConfig.smoke(output_dir="runs/nd"))   # seconds
    pipe = load_reconstructor(out / "reconstructor")                              # voxels -> images

Both phases train every decoder at once on one objective per batch (a batch holds one subject's
scans, since voxel counts differ):

* ``f_c`` (text condition ``ĉ``): MSE to the caption's text features plus ``contrastive_weight`` ×
  MixCo (Eq. 1, on mixed voxels) for the first ``mixco_fraction`` of the steps and soft CLIP (Eq. 2) after
  — the paper's Eq. 3 without its diffusion prior, whose regression role the MSE takes;
* ``f_z`` (initial latent ``ẑ``): MAE (Eq. 5) + ``contrastive_weight`` × soft CLIP of its grid projection
  against the latent pooled to that grid (Eq. 4);
* ``f_g^l`` (``feature_layers`` of the image encoder, Eq. 13): MSE + the same contrastive schedule.

Phase ``pretrain`` uses every subject but ``subject`` (leave-the-target-out); phase ``finetune`` adds
``subject``'s voxel encoder and trains it with the shared decoders on that subject's scans. Each
phase checkpoints under ``OUT/checkpoints/<phase>`` and resumes after a kill
(:class:`~brainrecon.training.run.RunContext`, :func:`~brainrecon.training.fit`; ``accelerate
launch`` runs it on several processes). The finished folder holds ``reconstructor/`` (the
pipeline, light: the backbone comes from ``backbone.json``), the run records, and ``metrics.json``
with held-out figures against the mean and shuffled-scan baselines and two-way / top-1 retrieval.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidInputError, check_range
from ..figures import Figure
from ..metrics.retrieval import retrieval
from ..models.neuraldiffuser import (DiffusionPrior, LatentDecoder, MixerDecoder, NeuralDiffuserModel, VoxelEncoder,
                                     mixco_loss, mixco_mix, soft_clip_loss)
from .cache import StageData, cache_stage_data
from .run import RunConfig, RunContext, ship_reconstructor

__all__ = ["NeuralDiffuserConfig", "train_neuraldiffuser", "ship_neuraldiffuser", "plot_decoder_scores"]


@dataclass(frozen=True)
class NeuralDiffuserConfig(RunConfig):
    """Settings of :func:`train_neuraldiffuser` (``steps``: the fine-tuning phase's steps)."""

    subject: str = "subj01"
    pretrain_subjects: tuple | None = None      # None: every subject of the world but ``subject``
    pretrain_steps: int = 1500
    hidden_dim: int = 256
    mixer_tokens: int = 8
    mixer_dim: int = 64
    feature_layers: tuple = (1, 2, 3)
    contrastive_weight: float = 0.1
    mixco_fraction: float = 1 / 3
    temperature: float = 0.05
    mixco_beta: float = 0.15
    dropout: float = 0.15
    prior_weight: float = 0.0      # α of Eq. 3; > 0 adds the diffusion prior after f_c (and drops f_c's MSE)
    prior_depth: int = 2

    @property
    def subjects(self) -> tuple | None:
        """The subjects to load (``None``: all of the world's; NSD loads only these)."""
        return None if self.pretrain_subjects is None else (self.subject, *self.pretrain_subjects)

    _SMOKE = dict(toy_preset="smoke", steps=20, pretrain_steps=30, batch_size=16, lr=2e-3, warmup_steps=2,
                  checkpoint_every=10, hidden_dim=32, mixer_tokens=4, mixer_dim=16, feature_layers=(1, 3),
                  n_eval=30, progress=False)
    _DEFAULT = dict(steps=800, pretrain_steps=1500, batch_size=32, lr=1e-3, warmup_steps=50, checkpoint_every=200,
                    n_eval=300)


def _loss(m: NeuralDiffuserModel, v, subject, y_text, y_lat, y_feat, cfg, mixco: bool):
    w, tau = cfg.contrastive_weight, cfg.temperature
    h = m.voxel_encoder(v, subject)

    def contrast(dec, out, target):
        """Eq. 1 on mixed voxels (a second pass through the parts) while ``mixco``, else Eq. 2."""
        if mixco:
            mixed, lam, perm = mixco_mix(v, cfg.mixco_beta)
            return mixco_loss(dec(m.voxel_encoder(mixed, subject)).projection, target, lam, perm, tau)
        return soft_clip_loss(out.projection, target, tau)

    out_c = m.text_decoder(h)
    k_c = contrast(m.text_decoder, out_c, y_text.flatten(1))
    if m.text_prior is not None:     # Eq. 3: L_c = L_mix|soft + α·L_prior, the prior conditioned on f_c's output
        l_c = cfg.prior_weight * m.text_prior.loss(out_c.prediction, y_text)
    else:                            # no prior: f_c's output is ĉ, regressed by MSE
        l_c = F.mse_loss(out_c.prediction, y_text)
    out_z = m.latent_decoder(h)
    g = m.latent_decoder.config.grid_size
    l_z = F.l1_loss(out_z.prediction, y_lat)
    k_z = soft_clip_loss(out_z.projection, F.adaptive_avg_pool2d(y_lat, g).flatten(1), tau)
    loss = l_c + w * k_c + l_z + w * k_z
    logs = {"prior_loss" if m.text_prior is not None else "text_mse": l_c.detach(), "latent_mae": l_z.detach(),
            "contrast_text": k_c.detach()}
    for k, dec in m.feature_decoders.items():
        out_g = dec(h)
        y = y_feat[int(k)]
        l_g = F.mse_loss(out_g.prediction, y)
        loss = loss + l_g + w * contrast(dec, out_g, y.flatten(1))
        logs[f"feature_mse_{k}"] = l_g.detach()
    return loss, logs


def _batches(data: StageData, subjects, batch_size: int, seed: int, rank: int = 0):
    """Batch of ``step``: one subject's scans (voxel counts differ); every process draws its own rows."""
    rows = {s: data.rows(s) for s in subjects}

    def get(step):
        rng = np.random.default_rng([int(seed), 11, int(step)] + ([int(rank)] if rank else []))
        s = subjects[step % len(subjects)]                    # one subject per batch (voxel counts differ)
        i = torch.as_tensor(rng.integers(0, len(data.voxels[s]), batch_size))
        r = rows[s][i]
        return (data.voxels[s][i].float(), data.text(r).float(), data.latents[r].float(),
                {k: f[r].float() for k, f in (data.features or {}).items()})
    return get


def _new_model(cfg, bb, voxel_counts: dict) -> NeuralDiffuserModel:
    c, side = int(bb.unet.config.in_channels), int(bb.unet.config.sample_size)
    if bb.image_encoder is None and cfg.feature_layers:
        raise InvalidInputError("NeuralDiffuser's feature decoders read the backbone's image encoder, which this "
                                "backbone lacks; add an image_encoder/ folder or set feature_layers=().")
    n_tok = None
    if cfg.feature_layers:
        with torch.no_grad():
            probe = bb.encode_image_features(torch.zeros(1, 3, bb.image_size, bb.image_size, device=bb.device),
                                             layers=tuple(cfg.feature_layers))
        n_tok = {int(k): tuple(probe[k].shape[1:]) for k in cfg.feature_layers}
    kw = dict(n_tokens=cfg.mixer_tokens, token_dim=cfg.mixer_dim, projection_hidden=2 * cfg.mixer_dim,
              dropout=cfg.dropout)
    grid = max(1, side // 2)
    parts = (VoxelEncoder(voxel_counts, cfg.hidden_dim),
             MixerDecoder(cfg.hidden_dim, int(bb.text_length), int(bb.text_embed_dim), **kw),
             LatentDecoder(cfg.hidden_dim, c, side, grid_size=grid, grid_channels=4 * c, projection_channels=c,
                           dropout=cfg.dropout),
             {k: MixerDecoder(cfg.hidden_dim, t[0], t[1], **kw) for k, t in (n_tok or {}).items()})
    # drawn last, so that the other parts start from the same weights with and without it
    prior = (DiffusionPrior(int(bb.text_length), int(bb.text_embed_dim), depth=cfg.prior_depth)
             if cfg.prior_weight > 0 else None)
    return NeuralDiffuserModel(*parts, subject=next(iter(voxel_counts)), text_prior=prior)


class _Objective(torch.nn.Module):
    """The training loss as a module's forward, so that DistributedDataParallel (several processes)
    sees every pass through the parts and all-reduces their gradients."""

    def __init__(self, model: NeuralDiffuserModel, cfg):
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, v, subject, y_text, y_lat, y_feat, mixco: bool):
        return _loss(self.model, v, subject, y_text, y_lat, y_feat, self.cfg, mixco)


def _phase(ctx, model, data, subjects, steps, cfg, phase):
    if steps <= 0:
        return None
    n_mix = int(steps * cfg.mixco_fraction)

    def loss_fn(obj, batch, step):
        v, yt, yz, yf = batch
        return obj(v, subjects[step % len(subjects)], yt, yz, yf, mixco=step < n_mix)

    fit_cfg = replace(cfg.fit_config(steps, cfg.lr, f"NeuralDiffuser {phase}", tag=len(phase)),
                      find_unused_parameters=True)       # one subject's voxel encoder per step
    return ctx.fit(_Objective(model, cfg), loss_fn, _batches(data, subjects, cfg.batch_size, cfg.seed + len(phase),
                                                             ctx.rank), fit_cfg, phase)


@torch.no_grad()
def _evaluate(model, data: StageData, subject: str, n: int, train_latents: torch.Tensor) -> dict:
    """Held-out figures of one subject: each decoder against the mean and shuffled-scan baselines, retrieval."""
    model.eval()
    v, r = data.voxels[subject][:n].float(), data.rows(subject)[:n]
    st = model.encode_scans(v)
    out = {"n_test": int(len(v))}
    perm = torch.roll(torch.arange(len(v)), len(v) // 2)
    pairs = [("text", st["text_condition"], data.text(r), F.mse_loss),
             ("latent", st["init_latents"], data.latents[r], F.l1_loss)]
    pairs += [(f"feature_{k}", st["features"][k], data.features[k][r], F.mse_loss) for k in st["features"]]
    for name, pred, y, fn in pairs:
        mean = (train_latents.mean(0) if name == "latent" else y.mean(0)).expand_as(y)
        out[name] = {"error": float(fn(pred, y)), "mean_baseline": float(fn(mean, y)),
                     "shuffled_scan": float(fn(pred[perm], y))}
    # retrieval among the held-out scans (two-way and top-1), on the deepest feature layer's tokens
    if st["features"]:
        k = max(st["features"])
        p = F.normalize(st["features"][k].flatten(1), dim=-1)
        y = F.normalize(data.features[k][r].flatten(1), dim=-1)
        sim = p @ y.T
        idx = torch.arange(len(sim))
        out["retrieval_layer"] = int(k)
        out["brain_to_image_top1"] = float((sim.argmax(1) == idx).float().mean())
        out["image_to_brain_top1"] = float((sim.argmax(0) == idx).float().mean())
        out["two_way"] = float((sim.diag()[:, None] > sim).float().sum() / (len(sim) * (len(sim) - 1)))
        out["chance_top1"] = 1 / len(sim)
        # the field's protocol (MindEye; the evaluation suite's): the deepest decoder's contrastive
        # projection against the image features, 30 draws of min(300, N) candidates, both directions
        _, brain = model.brain_embeddings(v)
        rr = retrieval(brain.numpy(), data.features[k][r].float().flatten(1).numpy(), 300, 30)
        out["retrieval"] = {"image_retrieval": rr["fwd"], "brain_retrieval": rr["bwd"], "n_way": rr["n_way"],
                            "chance": rr["chance"], "image_retrieval_ci": list(rr["fwd_ci"]),
                            "brain_retrieval_ci": list(rr["bwd_ci"])}
    return out


def train_neuraldiffuser(config: NeuralDiffuserConfig, world=None, backbone=None) -> Path:
    """Pre-train on the other subjects, fine-tune on ``config.subject``, save, score; return the folder.

    Parameters
    ----------
    config : NeuralDiffuserConfig
    world : ToyWorld, optional
        An already built toy world (else ``config.world`` / ``toy_preset``).
    backbone : Backbone, optional
        Else ``config.backbone`` is loaded.
    """
    cfg = config
    check_range("prior_weight", cfg.prior_weight, 0.0, None, float)
    with RunContext(cfg, "neuraldiffuser", world=world) as ctx:
        bb = ctx.backbone(backbone)
        target = ctx.subjects([cfg.subject], ())[0]
        no_pretraining = cfg.pretrain_subjects is not None and len(cfg.pretrain_subjects) == 0
        others = [] if no_pretraining else ctx.subjects(cfg.pretrain_subjects, (target,))
        layers = tuple(int(k) for k in cfg.feature_layers)
        train = cache_stage_data(ctx.voxel_dataset([*others, target], "train"), bb, progress=False,
                                 feature_layers=layers)
        test = cache_stage_data(ctx.voxel_dataset([target], "test"), bb, progress=False, feature_layers=layers)
        counts = {s: int(train.voxels[s].shape[1]) for s in [*others, target]}
        torch.manual_seed(cfg.seed)                # the parts' initial weights: the same run gives the same model
        model = _new_model(cfg, bb, {s: counts[s] for s in (others or [target])})
        results = {}
        r = _phase(ctx, model, train, others, cfg.pretrain_steps if others else 0, cfg, "pretrain")
        if r is not None:
            results["pretrain"] = r
        if target not in model.voxel_encoder.subjects:
            torch.manual_seed(cfg.seed)
            model.voxel_encoder.add_subject(target, counts[target])
        model.subject = target
        results["finetune"] = _phase(ctx, model, train, [target], cfg.steps, cfg, "finetune")
        lat = train.latents[train.rows(target)]
        model.latent_stats = torch.stack([lat.mean((0, 2, 3)), lat.std((0, 2, 3))]).to(model.latent_stats)
        metrics = _evaluate(model.cpu(), test, target, cfg.n_eval, lat)
        ctx.save_reconstructor(model, bb, "neuraldiffuser", target)
        ctx.finish({"subject": target, "pretrain_subjects": others, **metrics}, results)
    return Path(cfg.output_dir)


def ship_neuraldiffuser(run_dir, dest) -> Path:
    """Copy a run's reconstructor for shipping: only its subject's voxel encoder, plus the run record.

    The other subjects' voxel encoders (pre-training) are not read when reconstructing the fine-tuned
    subject and hold most of the bytes (8 toy subjects: 20 of 27 MB), so they are left out.
    ``metrics.json``, ``run.json`` and ``config.json`` of the run are copied beside the folder's parts.

    Parameters
    ----------
    run_dir : path-like
        A :func:`train_neuraldiffuser` output folder.
    dest : path-like
        The reconstructor folder to write (atomically), e.g. ``brainrecon/weights/neuraldiffuser_toy``.

    Returns
    -------
    Path
    """
    return ship_reconstructor(run_dir, dest, NeuralDiffuserModel, "neuraldiffuser",
                              lambda m: m.voxel_encoder.keep_subjects([m.subject]))


def plot_decoder_scores(metrics: dict):
    """Each decoder's held-out error beside its baselines, as a share of the mean-prediction baseline.

    Parameters
    ----------
    metrics : dict
        ``metrics.json`` of :func:`train_neuraldiffuser` (entries with ``error``, ``mean_baseline``,
        ``shuffled_scan``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    parts = [k for k, v in metrics.items() if isinstance(v, dict) and {"error", "mean_baseline"} <= set(v)]
    if not parts:
        raise InvalidInputError("no decoder figures (entries with 'error' and 'mean_baseline') in these metrics.")
    fig = Figure(figsize=(1.6 + 1.3 * len(parts), 3.2))
    ax = fig.subplots()
    x = np.arange(len(parts))
    for j, (key, label) in enumerate((("error", "decoded"), ("shuffled_scan", "shuffled scan"),
                                      ("mean_baseline", "training mean"))):
        vals = [metrics[p][key] / metrics[p]["mean_baseline"] for p in parts]
        ax.bar(x + (j - 1) * 0.27, vals, 0.27, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(parts, fontsize=8)
    ax.set_ylabel("held-out error / mean baseline")
    ax.axhline(1.0, color="0.5", lw=0.8)
    ax.legend(fontsize=7)
    sub = metrics.get("subject", "")
    top1 = metrics.get("brain_to_image_top1")
    ax.set_title(f"NeuralDiffuser decoders, {sub}" + (f" · brain→image top-1 {top1:.0%}" if top1 is not None else ""),
                 fontsize=9)
    fig.tight_layout()
    return fig
