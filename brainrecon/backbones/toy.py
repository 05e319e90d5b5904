"""The toy world's Stable Diffusion: word tokenizer, toy CLIP, tiny VAE and U-Net.

Everything is built from small configs of the same ``transformers`` / ``diffusers``
classes that Stable Diffusion 2.1 uses, so the toy parts load, save and run through
exactly the code that serves a real SD checkpoint (:func:`brainrecon.backbones.load_backbone`).

Parts and where they are saved (diffusers Stable Diffusion layout)::

    tokenizer/          word-level tokenizer over the caption grammar (PreTrainedTokenizerFast)
    text_encoder/       toy CLIP text tower, CLIPTextModelWithProjection
    image_encoder/      toy CLIP image tower, CLIPVisionModelWithProjection
    vae/                AutoencoderKL, 32×32 RGB -> 8×8×16 latents (×4)
    unet/               UNet2DConditionModel, cross-attention on text hidden states
    scheduler/          DDIMScheduler (epsilon prediction, scaled-linear betas)
    attribute_classifier/  category / colour / box of the main object (evaluation)

:class:`ToyBackboneConfig` holds the recipe; :func:`~brainrecon.training.train_toy_backbones` (in
:mod:`brainrecon.training.toy_backbones`) trains every part with :func:`brainrecon.training.fit`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import (CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig,
                          CLIPVisionModelWithProjection, PreTrainedTokenizerFast)

from ..data.scenes import vocabulary
from ..errors import InvalidInputError, check_choice

__all__ = [
    "SPECIAL_TOKENS",
    "MODEL_MAX_LENGTH",
    "ToyBackboneConfig",
    "make_toy_tokenizer",
    "make_toy_text_encoder",
    "make_toy_image_encoder",
    "make_toy_vae",
    "make_toy_unet",
    "make_toy_scheduler",
]

#: Special tokens, in id order: pad=0, unk=1, bos=2, eos=3. (eos must not be id 2: CLIP's
#: text model treats ``eos_token_id == 2`` as the legacy "argmax of ids" pooling.)
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
#: Token positions of the toy text encoder. The longest grammar caption has 31 words and
#: commas, 33 tokens with bos/eos; every caption is padded to this length (as SD pads to 77).
MODEL_MAX_LENGTH = 40


@dataclass(frozen=True)
class ToyBackboneConfig:
    """Recipe of the toy backbones (the shipped weights use :meth:`default`).

    Parameters
    ----------
    seed : int
        Seed of the training scenes (``make_scenes(n_train, seed=seed)``) and of training.
    heldout_seed : int
        Seed of the held-out scenes used for every reported figure (never trained on).
    image_size : int
        Side of the square images, pixels.
    n_train : int
        Training scenes, generated once and kept in memory.
    n_eval : int
        Held-out scenes for the VAE PSNR and the attribute classifier accuracy.
    n_retrieval : int
        Held-out caption–image pairs for CLIP top-1 retrieval.
    n_generate : int
        Held-out captions for the text-to-image attribute match.
    clip_width, clip_layers, clip_heads, clip_patch_size : int
        Toy CLIP towers (both towers share width, depth and heads).
    clip_steps, clip_batch_size, clip_lr : int, int, float
        Contrastive training.
    clip_hard_negatives : int
        Hard-negative captions per image (NegCLIP): the first ``k`` of the main object's
        category swapped, any object's category swapped, any object's colour swapped, the main
        object's colour swapped, the main object's place phrase swapped. They join the batch's
        captions in the image → text loss. ``0`` is plain symmetric InfoNCE.
    clip_attribute_weight : float
        Weight of an auxiliary loss on the text tower: unit-norm linear heads at a fixed
        temperature read the main object's category, colour and place (what the caption says,
        :func:`brainrecon.data.scenes.caption_attributes`) from the mean of the U-Net context
        (``last_hidden_state``, in units of its std). Plain InfoNCE among random toy captions is won
        on colour and background, so it leaves place and category quiet in that context; the heads
        cannot grow, so the attributes must become loud. ``0``: none.
    vae_channels : tuple of int
        ``block_out_channels`` of the VAE; ``len - 1`` halvings (3 -> ×4).
    vae_latent_channels : int
    vae_steps, vae_batch_size, vae_lr, vae_kl_weight
        VAE training (L1+L2 reconstruction + ``vae_kl_weight`` × KL).
    vae_sample_posterior : bool
        Decode a sample of the posterior while training (a VAE proper, as Stable Diffusion's
        was trained), so that the encoder's variance is learned and every latent near a
        training latent decodes to the same scene. ``False`` decodes the posterior mean (a
        deterministic auto-encoder: sharper, but its decoder has never seen an inexact latent).
    vae_latent_noise : float
        While the VAE trains, its decoder reads the posterior mean plus Gaussian noise of
        standard deviation ``u · vae_latent_noise`` × the batch's latent std (``u`` uniform in
        [0, 1] per image), so the encoder must carry every attribute it wants decoded in
        directions that survive that much noise (a "diffusable" latent). ``0``: exact means.
    vae_semantic_weight : float
        Weight of an auxiliary loss that asks a 1×1 linear head to read, from the (noised,
        std-normalised) latent of each cell, which category covers that cell's pixels (the
        renderer's segmentation, :func:`brainrecon.data.scenes.render_category_maps`): the toy
        world's counterpart of aligning a VAE's latent with a foundation model's features
        (VA-VAE, Yao et al. 2025). The head is discarded after training. ``0``: none.
    vae_decoder_steps, vae_decoder_batch_size, vae_decoder_lr
        Then the decoder alone is fine-tuned on the frozen encoder's posterior means (as
        Stable Diffusion's ``ft-MSE`` VAE was): sharper images, the same latent space. ``0``
        skips it.
    vae_decoder_noise : float
        During that fine-tuning, Gaussian noise of standard deviation ``u · vae_decoder_noise``
        × the latents' std (``u`` uniform in [0, 1] per image) is added to the posterior means,
        so that latents near a training latent decode to the same scene (a generated latent is
        never exact). ``0``: exact means only.
    unet_channels : tuple of int
        ``block_out_channels`` of the U-Net (the last level has no attention). One width, e.g.
        ``(64,)``, makes a U-Net that never downsamples: one level at the latent's resolution,
        with attention, which the diagnostic ladder found to carry a shape learnt at one place to
        every other (``data_cards/toy_backbones.md``, § 10).
    unet_layers_per_block : int
        ResNet (and attention) blocks per level.
    unet_steps, unet_batch_size, unet_lr
        Latent-diffusion training.
    unet_norm_groups : int or None
        GroupNorm groups of the U-Net (``None``: the most of 32, 16, ... that divides every width).
    prediction_type : {"epsilon", "v_prediction"}
        What the U-Net is trained to predict (recorded in ``scheduler/``).
    unet_min_snr_gamma : float or None
        Min-SNR-γ loss weighting (Hang et al. 2023): each timestep's loss × ``min(SNR, γ) / SNR``
        (ε) or ``/ (SNR + 1)`` (v). ``None``: unweighted.
    zero_terminal_snr : bool
        Train and sample on betas rescaled to zero terminal SNR (needs ``v_prediction``).
    cfg_dropout : float
        Probability of replacing the caption by the empty caption (classifier-free guidance).
    attr_steps, attr_batch_size, attr_lr, attr_channels
        Attribute-classifier training and its conv stages.
    attr_vae_fraction : float
        Share of each classifier batch shown as the trained VAE's reconstruction (the rest:
        half 3×3-blurred, half as rendered), so that decoded and generated images are judged
        as well as real ones. The classifier is therefore trained after the VAE.
    judge_b_channels, judge_b_steps, judge_b_seed
        The second, independent judge (``attribute_classifier_b/``): conv stages (max-pool
        downsampling), steps, and the seed of both its own training scenes and its training.
    guidance_scale : float
        Default classifier-free guidance scale (recorded in ``backbone.json``).
    num_inference_steps : int
        DDIM steps used for the reported samples.
    checkpoint_every : int
        Steps between resumable checkpoints of each part.
    threads : int or None
        ``torch.set_num_threads`` during training (``None``: leave as is).
    progress : bool
        Progress bars.
    """

    seed: int = 0
    heldout_seed: int = 10_000
    image_size: int = 32
    n_train: int = 20_000
    n_eval: int = 200
    n_retrieval: int = 100
    n_generate: int = 200
    clip_width: int = 96
    clip_layers: int = 3
    clip_heads: int = 4
    clip_patch_size: int = 8
    clip_steps: int = 450
    clip_batch_size: int = 128
    clip_lr: float = 1e-3
    clip_hard_negatives: int = 0
    clip_attribute_weight: float = 0.0
    vae_channels: tuple = (16, 32, 64)
    vae_latent_channels: int = 16
    vae_steps: int = 3000
    vae_batch_size: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    vae_sample_posterior: bool = False
    vae_latent_noise: float = 0.0
    vae_semantic_weight: float = 0.0
    vae_decoder_steps: int = 6000
    vae_decoder_batch_size: int = 32
    vae_decoder_lr: float = 5e-4
    vae_decoder_noise: float = 0.0
    unet_channels: tuple = (32, 64, 64)
    unet_steps: int = 5000
    unet_batch_size: int = 64
    unet_lr: float = 1e-3
    unet_layers_per_block: int = 1
    unet_norm_groups: int | None = None
    unet_min_snr_gamma: float | None = None
    prediction_type: str = "epsilon"
    zero_terminal_snr: bool = False
    cfg_dropout: float = 0.1
    attr_steps: int = 8000
    attr_batch_size: int = 64
    attr_channels: tuple = (16, 32, 64, 128)
    attr_lr: float = 2e-3
    attr_vae_fraction: float = 1 / 3
    judge_b_channels: tuple = (24, 48, 96)
    judge_b_steps: int = 6000
    judge_b_seed: int = 1
    guidance_scale: float = 5.0
    num_inference_steps: int = 25
    checkpoint_every: int = 100
    threads: int | None = 2
    progress: bool = True

    def __post_init__(self):
        # refuse a recipe that would fail only after an hour of training the earlier parts
        _check_prediction(self.prediction_type, self.zero_terminal_snr)
        if int(self.unet_layers_per_block) < 1 or len(tuple(self.unet_channels)) < 1:
            raise InvalidInputError(f"unet_channels needs one width or more and unet_layers_per_block ≥ 1; got "
                                    f"{self.unet_channels!r} and {self.unet_layers_per_block!r}.")
        if self.unet_min_snr_gamma is not None and not float(self.unet_min_snr_gamma) > 0:
            raise InvalidInputError(f"unet_min_snr_gamma must be > 0 (e.g. 5) or None; got {self.unet_min_snr_gamma!r}.")
        if int(self.judge_b_seed) in (int(self.seed), int(self.heldout_seed)):
            raise InvalidInputError(f"judge_b_seed={self.judge_b_seed} must differ from seed ({self.seed}) and "
                                    f"heldout_seed ({self.heldout_seed}): the second judge trains on scenes of its own.")

    @classmethod
    def default(cls) -> "ToyBackboneConfig":
        """The recipe of the shipped weights."""
        return cls()

    @classmethod
    def quick(cls) -> "ToyBackboneConfig":
        """A few seconds end to end (tests): tiny parts, tens of steps, no quality claims."""
        return cls(n_train=128, n_eval=8, n_retrieval=8, n_generate=4, image_size=16, clip_width=16,
                   clip_layers=1, clip_heads=2, clip_steps=20, clip_batch_size=16,
                   vae_channels=(8, 8, 8), vae_steps=20, vae_batch_size=8, vae_decoder_steps=10,
                   vae_decoder_batch_size=8,
                   unet_channels=(8, 16), unet_steps=20, unet_batch_size=16,
                   attr_steps=20, attr_batch_size=8, attr_channels=(8, 8), judge_b_channels=(8, 8),
                   judge_b_steps=10, num_inference_steps=2,
                   checkpoint_every=10, threads=1, progress=False)

    def replace(self, **changes) -> "ToyBackboneConfig":
        """A copy with some fields changed."""
        return replace(self, **changes)


# --------------------------------------------------------------------------- tokenizer
def make_toy_tokenizer(words=None, model_max_length: int = MODEL_MAX_LENGTH):
    """Word-level tokenizer over the caption grammar's vocabulary (no download).

    Parameters
    ----------
    words : sequence of str, optional
        Vocabulary; default :func:`brainrecon.data.scenes.vocabulary`.
    model_max_length : int
        Length every caption is padded/truncated to (``padding="max_length"``).

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        Lower-cases, splits words and punctuation, wraps in ``<bos> … <eos>``, pads with
        ``<pad>`` (id 0); unknown words map to ``<unk>``. ``decode(..., skip_special_tokens=True)``
        gives the caption back.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    if words is None:
        words = vocabulary()
    vocab = {t: i for i, t in enumerate(list(SPECIAL_TOKENS) + [w for w in words if w not in SPECIAL_TOKENS])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", pair="<bos> $A <eos> $B <eos>",
        special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])])
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=True)   # joins words, "a , b" -> "a, b"
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<bos>", eos_token="<eos>",
                                   model_max_length=int(model_max_length), padding_side="right")


