"""Load Stable-Diffusion-style backbones: the shipped toy parts or a local SD folder.

:func:`load_backbone` returns one :class:`Backbone` for both worlds, so later stages
never ask which world they are in: shapes (latent channels, text width, image size)
come from the loaded configs, never from constants.

Conventions of the helpers
--------------------------
* Images in and out are float tensors in ``[0, 1]``, shape ``(B, 3, H, W)``.
* ``encode_text`` returns the text encoder's ``last_hidden_state`` (after the final layer
  norm), ``(B, L, D)`` with ``L = tokenizer.model_max_length`` — exactly what diffusers'
  Stable Diffusion pipelines feed the U-Net (for SD 2.1 the converted OpenCLIP encoder
  already ends at the penultimate OpenCLIP layer, so this *is* SD 2.1's "penultimate").
* ``encode_latents`` returns VAE latents multiplied by ``vae.config.scaling_factor``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import torch
import torch.nn.functional as F
import transformers
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import AutoTokenizer

from ..diffusion import denoise_latents
from ..errors import CheckpointError, DataNotFoundError, check_device
from ..io import check_safetensors, read_json
from .attributes import AttributeClassifier

__all__ = ["Backbone", "load_backbone", "TOY_WEIGHTS_DIR", "REQUIRED_PARTS", "OPTIONAL_PARTS"]

#: Folder of the shipped toy weights inside the package.
TOY_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights" / "toy"
#: Sub-folders a Stable Diffusion folder must have, with the file that marks each complete.
REQUIRED_PARTS = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
                  "tokenizer": None, "scheduler": "scheduler_config.json"}
OPTIONAL_PARTS = ("image_encoder", "attribute_classifier", "attribute_classifier_b")
#: A tokenizer folder is complete with any of these sets: a fast ``tokenizer.json``, or CLIP's BPE files.
_TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))
#: Parts whose weights are loaded (each must hold complete safetensors).
_WEIGHTED = ("unet", "vae", "text_encoder", "image_encoder", "attribute_classifier", "attribute_classifier_b")
_FIX = ("Copy that part again from the folder it came from, or re-save it with save_pretrained "
        "(toy parts: `brainrecon backbones train`).")
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(eq=False)
class Backbone:
    """The pretrained parts of a latent diffusion model plus the helpers every method needs.

    Attributes
    ----------
    unet : diffusers.UNet2DConditionModel
    vae : diffusers.AutoencoderKL
    text_encoder : transformers.CLIPTextModel or CLIPTextModelWithProjection
    tokenizer : transformers tokenizer (pads to ``model_max_length``)
    scheduler : diffusers scheduler used for sampling
    image_encoder : transformers.CLIPVisionModel(WithProjection) or None
    attribute_classifier : AttributeClassifier or None (toy world only)
    attribute_classifier_b : AttributeClassifier or None
        The second, independently trained judge (toy world only; its own scenes, seed and
        architecture), so that generator figures can be checked by two judges.
    path : Path or None
        Folder the parts were loaded from.
    metadata : dict
        ``backbone.json`` of the folder (e.g. ``guidance_scale``), empty if absent.
    """

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    image_encoder: torch.nn.Module | None = None
    attribute_classifier: torch.nn.Module | None = None
    attribute_classifier_b: torch.nn.Module | None = None
    path: Path | None = None
    metadata: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ shapes
    @property
    def vae_scale_factor(self) -> int:
        """Image side / latent side (2 ** number of VAE down-samplings)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def text_embed_dim(self) -> int:
        """Width of ``encode_text`` hidden states (= the U-Net's cross-attention dim)."""
        return int(self.text_encoder.config.hidden_size)

    @property
    def image_encoder_layers(self) -> int:
        """Hidden states :meth:`encode_image_features` can return (patch embeddings + one per block; 0
        without an image encoder)."""
        if self.image_encoder is None:
            return 0
        return int(self.image_encoder.config.num_hidden_layers) + 1

    @property
    def text_length(self) -> int:
        """Tokens per caption (``tokenizer.model_max_length``)."""
        return int(self.tokenizer.model_max_length)

    @property
    def image_size(self) -> int:
        """Native image side in pixels (``unet.sample_size × vae_scale_factor``)."""
        s = self.unet.config.sample_size
        s = s[0] if isinstance(s, (list, tuple)) else s
        return int(s) * self.vae_scale_factor

    @property
    def guidance_scale(self) -> float:
        """Default classifier-free guidance scale (``backbone.json``; 7.5 if not recorded)."""
        return float(self.metadata.get("guidance_scale", 7.5))

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def modules(self) -> dict:
        """The torch modules by name (absent optional parts left out)."""
        m = {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder,
             "image_encoder": self.image_encoder, "attribute_classifier": self.attribute_classifier,
             "attribute_classifier_b": self.attribute_classifier_b}
        return {k: v for k, v in m.items() if v is not None}

    def to(self, device=None, dtype=None) -> "Backbone":
        """Move every part (in place) and return ``self``."""
        for m in self.modules().values():
            m.to(device) if dtype is None else m.to(device=device, dtype=dtype)
        return self

    def eval(self) -> "Backbone":
        for m in self.modules().values():
            m.eval().requires_grad_(False)
        return self

    # ------------------------------------------------------------------ text
    def tokenize(self, captions) -> torch.Tensor:
        """Token ids ``(B, text_length)``, padded like diffusers' SD pipelines."""
        captions = [captions] if isinstance(captions, str) else list(captions)
        ids = self.tokenizer(captions, padding="max_length", max_length=self.text_length,
                             truncation=True, return_tensors="pt").input_ids
        return ids.to(self.device)

    def encode_text(self, captions=None, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token hidden states ``(B, text_length, text_embed_dim)`` (last layer, final LN)."""
        ids = self.tokenize(captions) if input_ids is None else input_ids.to(self.device)
        mask = (ids != self.tokenizer.pad_token_id).long() if getattr(
            self.text_encoder.config, "use_attention_mask", False) else None
        return self.text_encoder(ids, attention_mask=mask, return_dict=True).last_hidden_state

    def encode_text_embeds(self, captions) -> torch.Tensor:
        """Pooled, projected caption embeddings ``(B, projection_dim)`` (CLIP space).

        Needs a text encoder with a projection (``CLIPTextModelWithProjection``).
        """
        out = self.text_encoder(self.tokenize(captions), return_dict=True)
        if not hasattr(out, "text_embeds"):
            raise CheckpointError("this text encoder has no projection (it is a "
                                  f"{type(self.text_encoder).__name__}); save a CLIPTextModelWithProjection.")
        return out.text_embeds

    # ------------------------------------------------------------------ images
    def _require_image_encoder(self):
        if self.image_encoder is None:
            where = f" in {self.path}" if self.path else ""
            raise DataNotFoundError(f"an image encoder (sub-folder image_encoder/){where}",
                                    [self.path / "image_encoder"] if self.path else [],
                                    hint="Add a CLIPVisionModelWithProjection saved with save_pretrained "
                                         "as image_encoder/ (SD image-variation layout).")
        return self.image_encoder

    def _clip_pixels(self, images: torch.Tensor) -> torch.Tensor:
        enc = self._require_image_encoder()
        s = int(enc.config.image_size)
        x = images.to(self.device, torch.float32)
        if x.shape[-1] != s or x.shape[-2] != s:
            x = F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        mean = torch.tensor(self.metadata.get("image_mean", _CLIP_MEAN), device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.metadata.get("image_std", _CLIP_STD), device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(next(enc.parameters()).dtype)

    def encode_image_features(self, images: torch.Tensor, layers=(-1,)) -> dict:
        """Per-layer image-encoder tokens, like CLIP's intermediate layers.

        Parameters
        ----------
        images : Tensor (B, 3, H, W) in [0, 1]
            Resized to the encoder's ``image_size`` and CLIP-normalised here.
        layers : sequence of int
            Indices into the encoder's ``hidden_states`` (0 = patch embeddings,
            ``i`` = after block ``i``, negative from the end).

        Returns
        -------
        dict
            ``{layer: Tensor (B, 1 + n_patches, width)}`` for each requested layer, plus
            ``"image_embeds"`` (B, projection_dim) when the encoder has a projection.
        """
        enc = self._require_image_encoder()
        out = enc(pixel_values=self._clip_pixels(images), output_hidden_states=True, return_dict=True)
        n = len(out.hidden_states)
        feats = {}
        for layer in layers:
            if not -n <= int(layer) < n:
                raise IndexError(f"layer {layer} out of range: the image encoder has {n} hidden states "
                                 f"(0..{n - 1}, or -{n}..-1).")
            feats[layer] = out.hidden_states[int(layer)]
        if hasattr(out, "image_embeds"):
            feats["image_embeds"] = out.image_embeds
        return feats

    def encode_image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """Projected image embeddings ``(B, projection_dim)`` (CLIP space)."""
        return self.encode_image_features(images, layers=())["image_embeds"]

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """Images resized (antialiased bilinear) to the backbone's native ``image_size``."""
        s = self.image_size
        if images.shape[-1] == s and images.shape[-2] == s:
            return images
        return F.interpolate(images.float(), size=(s, s), mode="bilinear", align_corners=False,
                             antialias=True).clamp(0, 1)

    # ------------------------------------------------------------------ latents
    def encode_latents(self, images: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        """VAE latents × ``scaling_factor``, ``(B, latent_channels, H/f, W/f)``; ``sample`` draws from the posterior."""
        x = images.to(self.device, next(self.vae.parameters()).dtype) * 2 - 1
        dist = self.vae.encode(x).latent_dist
        z = dist.sample(generator) if sample else dist.mean
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (z - shift) * self.vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from scaled latents (inverse of :meth:`encode_latents`)."""
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        z = latents.to(self.device, next(self.vae.parameters()).dtype) / self.vae.config.scaling_factor + shift
        return ((self.vae.decode(z).sample + 1) / 2).clamp(0, 1).float()

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(self, captions=None, guidance_scale: float | None = None, num_inference_steps: int = 25,
                 generator: torch.Generator | None = None, prompt_embeds: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None, latents: torch.Tensor | None = None,
                 batch_size: int = 64) -> torch.Tensor:
        """Text-to-image with classifier-free guidance; images ``(B, 3, H, W)`` in [0, 1].

        ``guidance_scale`` follows diffusers: 1 is conditional sampling without guidance,
        0 is unconditional (the empty caption), ``None`` the backbone's default.
        """
        gs = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        cond = self.encode_text(captions) if prompt_embeds is None else prompt_embeds.to(self.device)
        if negative_prompt_embeds is None:
            negative_prompt_embeds = self.encode_text([""]).expand(len(cond), -1, -1)
        n, side = len(cond), self.image_size // self.vae_scale_factor
        if latents is None:
            latents = torch.randn((n, self.latent_channels, side, side), generator=generator,
                                  dtype=torch.float32).to(self.device)
        out = []
        for i in range(0, n, batch_size):
            out.append(self._denoise(cond[i:i + batch_size], negative_prompt_embeds[i:i + batch_size],
                                     latents[i:i + batch_size], gs, num_inference_steps))
        return torch.cat(out)

    def _denoise(self, cond, uncond, x, gs, steps):
        dtype = next(self.unet.parameters()).dtype

        def noise(xin, t, branch, step):  # the shared loop's noise function: plain text conditioning
            ctx = torch.cat([uncond, cond]) if branch == "both" else cond if branch == "cond" else uncond
            return self.unet(xin.to(dtype), t, encoder_hidden_states=ctx.to(dtype)).sample

        return self.decode_latents(denoise_latents(self.scheduler, noise, x, steps, gs, device=self.device))


# ---------------------------------------------------------------------------- loading
def _looks_like_hub_id(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", name)) and not Path(name).exists()


def _resolve(name_or_path) -> Path:
    if isinstance(name_or_path, str) and name_or_path == "toy":
        if not (TOY_WEIGHTS_DIR / "unet").is_dir():
            raise DataNotFoundError("the shipped toy backbone weights", [TOY_WEIGHTS_DIR],
                                    data_card="toy_backbones.md",
                                    hint="Reinstall brainrecon, or train them: "
                                         "`brainrecon backbones train --out DIR` and load_backbone(DIR).")
        return TOY_WEIGHTS_DIR
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        return path
    if isinstance(name_or_path, str) and _looks_like_hub_id(name_or_path):
        return _from_hub(name_or_path)
    raise DataNotFoundError(f"the backbone folder {name_or_path!r}", [path], data_card="toy_backbones.md",
                            hint="Pass 'toy' for the shipped toy parts, or a folder in diffusers' Stable "
                                 "Diffusion layout (unet/ vae/ text_encoder/ tokenizer/ scheduler/).")


def _from_hub(repo_id: str) -> Path:
    """A hub id: its copy in the local Hugging Face cache, never a download (``load_*`` stays offline)."""
    from huggingface_hub import constants, snapshot_download

    patterns = [f"{p}/*" for p in list(REQUIRED_PARTS) + list(OPTIONAL_PARTS)] + ["*.json"]
    cached = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception as e:  # noqa: BLE001 - any failure means "not cached"
        why = type(e).__name__
    raise DataNotFoundError(
        f"the hub model {repo_id!r} (not in the local Hugging Face cache: {why})", [cached, Path(repo_id)],
        data_card="toy_backbones.md",
        hint="brainrecon never downloads: download the folder where you have network "
             "(e.g. `huggingface-cli download " + repo_id + " --local-dir DIR`) and pass load_backbone(DIR).")


def _check_parts(path: Path) -> None:
    missing = []
    for part, marker in REQUIRED_PARTS.items():
        d = path / part
        if not d.is_dir():
            missing.append(d)
        elif part == "tokenizer":
            if not any(all((d / f).is_file() for f in files) for files in _TOKENIZER_FILES):
                missing.append(d / "tokenizer.json")
        elif not (d / marker).is_file():
            missing.append(d / marker)
    if missing:
        names = ", ".join(p.relative_to(path).as_posix() for p in missing)
        raise DataNotFoundError(f"Stable Diffusion part(s) {names} of {path}", missing,
                                data_card="toy_backbones.md",
                                hint="A backbone folder needs unet/ vae/ text_encoder/ tokenizer/ scheduler/ "
                                     "(diffusers' save_pretrained layout); image_encoder/ is optional. A tokenizer "
                                     "needs tokenizer.json (fast) or vocab.json + merges.txt (CLIP BPE); save it "
                                     "with tokenizer.save_pretrained(folder / 'tokenizer').")
    for part in _WEIGHTED:
        if (path / part / "config.json").is_file():
            check_safetensors(path / part, f"the {part} part", _FIX)


def _transformers_class(folder: Path, allowed: tuple, default: str):
    arch = (read_json(folder / "config.json", _FIX).get("architectures") or [default])[0]
    return getattr(transformers, arch if arch in allowed else default)


def load_backbone(name_or_path="toy", device=None, dtype: torch.dtype | None = None) -> Backbone:
    """Load a latent-diffusion backbone: ``"toy"``, a local SD-layout folder, or a hub id.

    Parameters
    ----------
    name_or_path : str or path-like
        ``"toy"`` for the shipped toy parts; a folder with ``unet/ vae/ text_encoder/
        tokenizer/ scheduler/`` (and optionally ``image_encoder/``), e.g. a saved
        ``StableDiffusionPipeline`` or the output of ``brainrecon backbones train``; or a
        hub id, read from the local Hugging Face cache (downloaded only where the network
        allows it).
    device : str or torch.device, optional
        Where to put the parts (default CPU).
    dtype : torch.dtype, optional
        Cast the parts (e.g. ``torch.float16`` on a GPU).

    Returns
    -------
    Backbone
        In eval mode with gradients off.

    Raises
    ------
    InvalidInputError
        ``device`` is not available on this machine.
    DataNotFoundError
        The folder, one of its required parts, or the hub model is missing; the message
        names every missing path.
    CheckpointError
        A file is truncated or corrupt (named), or a part has only pickled weights: only
        safetensors are loaded (``use_safetensors=True``), a pickle is never opened.
    """
    device = check_device(device)
    path = _resolve(name_or_path)
    _check_parts(path)
    meta = read_json(path / "backbone.json", "Write it again (it holds JSON settings such as guidance_scale), "
                     "or delete it to use the defaults.") if (path / "backbone.json").is_file() else {}
    sched_cfg = read_json(path / "scheduler" / "scheduler_config.json",
                          "Re-save the scheduler with scheduler.save_pretrained(folder / 'scheduler').")
    safe = dict(use_safetensors=True)   # never fall back to pickled .bin weights
    try:
        unet = UNet2DConditionModel.from_pretrained(path / "unet", **safe)
        vae = AutoencoderKL.from_pretrained(path / "vae", **safe)
        te_cls = _transformers_class(path / "text_encoder", ("CLIPTextModel", "CLIPTextModelWithProjection"),
                                     "CLIPTextModel")
        text_encoder = te_cls.from_pretrained(path / "text_encoder", **safe)
        tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
        sched_cls = getattr(diffusers, sched_cfg.get("_class_name", "DDIMScheduler"), diffusers.DDIMScheduler)
        scheduler = sched_cls.from_pretrained(path / "scheduler")
        image_encoder = None
        if (path / "image_encoder" / "config.json").is_file():
            ie_cls = _transformers_class(path / "image_encoder",
                                         ("CLIPVisionModel", "CLIPVisionModelWithProjection"),
                                         "CLIPVisionModelWithProjection")
            image_encoder = ie_cls.from_pretrained(path / "image_encoder", **safe)
        judges = {}
        for name in ("attribute_classifier", "attribute_classifier_b"):
            if (path / name / "config.json").is_file():
                judges[name] = AttributeClassifier.from_pretrained(path / name, **safe)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"could not load the backbone in {path}: {e}") from e
    bb = Backbone(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                  image_encoder=image_encoder, path=path, metadata=meta, **judges)
    return bb.to(device=device, dtype=dtype).eval()
