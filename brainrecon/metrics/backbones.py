"""What a backbone learned, on held-out toy scenes: PSNR, retrieval, attribute match.

The same functions serve the data card (full size), the tests (smoke size) and
``notebooks/02_toy_backbones.py``. Every figure is computed on scenes drawn with a seed
that training never used (``heldout_seed``).
"""
from __future__ import annotations

import textwrap

import numpy as np
import torch

from ..data.scenes import make_scenes, swap_caption_word
from ..figures import Figure
from .attributes import attribute_scores_per_image
from .lowlevel import as_tensor

__all__ = ["heldout_scenes", "vae_psnr", "clip_retrieval", "clip_hard_negatives", "attribute_accuracy",
           "plot_vae_reconstructions", "plot_retrieval",
           "text_to_image_match", "evaluate_backbone", "plot_backbone_samples", "images_to_tensor"]


def images_to_tensor(images_u8: np.ndarray) -> torch.Tensor:
    """``(n, H, W, 3)`` uint8 -> ``(n, 3, H, W)`` float in [0, 1] (:func:`brainrecon.metrics.as_tensor`)."""
    return as_tensor(images_u8)


def heldout_scenes(n: int, image_size: int = 64, seed: int = 10_000):
    """Held-out toy scenes (``make_scenes(n, image_size, seed)``)."""
    return make_scenes(int(n), image_size=int(image_size), seed=int(seed))