# --------------------------------------------------------------------------- models
def make_toy_text_encoder(vocab_size: int, width: int = 128, layers: int = 4, heads: int = 4,
                          max_length: int = MODEL_MAX_LENGTH):
    """Toy CLIP text tower: ``CLIPTextModelWithProjection`` (projection to ``width``)."""
    cfg = CLIPTextConfig(vocab_size=int(vocab_size), hidden_size=width, intermediate_size=4 * width,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         max_position_embeddings=int(max_length), projection_dim=width,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3)
    return CLIPTextModelWithProjection(cfg)


def make_toy_image_encoder(image_size: int = 64, width: int = 128, layers: int = 4, heads: int = 4,
                           patch_size: int = 8):
    """Toy CLIP image tower: a ViT, ``CLIPVisionModelWithProjection`` (projection to ``width``)."""
    cfg = CLIPVisionConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                           num_attention_heads=heads, image_size=image_size, patch_size=patch_size,
                           projection_dim=width)
    return CLIPVisionModelWithProjection(cfg)


def _groups(channels) -> int:
    g = 32
    while any(c % g for c in channels):
        g //= 2
    return max(1, g)


def make_toy_vae(image_size: int = 64, channels=(32, 64, 64), latent_channels: int = 4):
    """Tiny ``AutoencoderKL``: ``len(channels) - 1`` halvings (default 64×64 -> 16×16×4)."""
    n = len(channels)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         block_out_channels=tuple(channels), layers_per_block=1,
                         norm_num_groups=_groups(channels), sample_size=image_size,
                         mid_block_add_attention=False)


def make_toy_unet(sample_size: int = 16, in_channels: int = 4, channels=(64, 96, 128),
                  cross_attention_dim: int = 128, norm_groups: int | None = None, layers_per_block: int = 1):
    """Tiny text-conditioned ``UNet2DConditionModel``: cross-attention on every level but the last.

    A single width (``channels=(64,)``) gives a U-Net that never downsamples — one attending level
    at ``sample_size`` (diffusers' last level has no downsampler) around the attending mid block.
    ``norm_groups`` sets the GroupNorm groups (default: the most of 32, 16, ... dividing every width).
    """
    n = len(channels)
    if n == 1:
        down, up = ("CrossAttnDownBlock2D",), ("CrossAttnUpBlock2D",)
    else:
        down = ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",)
        up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1)
    g = int(norm_groups) if norm_groups else _groups(channels)
    return UNet2DConditionModel(sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
                                layers_per_block=int(layers_per_block), block_out_channels=tuple(channels),
                                down_block_types=down, up_block_types=up,
                                cross_attention_dim=int(cross_attention_dim),
                                attention_head_dim=max(1, channels[0] // 16 * 2) if channels[0] >= 16 else 1,
                                norm_num_groups=g)


def _check_prediction(prediction_type: str, zero_terminal_snr: bool) -> None:
    check_choice("prediction_type", prediction_type, ("epsilon", "v_prediction"))
    if zero_terminal_snr and prediction_type != "v_prediction":
        raise InvalidInputError("zero_terminal_snr=True needs prediction_type='v_prediction': at zero SNR the "
                                "noise says nothing about the image.")


def make_toy_scheduler(prediction_type: str = "epsilon", zero_terminal_snr: bool = False):
    """The DDIM sampler of the toy backbones: SD's scaled-linear betas.

    Parameters
    ----------
    prediction_type : {"epsilon", "v_prediction"}
        What the U-Net predicts (SD 2.1-base: epsilon; SD 2.1-768: v).
    zero_terminal_snr : bool
        Rescale the betas so that the last timestep is pure noise (Lin et al. 2024), with
        "trailing" timestep spacing; needs ``v_prediction``.
    """
    _check_prediction(prediction_type, zero_terminal_snr)
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, clip_sample=False, set_alpha_to_one=bool(zero_terminal_snr),
                         steps_offset=0 if zero_terminal_snr else 1,
                         timestep_spacing="trailing" if zero_terminal_snr else "leading",
                         rescale_betas_zero_snr=bool(zero_terminal_snr), prediction_type=prediction_type)
