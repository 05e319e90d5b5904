"""Toy backbones and SD-folder loading: tokenizer, round trips, load_backbone, acceptance."""
import json
import numpy as np

import pytest
import torch

from brainrecon.backbones import (TOY_WEIGHTS_DIR, AttributeClassifier, Backbone, ToyBackboneConfig,
                                  load_backbone, make_toy_tokenizer)
from brainrecon.training import train_toy_backbones
from brainrecon.backbones.toy import (MODEL_MAX_LENGTH, make_toy_image_encoder, make_toy_text_encoder,
                                      make_toy_unet, make_toy_vae)
from brainrecon.data.scenes import make_scenes, vocabulary
from brainrecon.errors import DataNotFoundError

pytestmark = pytest.mark.usefixtures("one_thread")   # module-level set_num_threads is undone by other files' fixtures


# ----------------------------------------------------------------------------- tokenizer
def test_tokenizer_round_trip_and_padding(tmp_path):
    tok = make_toy_tokenizer()
    caps = make_scenes(64, image_size=16, seed=3).captions
    enc = tok(caps, padding="max_length", max_length=tok.model_max_length, return_tensors="pt")
    assert enc.input_ids.shape == (64, MODEL_MAX_LENGTH)
    assert (enc.input_ids[:, 0] == tok.bos_token_id).all()
    assert tok.unk_token_id not in enc.input_ids          # every grammar word is in the vocabulary
    assert [tok.decode(i, skip_special_tokens=True) for i in enc.input_ids] == caps
    assert len(tok) == len(vocabulary()) + 4
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2, 3)
    empty = tok([""], padding="max_length", max_length=tok.model_max_length).input_ids[0]
    assert empty[:3] == [2, 3, 0]
    assert tok("a Purple zebra").input_ids == [2, tok.convert_tokens_to_ids("a"),
                                                tok.convert_tokens_to_ids("purple"), 1, 3]
    tok.save_pretrained(tmp_path / "tok")
    from transformers import AutoTokenizer

    tok2 = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert tok2.model_max_length == MODEL_MAX_LENGTH
    assert tok2(caps).input_ids == tok(caps).input_ids


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("part", ["vae", "unet", "text", "vision", "attributes"])
def test_save_load_round_trip_is_bit_exact(part, tmp_path):
    torch.manual_seed(0)
    if part == "vae":
        from diffusers import AutoencoderKL as cls

        m, x = make_toy_vae(16, (8, 16), 4), (torch.rand(2, 3, 16, 16),)
        run = lambda mm, x: mm(x[0], sample_posterior=False).sample  # noqa: E731
    elif part == "unet":
        from diffusers import UNet2DConditionModel as cls

        m = make_toy_unet(8, 4, (8, 16), 24)
        x = (torch.randn(2, 4, 8, 8), torch.tensor([3, 500]), torch.randn(2, 5, 24))
        run = lambda mm, x: mm(x[0], x[1], encoder_hidden_states=x[2]).sample  # noqa: E731
    elif part == "text":
        from transformers import CLIPTextModelWithProjection as cls

        m, x = make_toy_text_encoder(47, 16, 1, 2), (torch.randint(0, 47, (2, MODEL_MAX_LENGTH)),)
        run = lambda mm, x: mm(x[0]).last_hidden_state  # noqa: E731
    elif part == "vision":
        from transformers import CLIPVisionModelWithProjection as cls

        m, x = make_toy_image_encoder(16, 16, 1, 2, 8), (torch.randn(2, 3, 16, 16),)
        run = lambda mm, x: mm(pixel_values=x[0]).image_embeds  # noqa: E731
    else:
        cls = AttributeClassifier
        m, x = AttributeClassifier(image_size=16, channels=(8, 8)), (torch.rand(2, 3, 16, 16),)
        run = lambda mm, x: mm(x[0])["bbox"]  # noqa: E731
    m.eval()
    m.save_pretrained(tmp_path / part)
    m2 = cls.from_pretrained(tmp_path / part).eval()
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    with torch.no_grad():
        assert torch.equal(run(m, x), run(m2, x))