@torch.no_grad()
def _vae_reconstructions(backbone, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """``decode_latents(encode_latents(x))`` (posterior mean) of every image, on the CPU."""
    return torch.cat([backbone.decode_latents(backbone.encode_latents(images[i:i + batch_size].to(backbone.device)))
                      .cpu() for i in range(0, len(images), batch_size)])


@torch.no_grad()
def vae_psnr(backbone, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Per-image PSNR (dB, peak 1) of ``decode_latents(encode_latents(x))`` (posterior mean)."""
    r = _vae_reconstructions(backbone, images, batch_size)
    mse = ((r - images.cpu()) ** 2).flatten(1).mean(1).clamp(min=1e-10)
    return (10 * torch.log10(1.0 / mse)).numpy()


@torch.no_grad()
def clip_retrieval(backbone, images: torch.Tensor, captions) -> dict:
    """Top-1 caption→image and image→caption retrieval among the given pairs (chance ``1/n``)."""
    t = torch.nn.functional.normalize(backbone.encode_text_embeds(list(captions)), dim=-1)
    v = torch.nn.functional.normalize(backbone.encode_image_embeds(images), dim=-1)
    sim = t @ v.T
    target = torch.arange(len(t), device=sim.device)
    return {"caption_to_image_top1": float((sim.argmax(1) == target).float().mean()),
            "image_to_caption_top1": float((sim.argmax(0) == target).float().mean()),
            "n_pairs": int(len(t))}


@torch.no_grad()
def clip_hard_negatives(backbone, images: torch.Tensor, captions, seed: int = 0) -> dict:
    """How often toy CLIP scores an image's caption above the same caption with one word swapped.

    For each pair, the main object's category word (``category``) or colour word (``colour``)
    is replaced by another (:func:`brainrecon.data.scenes.swap_caption_word`); chance is 0.5.
    Retrieval among random captions can be won on colour, place and background alone; this
    figure tells whether the text features know the shape at all.
    """
    captions = list(captions)
    v = torch.nn.functional.normalize(backbone.encode_image_embeds(images), dim=-1)
    t = torch.nn.functional.normalize(backbone.encode_text_embeds(captions), dim=-1)
    own = (v * t).sum(-1)
    rng = np.random.default_rng(int(seed))
    res = {"n_pairs": len(captions)}
    for attr in ("category", "colour"):
        tn = torch.nn.functional.normalize(
            backbone.encode_text_embeds(swap_caption_word(captions, attr, rng, "main")), dim=-1)
        res[attr] = float((own > (v * tn).sum(-1)).float().mean())
    return res


@torch.no_grad()
def attribute_accuracy(classifier, images: torch.Tensor, category, colour, bbox=None, image_size=None) -> dict:
    """Accuracy of the attribute classifier (category, colour, both), mean box IoU and position error.

    ``bbox`` (pixels of images of side ``image_size``, default the images' own) adds ``bbox_iou``
    and ``position_error``. The scores are :func:`brainrecon.metrics.attribute_scores_per_image`'s,
    named as the backbone card reports them.
    """
    n = len(images)
    s = attribute_scores_per_image(images, category, colour, np.zeros((n, 4)) if bbox is None else bbox,
                                   classifier, image_size)
    res = {"category": float(s["category_ok"].mean()), "colour": float(s["colour_ok"].mean()),
           "both": float(s["both_ok"].mean()), "n": int(n)}
    if bbox is not None:
        res["bbox_iou"] = float(s["box_iou"].mean())
        res["position_error"] = float(s["position_error"].mean())
    return res


@torch.no_grad()
def text_to_image_match(backbone, captions, category, colour, guidance_scale: float | None = None,
                        num_inference_steps: int = 25, seed: int = 0, return_images: bool = False,
                        bbox=None, image_size: int | None = None):
    """Share of samples whose main object the attribute classifier reads as the caption's.

    Returns a dict with ``category``, ``colour`` and ``both`` (the acceptance figure). With the
    captioned scenes' main-object boxes ``bbox`` (pixels of images of side ``image_size``, default
    the backbone's) it also scores the place word: ``position_error`` (distance of the generated main
    object's centre from the captioned one, in image sides), ``position_error_shuffled`` (the same
    against the box of caption ``i + n/2``: what ignoring the place word scores) and ``bbox_iou``.
    """
    if backbone.attribute_classifier is None:
        raise ValueError("this backbone has no attribute_classifier/ (toy world only).")
    g = torch.Generator().manual_seed(int(seed))
    imgs = backbone.generate(list(captions), guidance_scale=guidance_scale,
                             num_inference_steps=num_inference_steps, generator=g)
    side = backbone.image_size if image_size is None else int(image_size)
    res = attribute_accuracy(backbone.attribute_classifier, imgs, category, colour, bbox, side)
    if bbox is not None:
        shuffled = np.roll(np.asarray(bbox, np.float64), len(bbox) // 2, 0)
        res["position_error_shuffled"] = attribute_accuracy(backbone.attribute_classifier, imgs, category,
                                                            colour, shuffled, side)["position_error"]
    res["guidance_scale"] = float(backbone.guidance_scale if guidance_scale is None else guidance_scale)
    return (res, imgs) if return_images else res


def evaluate_backbone(backbone, n_eval: int = 200, n_retrieval: int = 100, n_generate: int = 200,
                      heldout_seed: int = 10_000, guidance_scales=(None, 1.0, 0.0),
                      num_inference_steps: int = 25, seed: int = 0) -> dict:
    """All acceptance figures of a toy backbone on held-out scenes (flat dict, JSON-ready).

    Keys: ``vae_psnr_db`` (mean per-image PSNR), ``vae_psnr_db_median``,
    ``vae_psnr_db_without_noisy_backgrounds``, ``clip_caption_to_image_top1``,
    ``clip_image_to_caption_top1``, ``clip_hard_negative_category`` / ``_colour``
    (:func:`clip_hard_negatives`), ``attr_classifier_category_acc``, ``…_colour_acc``,
    ``…_bbox_iou``, the same three accuracies on the VAE's reconstructions of those images
    (``attr_classifier_vae_…``: how a perfect generator would be scored), and per guidance
    scale ``t2i_match_gs<scale>`` (category and colour both right), ``t2i_category_gs<scale>``,
    ``t2i_colour_gs<scale>``, ``t2i_position_error_gs<scale>`` and its chance level
    ``t2i_position_error_shuffled_gs<scale>`` (the caption's place word, :func:`text_to_image_match`);
    ``t2i_match_default`` repeats the default scale. With a second judge
    (``backbone.attribute_classifier_b``) the same images are also scored by it: ``judge_b_…_acc``
    on the real images and (``judge_b_vae_…``) their reconstructions, ``t2i_…_gs<scale>_b``.
    """
    size = backbone.image_size
    judge_b = getattr(backbone, "attribute_classifier_b", None)
    n_max = max(n_eval, n_retrieval, n_generate)
    sc = heldout_scenes(n_max, size, heldout_seed)
    x = images_to_tensor(sc.images)
    m = {"image_size": size, "heldout_seed": int(heldout_seed)}
    if n_eval:
        ps = vae_psnr(backbone, x[:n_eval])
        noisy = np.array([b["pattern"] == "noisy" for b in sc.backgrounds[:n_eval]])
        m.update(vae_psnr_db=float(ps.mean()), vae_psnr_db_median=float(np.median(ps)),
                 vae_psnr_db_without_noisy_backgrounds=float(ps[~noisy].mean()) if (~noisy).any() else None,
                 vae_n_images=int(n_eval))
    if n_retrieval and backbone.image_encoder is not None:
        r = clip_retrieval(backbone, x[:n_retrieval], sc.captions[:n_retrieval])
        m.update(clip_caption_to_image_top1=r["caption_to_image_top1"],
                 clip_image_to_caption_top1=r["image_to_caption_top1"], clip_n_pairs=r["n_pairs"])
        h = clip_hard_negatives(backbone, x[:n_retrieval], sc.captions[:n_retrieval], seed=seed)
        m.update(clip_hard_negative_category=h["category"], clip_hard_negative_colour=h["colour"])
    if backbone.attribute_classifier is not None:
        if n_eval:
            a = attribute_accuracy(backbone.attribute_classifier, x[:n_eval], sc.category[:n_eval],
                                   sc.colour[:n_eval], sc.bbox[:n_eval])
            m.update(attr_classifier_category_acc=a["category"], attr_classifier_colour_acc=a["colour"],
                     attr_classifier_both_acc=a["both"], attr_classifier_bbox_iou=a["bbox_iou"])
            r = _vae_reconstructions(backbone, x[:n_eval])   # how a perfect generator would be scored
            a = attribute_accuracy(backbone.attribute_classifier, r, sc.category[:n_eval], sc.colour[:n_eval])
            m.update(attr_classifier_vae_category_acc=a["category"], attr_classifier_vae_colour_acc=a["colour"],
                     attr_classifier_vae_both_acc=a["both"])
            if judge_b is not None:        # the second, independently trained judge: same images
                for name, imgs in (("", x[:n_eval]), ("vae_", r)):
                    a = attribute_accuracy(judge_b, imgs, sc.category[:n_eval], sc.colour[:n_eval])
                    m.update({f"judge_b_{name}category_acc": a["category"], f"judge_b_{name}colour_acc": a["colour"],
                              f"judge_b_{name}both_acc": a["both"]})
        if n_generate:
            for gs in guidance_scales:
                r, imgs = text_to_image_match(backbone, sc.captions[:n_generate], sc.category[:n_generate],
                                              sc.colour[:n_generate], gs, num_inference_steps, seed,
                                              return_images=True, bbox=sc.bbox[:n_generate])
                key = f"gs{r['guidance_scale']:g}"
                m[f"t2i_match_{key}"] = r["both"]
                m[f"t2i_category_{key}"] = r["category"]
                m[f"t2i_colour_{key}"] = r["colour"]
                m[f"t2i_position_error_{key}"] = r["position_error"]
                m[f"t2i_position_error_shuffled_{key}"] = r["position_error_shuffled"]
                if judge_b is not None:
                    b = attribute_accuracy(judge_b, imgs, sc.category[:n_generate], sc.colour[:n_generate],
                                           sc.bbox[:n_generate], size)
                    m.update({f"t2i_match_{key}_b": b["both"], f"t2i_category_{key}_b": b["category"],
                              f"t2i_colour_{key}_b": b["colour"], f"t2i_position_error_{key}_b": b["position_error"]})
                if gs is None:
                    m["t2i_match_default"] = r["both"]
                    m["guidance_scale_default"] = r["guidance_scale"]
            m["t2i_n_captions"] = int(n_generate)
            m["num_inference_steps"] = int(num_inference_steps)
    return m


def plot_backbone_samples(backbone, captions, guidance_scales=(0.0, 1.0, None), num_inference_steps: int = 25,
                          seed: int = 0, wrap: int = 28):
    """Grid of samples: one row per caption, one column per guidance scale. Returns a Figure."""
    captions = list(captions)
    cols = list(guidance_scales)
    fig = Figure(figsize=(1.9 * (len(cols) + 1), 1.9 * len(captions)))
    axes = fig.subplots(len(captions), len(cols) + 1, squeeze=False)
    for j, gs in enumerate(cols):
        imgs = backbone.generate(captions, guidance_scale=gs, num_inference_steps=num_inference_steps,
                                 generator=torch.Generator().manual_seed(seed))
        for i in range(len(captions)):
            ax = axes[i, j + 1]
            ax.imshow(imgs[i].permute(1, 2, 0).cpu().numpy())
            ax.set_axis_off()
            if i == 0:
                ax.set_title(f"guidance {backbone.guidance_scale if gs is None else gs:g}", fontsize=8)
    for i, c in enumerate(captions):
        axes[i, 0].set_axis_off()
        axes[i, 0].text(0, 0.5, textwrap.fill(c, wrap), fontsize=6, va="center")
    fig.tight_layout()
    return fig


def plot_vae_reconstructions(backbone, images: torch.Tensor, n: int = 8):
    """Originals (top row) and VAE reconstructions (bottom row) with per-image PSNR. Returns a Figure."""
    x = images[:n]
    with torch.no_grad():
        r = backbone.decode_latents(backbone.encode_latents(x.to(backbone.device))).cpu()
    psnr = 10 * torch.log10(1 / ((r - x) ** 2).flatten(1).mean(1).clamp(min=1e-10))
    fig = Figure(figsize=(1.4 * len(x), 3.0))
    axes = fig.subplots(2, len(x), squeeze=False)
    for i in range(len(x)):
        axes[0, i].imshow(x[i].permute(1, 2, 0).numpy())
        axes[1, i].imshow(r[i].permute(1, 2, 0).numpy())
        axes[1, i].set_title(f"{psnr[i]:.1f} dB", fontsize=7)
        axes[0, i].set_axis_off()
        axes[1, i].set_axis_off()
    axes[0, 0].set_title("original", fontsize=7, loc="left")
    fig.tight_layout()
    return fig


def plot_retrieval(backbone, images: torch.Tensor, captions, n: int = 16):
    """Caption-by-image cosine similarity of toy CLIP (the diagonal holds the true pairs). Returns a Figure."""
    with torch.no_grad():
        t = torch.nn.functional.normalize(backbone.encode_text_embeds(list(captions)[:n]), dim=-1)
        v = torch.nn.functional.normalize(backbone.encode_image_embeds(images[:n]), dim=-1)
    sim = (t @ v.T).cpu().numpy()
    fig = Figure(figsize=(4.2, 3.6))
    ax = fig.subplots()
    im = ax.imshow(sim, cmap="viridis")
    ax.set_xlabel("image")
    ax.set_ylabel("caption")
    top1 = float((sim.argmax(1) == np.arange(len(sim))).mean())
    ax.set_title(f"toy CLIP similarity, top-1 {top1:.0%} of {len(sim)}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig
