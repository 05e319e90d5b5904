"""Train the toy backbones from scratch: toy CLIP, attribute classifier, VAE, U-Net.

Order and hand-offs: the scenes are rendered once and kept in memory; toy CLIP is trained
contrastively and frozen; the attribute classifier and the VAE train on the images; the
VAE (decoded from its posterior mean while training, with a tiny KL term) encodes every
training image once (posterior means cached) and sets its ``scaling_factor`` to 1 / std of
the latents; its decoder alone is then fine-tuned on those frozen posterior means (the
latent space, and so the scaling factor, stay as they were); the U-Net trains as a latent diffusion
model on those cached latents with the frozen text encoder's hidden states as
cross-attention context, the caption replaced by ``""`` with probability ``cfg_dropout``.

Every part trains with :func:`brainrecon.training.fit` and checkpoints under
``OUT/checkpoints/<part>``; a finished part is recorded in ``OUT/records/<part>.json`` and
skipped on a rerun, so ``train_toy_backbones(cfg, OUT)`` after a kill resumes where it was.
"""
from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
import transformers
from diffusers import AutoencoderKL, DDPMScheduler
from torch import nn
from transformers import CLIPTextModelWithProjection

from ..backbones.attributes import AttributeClassifier, attribute_loss
from ..backbones.hub import _CLIP_MEAN, _CLIP_STD, load_backbone
from ..backbones.toy import (ToyBackboneConfig, make_toy_image_encoder, make_toy_scheduler, make_toy_text_encoder,
                  make_toy_tokenizer, make_toy_unet, make_toy_vae)
from ..data.scenes import (CATEGORIES, COLOURS, PLACE_WORDS, caption_attributes, make_scenes, render_category_maps,
                           swap_caption_word)
from ..diffusion import denoising_target, min_snr_weight
from ..io import atomic_dir, write_json
from ..metrics.backbones import evaluate_backbone
from .loop import FitConfig, fit

__all__ = ["train_toy_backbones"]

#: Training order; both judges learn on the VAE's outputs, so they come after it.
_PARTS = ("clip", "vae", "vae_decoder", "attribute_classifier", "attribute_classifier_b", "unet")


#: Logit scale of the training-only heads' unit-norm class directions (``vae_semantic_weight``,
#: ``clip_attribute_weight``): a head that cannot grow can only read a loud direction.
_SEMANTIC_TEMPERATURE = 5.0


class _ClipPair(nn.Module):
    """Both toy-CLIP towers and the learned temperature, trained together."""

    def __init__(self, text, vision, attribute_heads: bool = False):
        super().__init__()
        self.text, self.vision = text, vision
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))
        if attribute_heads:        # training-only (clip_attribute_weight): category, colour, place
            width = text.config.hidden_size
            self.heads = nn.ModuleList([nn.Linear(width, len(k)) for k in (CATEGORIES, COLOURS, PLACE_WORDS)])