# ----------------------------------------------------------------------------- SD folder
def _write_tiny_sd(root, image_encoder=True):
    """A tiny folder in diffusers' Stable Diffusion layout, with SD's own classes."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    torch.manual_seed(0)
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                         block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24,
                         attention_head_dim=2, norm_num_groups=4).save_pretrained(root / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  layers_per_block=1, norm_num_groups=4, sample_size=16).save_pretrained(root / "vae")
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [" "]
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=12)
    tok.save_pretrained(root / "tokenizer")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=24, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=12)).save_pretrained(root / "text_encoder")
    PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  skip_prk_steps=True).save_pretrained(root / "scheduler")
    if image_encoder:
        CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                                       num_attention_heads=2, image_size=32, patch_size=8,
                                                       projection_dim=20)).save_pretrained(root / "image_encoder")
    return root


def test_load_backbone_on_a_tiny_sd_folder(tmp_path):
    bb = load_backbone(_write_tiny_sd(tmp_path / "sd"))
    assert isinstance(bb, Backbone)
    assert (bb.vae_scale_factor, bb.latent_channels, bb.text_embed_dim, bb.text_length, bb.image_size) == (2, 4, 24, 12, 16)
    with torch.no_grad():
        h = bb.encode_text(["a cat", "two dogs"])
        assert h.shape == (2, 12, 24)
        assert torch.allclose(h[0], bb.encode_text("a cat")[0])
        f = bb.encode_image_features(torch.rand(3, 3, 16, 16), layers=(0, 1, -1))
        assert set(f) == {0, 1, -1, "image_embeds"}
        assert f[1].shape == (3, 1 + 16, 16) and f["image_embeds"].shape == (3, 20)
        assert torch.equal(f[-1], f[2]) if 2 in f else True
        x = torch.rand(2, 3, 16, 16)
        z = bb.encode_latents(x)
        assert z.shape == (2, 4, 8, 8)
        assert torch.allclose(z, bb.encode_latents(x))               # posterior mean: deterministic
        y = bb.decode_latents(z)
        assert y.shape == (2, 3, 16, 16) and 0 <= y.min() and y.max() <= 1
        img = bb.generate(["a cat"], guidance_scale=3.0, num_inference_steps=2,
                          generator=torch.Generator().manual_seed(0))
        assert img.shape == (1, 3, 16, 16)
    with pytest.raises(IndexError, match="hidden states"):
        bb.encode_image_features(torch.rand(1, 3, 16, 16), layers=(7,))


def test_image_encoder_is_optional_and_named_when_needed(tmp_path):
    bb = load_backbone(_write_tiny_sd(tmp_path / "sd", image_encoder=False))
    assert bb.image_encoder is None
    with pytest.raises(DataNotFoundError, match="image_encoder"):
        bb.encode_image_features(torch.rand(1, 3, 16, 16))


def test_missing_parts_are_named(tmp_path):
    import shutil

    root = _write_tiny_sd(tmp_path / "sd", image_encoder=False)
    shutil.rmtree(root / "vae")
    (root / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(DataNotFoundError) as e:
        load_backbone(root)
    msg = str(e.value)
    assert "vae" in msg and "scheduler/scheduler_config.json" in msg and "(missing)" in msg
    assert "unet" not in msg.split("was not found")[0]
    with pytest.raises(DataNotFoundError, match="no-such-folder"):
        load_backbone(tmp_path / "no-such-folder")


@pytest.mark.parametrize("offline", ["1", "0"])
def test_hub_id_without_a_local_copy_is_refused_without_a_download(monkeypatch, tmp_path, offline):
    """load_* never reaches a network, whatever HF_HUB_OFFLINE says; the error names the cache searched."""
    import huggingface_hub
    from huggingface_hub import constants

    real = huggingface_hub.snapshot_download
    calls = []

    def spy(*a, **kw):
        calls.append(kw.get("local_files_only", False))
        return real(*a, **kw)

    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    with pytest.raises(DataNotFoundError, match="never downloads") as e:
        load_backbone("stabilityai/stable-diffusion-2-1-base")
    assert calls == [True]                                      # only the local cache was asked
    assert str(tmp_path / "hf-cache" / "models--stabilityai--stable-diffusion-2-1-base") in str(e.value)


# ----------------------------------------------------------------------------- quick preset
def test_quick_preset_trains_end_to_end_and_resumes(tmp_path):
    out = train_toy_backbones(ToyBackboneConfig.quick(), tmp_path / "quick")
    for part in ("tokenizer", "text_encoder", "image_encoder", "vae", "unet", "scheduler", "attribute_classifier",
                 "attribute_classifier_b"):
        assert (out / part).is_dir(), part
    rec = json.loads((out / "training_record.json").read_text())
    for part, r in rec["parts"].items():
        assert r["loss_final"] < r["loss_first"], part
        assert r["steps"] == getattr(ToyBackboneConfig.quick(), {"clip": "clip_steps", "vae": "vae_steps",
                                     "vae_decoder": "vae_decoder_steps", "unet": "unet_steps",
                                     "attribute_classifier": "attr_steps",
                                     "attribute_classifier_b": "judge_b_steps"}[part])
    assert {"vae_psnr_db", "clip_caption_to_image_top1", "t2i_match_default"} <= set(rec["metrics"])
    bb = load_backbone(out)
    assert bb.image_size == 16 and bb.text_embed_dim == 16 and bb.guidance_scale == 5.0
    # a rerun finds every part done and only re-evaluates
    before = (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    train_toy_backbones(ToyBackboneConfig.quick(), out, evaluate=False)
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == before


def test_vae_decoder_fine_tuning_keeps_the_latent_space(tmp_path):
    """The ft-MSE part changes the decoder only: same encoder bits, same scaling factor, lower loss."""
    from diffusers import AutoencoderKL

    from brainrecon.backbones.toy import make_toy_vae
    from brainrecon.training.toy_backbones import _train_vae_decoder

    cfg = ToyBackboneConfig.quick().replace(vae_decoder_steps=30, vae_decoder_lr=3e-3)
    torch.manual_seed(0)
    vae = make_toy_vae(16, (8, 8, 8), 4)
    vae.register_to_config(scaling_factor=1.7)
    vae.save_pretrained(tmp_path / "vae")
    images = torch.from_numpy(make_scenes(64, image_size=16, seed=1).images).permute(0, 3, 1, 2).contiguous()
    rec = _train_vae_decoder(cfg, {"images": images}, tmp_path)
    new = AutoencoderKL.from_pretrained(tmp_path / "vae")
    assert rec["steps"] == 30 and rec["loss_final"] < rec["loss_first"]
    assert new.config.scaling_factor == 1.7
    assert "_name_or_path" not in json.loads((tmp_path / "vae" / "config.json").read_text())
    old_sd, new_sd = vae.state_dict(), new.state_dict()
    for k in old_sd:
        same = torch.equal(old_sd[k], new_sd[k])
        assert same == (not k.startswith(("decoder.", "post_quant_conv."))), k
    assert _train_vae_decoder(cfg.replace(vae_decoder_steps=0), {"images": images}, tmp_path)["skipped"]


# ----------------------------------------------------------------------------- shipped weights
@pytest.fixture(scope="module")
def toy():
    return load_backbone("toy")


@pytest.fixture(scope="module")
def heldout():
    from brainrecon.metrics.backbones import heldout_scenes, images_to_tensor

    bb = load_backbone("toy")
    sc = heldout_scenes(100, bb.image_size, bb.metadata.get("heldout_seed", 10_000))
    return sc, images_to_tensor(sc.images)


def test_shipped_weights_are_small_and_complete():
    files = [p for p in TOY_WEIGHTS_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25 * 2**20
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in files)
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "image_encoder", "attribute_classifier"):
        assert (TOY_WEIGHTS_DIR / part).is_dir(), part


def test_shipped_vae_psnr_meets_acceptance(toy, heldout):
    """Issue 3 asks >= 28 dB: the shipped VAE (decoder fine-tuned) gets 28.7 dB on the card's 200
    held-out images and 29.7 dB on these 32; the guard sits between the two."""
    from brainrecon.metrics.backbones import vae_psnr

    _, x = heldout
    assert vae_psnr(toy, x[:32]).mean() >= 29.0


def test_shipped_clip_retrieval(toy, heldout):
    from brainrecon.metrics.backbones import clip_retrieval

    sc, x = heldout
    assert clip_retrieval(toy, x, sc.captions)["caption_to_image_top1"] >= 0.9


def test_shipped_attribute_classifier(toy, heldout):
    from brainrecon.metrics.backbones import attribute_accuracy

    sc, x = heldout
    a = attribute_accuracy(toy.attribute_classifier, x, sc.category, sc.colour, sc.bbox)
    assert a["category"] >= 0.88 and a["colour"] >= 0.93 and a["bbox_iou"] >= 0.78
    # trained partly on the VAE's reconstructions, it reads decoded images almost as well
    # (card: 90.0 % vs 92.5 % category on 200 images; the classifier of 2026-11-29 read 79.5 %)
    with torch.no_grad():
        r = toy.decode_latents(toy.encode_latents(x))
    v = attribute_accuracy(toy.attribute_classifier, r, sc.category, sc.colour)
    assert v["category"] >= 0.85 and v["both"] >= 0.83


def test_shipped_clip_hard_negatives(toy, heldout):
    """Swapping the main object's colour word always lowers toy CLIP's score; swapping its category
    word does in 67 % of the card's 100 pairs (chance 50 %): the text features hold shape only weakly."""
    from brainrecon.metrics.backbones import clip_hard_negatives

    sc, x = heldout
    h = clip_hard_negatives(toy, x, sc.captions)
    assert h["n_pairs"] == len(sc.captions) and h["colour"] >= 0.95
    assert h["category"] >= 0.55


def test_shipped_text_to_image_guidance_helps(toy, heldout):
    """Guidance makes samples follow the caption's colour (shipped: 75.5 % vs 14 % unconditional)."""
    from brainrecon.metrics.backbones import text_to_image_match

    sc, _ = heldout
    n = 32
    args = (toy, sc.captions[:n], sc.category[:n], sc.colour[:n])
    guided = text_to_image_match(*args, guidance_scale=None, num_inference_steps=15)
    plain = text_to_image_match(*args, guidance_scale=0.0, num_inference_steps=15)
    assert guided["guidance_scale"] == toy.guidance_scale == 5.0
    assert guided["colour"] >= 0.5
    assert guided["colour"] >= plain["colour"] + 0.3


def test_text_to_image_position_scores_the_place_word(toy, heldout):
    """A generator that draws the captioned scene itself puts its object where the caption says."""
    from types import SimpleNamespace

    from brainrecon.metrics.backbones import text_to_image_match

    sc, x = heldout
    n = 40
    perfect = SimpleNamespace(attribute_classifier=toy.attribute_classifier, guidance_scale=5.0,
                              image_size=toy.image_size, generate=lambda captions, **kw: x[:len(captions)])
    r = text_to_image_match(perfect, sc.captions[:n], sc.category[:n], sc.colour[:n], bbox=sc.bbox[:n])
    assert r["position_error"] < 0.06 and r["position_error_shuffled"] > 0.2
    assert r["category"] >= 0.8 and "position_error" not in text_to_image_match(
        perfect, sc.captions[:n], sc.category[:n], sc.colour[:n])


@pytest.mark.xfail(strict=True, reason="issue 3 asks category+colour match >= 80 %; the shipped U-Net "
                                       "gets 12 % (colour yes, shape near chance) — data_cards/toy_backbones.md")
def test_shipped_text_to_image_meets_acceptance(toy, heldout):
    from brainrecon.metrics.backbones import text_to_image_match

    sc, _ = heldout
    n = 32
    r = text_to_image_match(toy, sc.captions[:n], sc.category[:n], sc.colour[:n], num_inference_steps=15)
    assert r["both"] >= 0.8


def test_toy_clip_hard_negatives_swap_one_word_per_caption():
    """NegCLIP captions for toy CLIP: k per scene, one category/colour token changed, seeded by step."""
    from brainrecon.backbones.toy import make_toy_tokenizer
    from brainrecon.training.toy_backbones import HARD_NEGATIVES, _hard_negative_ids
    from brainrecon.data.scenes import CATEGORIES, COLOURS

    tok = make_toy_tokenizer()
    sc = make_scenes(16, image_size=16, seed=2)
    ids = tok(sc.captions, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    data = {"captions": sc.captions, "ids": ids, "tokenizer": tok}
    cfg = ToyBackboneConfig.quick().replace(clip_hard_negatives=3)
    idx = np.array([3, 0, 7, 7])
    negs = _hard_negative_ids(cfg, data, idx, step=5)
    assert negs.shape == (12, tok.model_max_length)
    assert torch.equal(negs, _hard_negative_ids(cfg, data, idx, step=5))
    assert not torch.equal(negs, _hard_negative_ids(cfg, data, idx, step=6))
    vocab = {"category": set(tok.convert_tokens_to_ids(list(CATEGORIES))),
             "colour": set(tok.convert_tokens_to_ids(list(COLOURS)))}
    for k, (attr, _) in enumerate(HARD_NEGATIVES[:3]):
        for j, i in enumerate(idx):
            neg, own = negs[k * len(idx) + j], ids[i]
            where = (neg != own).nonzero()[:, 0]
            assert len(where) == 1
            assert int(own[where]) in vocab[attr] and int(neg[where]) in vocab[attr]
    assert _hard_negative_ids(cfg.replace(clip_hard_negatives=0), data, idx, 1).shape == (0, tok.model_max_length)


def test_toy_clip_trains_with_hard_negatives(tmp_path):
    from brainrecon.backbones.toy import make_toy_tokenizer
    from brainrecon.training.toy_backbones import _train_clip

    tok = make_toy_tokenizer()
    sc = make_scenes(64, image_size=16, seed=4)
    ids = tok(sc.captions, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    data = {"captions": sc.captions, "ids": ids, "tokenizer": tok,
            "images": torch.from_numpy(sc.images).permute(0, 3, 1, 2).contiguous()}
    torch.manual_seed(0)
    rec = _train_clip(ToyBackboneConfig.quick().replace(clip_hard_negatives=2, clip_steps=30, clip_lr=3e-3), data,
                      tmp_path)
    assert rec["steps"] == 30 and rec["loss_final"] < rec["loss_first"]
    assert (tmp_path / "text_encoder" / "model.safetensors").is_file()