def _clip_pixels(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(_CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(_CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _sampler(n: int, batch_size: int, seed: int, part: int):
    def idx(step: int) -> np.ndarray:
        return np.random.default_rng([int(seed), int(part), int(step)]).integers(0, n, batch_size)
    return idx


def _fit_config(cfg: ToyBackboneConfig, steps: int, lr: float, desc: str, warmup: int) -> FitConfig:
    return FitConfig(max_steps=steps, lr=lr, warmup_steps=min(warmup, max(1, steps // 10)),
                     lr_schedule="cosine", grad_clip=1.0, checkpoint_every=cfg.checkpoint_every,
                     seed=cfg.seed, progress=cfg.progress, desc=desc, weight_decay=0.01)


def _summary(res, n: int = 50) -> dict:
    k = max(1, min(n, len(res.history) // 5 or 1))
    return {"steps": res.step, "wall_time_s": round(res.wall_time, 1), "resumed_from": res.resumed_from,
            "loss_first": res.mean_loss(first=k), "loss_final": res.mean_loss(last=k)}


# ------------------------------------------------------------------------------- parts
#: The hard-negative captions of toy CLIP, in the order ``clip_hard_negatives`` takes them.
HARD_NEGATIVES = (("category", "main"), ("category", "any"), ("colour", "any"), ("colour", "main"), ("place", "main"))


def _hard_negative_ids(cfg, data, idx, step: int) -> torch.Tensor:
    """Token ids of ``cfg.clip_hard_negatives`` swapped captions per picked scene (NegCLIP).

    Plain InfoNCE among random captions is won on colour, place and background, which
    differ between almost any two toy captions, so the text tower is free to forget shape:
    the shipped toy CLIP of 2026-11-29 did (the hidden states of two captions that differ in
    their category word were 3.5× closer than of two that differ in colour). A caption with only
    its category word swapped can be told from the true one by shape alone.
    """
    kinds = HARD_NEGATIVES[:int(cfg.clip_hard_negatives)]
    if not kinds:
        return torch.zeros(0, data["ids"].shape[1], dtype=data["ids"].dtype)
    rng = np.random.default_rng([int(cfg.seed), 7, int(step)])
    captions = [data["captions"][int(j)] for j in idx]
    tok = data["tokenizer"]
    negs = [c for attr, which in kinds for c in swap_caption_word(captions, attr, rng, which)]
    return tok(negs, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids


def _train_clip(cfg, data, out: Path) -> dict:
    tok = data["tokenizer"]
    text = make_toy_text_encoder(len(tok), cfg.clip_width, cfg.clip_layers, cfg.clip_heads,
                                 tok.model_max_length)
    vision = make_toy_image_encoder(cfg.image_size, cfg.clip_width, cfg.clip_layers, cfg.clip_heads,
                                    cfg.clip_patch_size)
    w_attr = float(cfg.clip_attribute_weight)
    model = _ClipPair(text, vision, attribute_heads=w_attr > 0)
    pick = _sampler(len(data["images"]), cfg.clip_batch_size, cfg.seed, 1)
    images, ids = data["images"], data["ids"]
    if w_attr > 0:
        said = caption_attributes(data["captions"])
        attrs = torch.from_numpy(np.stack([said["category"], said["colour"], said["place"]], 1))

    def batches(step):
        i = pick(step)
        return images[i].float() / 255, ids[i], _hard_negative_ids(cfg, data, i, step), \
            (attrs[i] if w_attr > 0 else None)

    def loss_fn(m, batch, step):
        x, t, negs, y = batch
        out = m.text(torch.cat([t, negs]) if len(negs) else t)
        te = F.normalize(out.text_embeds, dim=-1)
        ie = F.normalize(m.vision(pixel_values=_clip_pixels(x)).image_embeds, dim=-1)
        scale = m.logit_scale.clamp(max=np.log(100)).exp()
        target = torch.arange(len(t), device=te.device)
        to_text = scale * ie @ te.T                 # each image against the batch's captions + hard negatives
        to_image = scale * te[:len(t)] @ ie.T       # each caption against the batch's images
        loss = (F.cross_entropy(to_text, target) + F.cross_entropy(to_image, target)) / 2
        acc = (to_image.argmax(1) == target).float().mean()
        logs = {"batch_top1": acc}
        if w_attr > 0:
            h = out.last_hidden_state[:len(t)].mean(1)
            h = h / h.std().detach()
            ce = sum(F.cross_entropy(F.linear(h, F.normalize(head.weight, dim=1) * _SEMANTIC_TEMPERATURE, head.bias),
                                     y[:, k]) for k, head in enumerate(m.heads)) / 3
            loss = loss + w_attr * ce
            logs["attribute_ce"] = ce.detach()
        return loss, logs

    res = fit(model, loss_fn, batches, _fit_config(cfg, cfg.clip_steps, cfg.clip_lr, "toy CLIP", 100),
              out / "checkpoints" / "clip")
    m = res.model.cpu().eval()
    for name, mod in (("text_encoder", m.text), ("image_encoder", m.vision)):
        with atomic_dir(out / name) as d:
            mod.save_pretrained(d)
    s = _summary(res)
    s["batch_top1_final"] = res.mean_loss(last=20, key="batch_top1")
    if w_attr > 0:
        s["attribute_ce_final"] = res.mean_loss(last=20, key="attribute_ce")
    return s


def _train_attributes(cfg, data, out: Path, judge: str = "a") -> dict:
    """Train a judge: ``"a"`` (``attribute_classifier/``) or the independent ``"b"`` (``attribute_classifier_b/``).

    Judge b differs from judge a in everything but the task: its own scenes
    (``make_scenes(n_train, seed=cfg.judge_b_seed)``, none of a's), its own architecture
    (``cfg.judge_b_channels``, max-pool downsampling), its own training seed, and its own
    batches: half rendered, half the VAE's reconstructions (no blur). A generator figure that
    both judges agree on does not rest on one network's quirks.
    """
    if judge == "b":
        data = _judge_b_data(cfg)
        channels, steps, seed, f_vae, f_blur = cfg.judge_b_channels, cfg.judge_b_steps, cfg.judge_b_seed, 0.5, 0.0
        name, downsample = "attribute_classifier_b", "maxpool"
    else:
        channels, steps, seed = cfg.attr_channels, cfg.attr_steps, cfg.seed
        name, downsample = "attribute_classifier", "stride"
        f_vae = float(cfg.attr_vae_fraction)
        f_blur = (1 - f_vae) / 2
    model = AttributeClassifier(image_size=cfg.image_size, n_categories=len(CATEGORIES), n_colours=len(COLOURS),
                                channels=tuple(channels), downsample=downsample)
    pick = _sampler(len(data["images"]), cfg.attr_batch_size, seed, 2)
    images, cat, col, box = data["images"], data["category"], data["colour"], data["bbox_frac"]
    decoded = _decode_all(out / "vae", images) if f_vae > 0 else None

    def batches(step):
        i = pick(step)
        x = images[i].float() / 255
        return x, x if decoded is None else decoded[i].float() / 255, cat[i], col[i], box[i]

    def loss_fn(m, batch, step):
        x, x_vae, c, k, b = batch
        # Every image a judge scores in use has been through the VAE's decoder (generated or
        # reconstructed), so part of each batch is the VAE's reconstruction of the scene and
        # (judge a) part is mildly blurred (3×3 binomial); the labels are the scene's own.
        u = torch.rand(len(x), 1, 1, 1, device=x.device)
        k1 = torch.tensor([1.0, 2.0, 1.0], device=x.device)
        kern = (k1[:, None] * k1[None, :] / 16).expand(3, 1, 3, 3)
        xb = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kern, groups=3)
        x = torch.where(u < f_vae, x_vae, torch.where(u < f_vae + f_blur, xb, x))
        return attribute_loss(m(x), c, k, b)

    fc = _fit_config(cfg, steps, cfg.attr_lr, name.replace("_", " "), 50)
    res = fit(model, loss_fn, batches, FitConfig(**{**asdict(fc), "seed": int(seed)}), out / "checkpoints" / name)
    with atomic_dir(out / name) as d:
        res.model.cpu().eval().save_pretrained(d)
    return _summary(res)


def _judge_b_data(cfg) -> dict:
    sc = make_scenes(cfg.n_train, image_size=cfg.image_size, seed=cfg.judge_b_seed)
    return {"images": torch.from_numpy(sc.images).permute(0, 3, 1, 2).contiguous(),
            "category": torch.from_numpy(sc.category), "colour": torch.from_numpy(sc.colour),
            "bbox_frac": torch.from_numpy(sc.bbox).float() / cfg.image_size}


class _VaeWithHead(nn.Module):
    """The VAE and the training-only 1×1 head of ``vae_semantic_weight`` (discarded after)."""

    def __init__(self, vae, n_classes: int):
        super().__init__()
        self.vae = vae
        self.head = nn.Conv2d(vae.config.latent_channels, n_classes, 1)


def _train_vae(cfg, data, out: Path) -> dict:
    vae = make_toy_vae(cfg.image_size, tuple(cfg.vae_channels), cfg.vae_latent_channels)
    pick = _sampler(len(data["images"]), cfg.vae_batch_size, cfg.seed, 3)
    images = data["images"]
    noise, sem = float(cfg.vae_latent_noise), float(cfg.vae_semantic_weight)
    n_classes = 1 + len(CATEGORIES)
    model = _VaeWithHead(vae, n_classes) if sem > 0 else vae
    maps = data["category_maps"] if sem > 0 else None

    def batches(step):
        i = pick(step)
        return images[i].float() / 255, (maps[i].long() if maps is not None else None)

    def loss_fn(m, batch, step):
        x, cat_map = batch
        v = m.vae if sem > 0 else m
        x = x * 2 - 1
        post = v.encode(x).latent_dist
        z = post.sample() if cfg.vae_sample_posterior else post.mode()   # mode: sharper, faster to train
        zs = z.std().detach()
        if noise > 0:
            z = z + noise * zs * torch.rand(len(z), 1, 1, 1, device=z.device) * torch.randn_like(z)
        rec = v.decode(z).sample
        mse = F.mse_loss(rec, x)
        kl = post.kl().mean()
        loss = mse + 0.1 * F.l1_loss(rec, x) + cfg.vae_kl_weight * kl
        logs = {"mse": mse.detach(), "kl": kl.detach(), "posterior_std": post.std.mean().detach()}
        if sem > 0:
            # each latent cell's share of background / every category (the renderer's segmentation)
            share = F.adaptive_avg_pool2d(F.one_hot(cat_map, n_classes).permute(0, 3, 1, 2).float(), z.shape[-2:])
            # unit-norm class directions at a fixed temperature: the head cannot grow to read a
            # quiet direction, so the category must be a loud one (in units of the latent's std)
            w = F.normalize(m.head.weight, dim=1) * _SEMANTIC_TEMPERATURE
            logits = F.conv2d(z / zs, w, m.head.bias)
            ce = -(share * F.log_softmax(logits, 1)).sum(1).mean()
            loss = loss + sem * ce
            logs["semantic_ce"] = ce.detach()
        return loss, logs

    res = fit(model, loss_fn, batches, _fit_config(cfg, cfg.vae_steps, cfg.vae_lr, "VAE", 100),
              out / "checkpoints" / "vae")
    vae = (res.model.vae if sem > 0 else res.model).cpu().eval()
    mean = _encode_all(vae, images)
    scaling = float(1.0 / mean.std())
    vae.register_to_config(scaling_factor=scaling)
    with atomic_dir(out / "vae") as d:
        vae.save_pretrained(d)
    s = _summary(res)
    s.update(mse_final=res.mean_loss(last=50, key="mse"), scaling_factor=scaling)
    if sem > 0:
        s["semantic_ce_final"] = res.mean_loss(last=50, key="semantic_ce")
    return s


def _train_vae_decoder(cfg, data, out: Path) -> dict:
    """Fine-tune the decoder (and ``post_quant_conv``) on the frozen encoder's posterior means.

    The encoder, and so every latent the U-Net and the reconstructors see, is unchanged; only
    what ``decode_latents`` draws gets sharper (Stable Diffusion's ``sd-vae-ft-mse`` did the same
    for SD's VAE).
    """
    if cfg.vae_decoder_steps <= 0:
        return {"steps": 0, "skipped": True}
    config = {k: v for k, v in AutoencoderKL.load_config(out / "vae").items() if k != "_name_or_path"}
    vae = AutoencoderKL.from_config(config)         # no "_name_or_path" in the saved config
    vae.load_state_dict(AutoencoderKL.from_pretrained(out / "vae", use_safetensors=True).state_dict())
    images = data["images"]
    mean = _encode_all(vae.eval(), images)
    vae.requires_grad_(False)
    trainable = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in trainable:
        p.requires_grad_(True)
    pick = _sampler(len(images), cfg.vae_decoder_batch_size, cfg.seed, 5)

    def batches(step):
        i = pick(step)
        return mean[i], images[i].float() / 127.5 - 1

    sigma = float(cfg.vae_decoder_noise) * float(mean.std())

    def loss_fn(m, batch, step):
        mu, x = batch
        if sigma > 0:
            mu = mu + sigma * torch.rand(len(mu), 1, 1, 1, device=mu.device) * torch.randn_like(mu)
        rec = m.decode(mu).sample
        mse = F.mse_loss(rec, x)
        return mse + 0.1 * F.l1_loss(rec, x), {"mse": mse.detach()}

    res = fit(vae.train(), loss_fn, batches,
              _fit_config(cfg, cfg.vae_decoder_steps, cfg.vae_decoder_lr, "VAE decoder", 100),
              out / "checkpoints" / "vae_decoder", parameters=trainable)
    with atomic_dir(out / "vae") as d:
        res.model.cpu().eval().save_pretrained(d)
    s = _summary(res)
    s.update(mse_final=res.mean_loss(last=50, key="mse"))
    return s


@torch.no_grad()
def _decode_all(vae_dir, images_u8: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The VAE's reconstructions (posterior mean, decoded) of uint8 images, as uint8."""
    vae = AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True).eval()
    mean = _encode_all(vae, images_u8, batch_size)
    out = [vae.decode(mean[i:i + batch_size]).sample for i in range(0, len(mean), batch_size)]
    return ((torch.cat(out).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@torch.no_grad()
def _encode_all(vae, images_u8: torch.Tensor, batch_size: int = 256):
    means = []
    for i in range(0, len(images_u8), batch_size):
        means.append(vae.encode(images_u8[i:i + batch_size].float() / 127.5 - 1).latent_dist.mean)
    return torch.cat(means)


def _train_unet(cfg, data, out: Path) -> dict:
    vae = AutoencoderKL.from_pretrained(out / "vae", use_safetensors=True).eval()
    text = CLIPTextModelWithProjection.from_pretrained(out / "text_encoder", use_safetensors=True).eval().requires_grad_(False)
    mean = _encode_all(vae, data["images"])
    sf = float(vae.config.scaling_factor)
    unet = make_toy_unet(mean.shape[-1], mean.shape[1], tuple(cfg.unet_channels), text.config.hidden_size,
                         cfg.unet_norm_groups, cfg.unet_layers_per_block)
    ddpm = DDPMScheduler.from_config(make_toy_scheduler(cfg.prediction_type, cfg.zero_terminal_snr).config)
    ids, empty = data["ids"], data["empty_ids"]
    pick = _sampler(len(mean), cfg.unet_batch_size, cfg.seed, 4)

    def batches(step):
        i = pick(step)
        return mean[i], ids[i]

    def loss_fn(m, batch, step):
        mu, t_ids = batch
        z = mu * sf                                 # posterior means, as encode_latents gives
        drop = torch.rand(len(z), device=z.device) < cfg.cfg_dropout
        t_ids = torch.where(drop[:, None], empty.to(z.device)[None], t_ids)
        text.to(z.device)
        with torch.no_grad():
            ehs = text(t_ids).last_hidden_state
        noise = torch.randn_like(z)
        t = torch.randint(0, ddpm.config.num_train_timesteps, (len(z),), device=z.device)
        pred = m(ddpm.add_noise(z, noise, t), t, encoder_hidden_states=ehs).sample
        target = denoising_target(ddpm, z, noise, t)
        if cfg.unet_min_snr_gamma is None:
            return F.mse_loss(pred.float(), target)
        w = min_snr_weight(ddpm, t, cfg.unet_min_snr_gamma)
        return (w * (pred.float() - target.float()).pow(2).flatten(1).mean(1)).mean()

    res = fit(unet, loss_fn, batches, _fit_config(cfg, cfg.unet_steps, cfg.unet_lr, "U-Net", 100),
              out / "checkpoints" / "unet")
    with atomic_dir(out / "unet") as d:
        res.model.cpu().eval().save_pretrained(d)
    return _summary(res)


# ------------------------------------------------------------------------------- driver
def _load_data(cfg: ToyBackboneConfig, tokenizer) -> dict:
    sc = make_scenes(cfg.n_train, image_size=cfg.image_size, seed=cfg.seed)
    maps = torch.from_numpy(render_category_maps(sc)) if cfg.vae_semantic_weight > 0 else None
    ids = tokenizer(sc.captions, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                      return_tensors="pt").input_ids[0]
    return {"images": torch.from_numpy(sc.images).permute(0, 3, 1, 2).contiguous(), "ids": ids,
            "empty_ids": empty, "captions": list(sc.captions), "category": torch.from_numpy(sc.category),
            "colour": torch.from_numpy(sc.colour),
            "bbox_frac": torch.from_numpy(sc.bbox).float() / cfg.image_size, "tokenizer": tokenizer,
            "category_maps": maps}


def _write_metadata(cfg: ToyBackboneConfig, out: Path) -> None:
    write_json(out / "model_index.json", {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "requires_safety_checker": False, "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]})
    write_json(out / "backbone.json", {
        "name": "brainrecon toy backbones", "guidance_scale": cfg.guidance_scale,
        "num_inference_steps": cfg.num_inference_steps, "image_size": cfg.image_size,
        "text_hidden_states": "last_hidden_state (final layer norm)",
        "images": "float (B,3,H,W) in [0,1]", "heldout_seed": cfg.heldout_seed, "train_seed": cfg.seed,
        "versions": {"diffusers": diffusers.__version__, "transformers": transformers.__version__,
                     "torch": torch.__version__}})


def train_toy_backbones(config: ToyBackboneConfig | None = None, output_dir="brainrecon-out/toy_backbones",
                        evaluate: bool = True) -> Path:
    """Train every toy part from scratch into ``output_dir`` (resumable) and return it.

    Parameters
    ----------
    config : ToyBackboneConfig, optional
        Recipe; default :meth:`ToyBackboneConfig.default` (the shipped weights).
    output_dir : path-like
        Output folder, in diffusers' Stable Diffusion layout (``load_backbone(output_dir)``
        loads it). Rerunning with the same folder resumes: finished parts are skipped and
        an interrupted part continues from its latest checkpoint.
    evaluate : bool
        Compute the held-out figures into ``metrics.json`` and ``training_record.json``.

    Returns
    -------
    Path
        ``output_dir``, holding ``tokenizer/ text_encoder/ image_encoder/ vae/ unet/
        scheduler/ attribute_classifier/ model_index.json backbone.json metrics.json
        training_record.json`` and ``checkpoints/`` (resume state; not needed to load).
    """
    cfg = config or ToyBackboneConfig.default()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    t0 = time.perf_counter()
    try:
        tok = make_toy_tokenizer()
        if not (out / "tokenizer" / "tokenizer.json").is_file():
            with atomic_dir(out / "tokenizer") as d:
                tok.save_pretrained(d)
        if not (out / "scheduler" / "scheduler_config.json").is_file():
            with atomic_dir(out / "scheduler") as d:
                make_toy_scheduler(cfg.prediction_type, cfg.zero_terminal_snr).save_pretrained(d)
        _write_metadata(cfg, out)
        records = {}
        todo = [p for p in _PARTS if not (out / "records" / f"{p}.json").is_file()]
        data = _load_data(cfg, tok) if todo else None
        train = {"clip": _train_clip, "attribute_classifier": _train_attributes, "vae": _train_vae,
                 "attribute_classifier_b": lambda c, d, o: _train_attributes(c, d, o, judge="b"),
                 "vae_decoder": _train_vae_decoder, "unet": _train_unet}
        for part in _PARTS:
            rec_path = out / "records" / f"{part}.json"
            if rec_path.is_file():
                records[part] = json.loads(rec_path.read_text())
                continue
            t = time.perf_counter()
            rec = train[part](cfg, data, out)
            rec["part_wall_time_s"] = round(time.perf_counter() - t, 1)
            write_json(rec_path, rec)
            records[part] = rec
        del data
        record = {"config": asdict(cfg), "parts": records,
                  "wall_time_s_this_run": round(time.perf_counter() - t0, 1),
                  "wall_time_s_parts_total": round(sum(r.get("part_wall_time_s", 0) for r in records.values()), 1),
                  "threads": torch.get_num_threads(), "platform": platform.platform(),
                  "python": platform.python_version()}
        if evaluate:
            te = time.perf_counter()
            bb = load_backbone(out)
            metrics = evaluate_backbone(bb, n_eval=cfg.n_eval, n_retrieval=cfg.n_retrieval,
                                        n_generate=cfg.n_generate, heldout_seed=cfg.heldout_seed,
                                        num_inference_steps=cfg.num_inference_steps, seed=cfg.seed)
            metrics["eval_wall_time_s"] = round(time.perf_counter() - te, 1)
            write_json(out / "metrics.json", metrics)
            record["metrics"] = metrics
        write_json(out / "training_record.json", record)
    finally:
        torch.set_num_threads(old_threads)
    return out


def copy_for_shipping(run_dir, dest) -> Path:
    """Copy the loadable parts of a training run (no checkpoints) to ``dest``."""
    run_dir, dest = Path(run_dir), Path(dest)
    with atomic_dir(dest) as d:
        for name in ("tokenizer", "text_encoder", "image_encoder", "vae", "unet", "scheduler",
                     "attribute_classifier", "attribute_classifier_b"):
            if (run_dir / name).is_dir():
                shutil.copytree(run_dir / name, d / name)
        for f in ("model_index.json", "backbone.json", "metrics.json", "training_record.json"):
            if (run_dir / f).is_file():
                shutil.copy2(run_dir / f, d / f)
    return dest
