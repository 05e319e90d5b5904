"""Recipe factors of the generator diagnosis (issue 11): v prediction, zero terminal SNR, the second
judge, noised-latent decoder training, and the diagnostic ladder's quick mode."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from brainrecon.backbones import AttributeClassifier, ToyBackboneConfig, load_backbone
from brainrecon.training import train_toy_backbones
from brainrecon.backbones.toy import make_toy_scheduler, make_toy_unet, make_toy_vae
from brainrecon.data.scenes import make_scenes
from brainrecon.errors import InvalidInputError

pytestmark = pytest.mark.usefixtures("one_thread")   # module-level set_num_threads is undone by other files' fixtures
ROOT = Path(__file__).resolve().parents[1]


def test_toy_scheduler_prediction_types_and_zero_snr():
    eps = make_toy_scheduler()
    assert eps.config.prediction_type == "epsilon" and float(eps.alphas_cumprod[-1]) > 1e-3
    v = make_toy_scheduler("v_prediction", zero_terminal_snr=True)
    assert v.config.prediction_type == "v_prediction" and float(v.alphas_cumprod[-1]) == 0.0
    v.set_timesteps(25)
    assert int(v.timesteps[0]) == 999            # trailing spacing starts from pure noise
    with pytest.raises(InvalidInputError, match="v_prediction"):
        make_toy_scheduler("epsilon", zero_terminal_snr=True)
    with pytest.raises(InvalidInputError, match="prediction_type"):
        make_toy_scheduler("sample")


def test_unet_norm_groups_is_configurable():
    u = make_toy_unet(8, 4, (32, 64), 16, norm_groups=8)
    assert u.config.norm_num_groups == 8 and u.conv_norm_out.num_groups == 8
    assert make_toy_unet(8, 4, (32, 64), 16).config.norm_num_groups == 32


def test_a_one_width_unet_never_downsamples_and_attends():
    u = make_toy_unet(8, 4, (16,), 16, norm_groups=4, layers_per_block=2)
    assert all(b.downsamplers is None for b in u.down_blocks) and all(b.upsamplers is None for b in u.up_blocks)
    assert len(u.down_blocks[0].attentions) == 2 and len(u.up_blocks[0].attentions) == 3
    x = torch.randn(2, 4, 8, 8)
    out = u(x, torch.tensor([10, 900]), encoder_hidden_states=torch.randn(2, 5, 16)).sample
    assert out.shape == x.shape


def test_min_snr_weights_follow_hang_et_al():
    from brainrecon.diffusion import min_snr_weight

    t = torch.tensor([0, 300, 600, 999])
    for kind in ("epsilon", "v_prediction"):
        s = make_toy_scheduler(kind)
        ab = s.alphas_cumprod[t].float()
        snr = ab / (1 - ab)
        want = torch.minimum(snr, torch.tensor(5.0)) / (snr if kind == "epsilon" else snr + 1)
        torch.testing.assert_close(min_snr_weight(s, t, 5.0), want)
    v0 = make_toy_scheduler("v_prediction", zero_terminal_snr=True)
    w = min_snr_weight(v0, t, 5.0)
    assert torch.isfinite(w).all() and float(w[-1]) == 0.0 and float(w[0]) == pytest.approx(5 / (float(
        v0.alphas_cumprod[0] / (1 - v0.alphas_cumprod[0])) + 1))


def test_second_judge_architecture_differs_and_is_refused_when_unknown():
    a = AttributeClassifier(image_size=16, channels=(8, 8, 8))
    b = AttributeClassifier(image_size=16, channels=(8, 8, 8), downsample="maxpool")
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in a.modules())
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in b.modules()) == 2
    x = torch.rand(3, 3, 16, 16)
    assert b(x)["category_logits"].shape == (3, 10)
    with pytest.raises(InvalidInputError, match="downsample"):
        AttributeClassifier(downsample="avg")


def test_quick_recipe_with_v_prediction_trains_and_ships_both_judges(tmp_path):
    cfg = ToyBackboneConfig.quick().replace(prediction_type="v_prediction", zero_terminal_snr=True,
                                            vae_sample_posterior=True, vae_decoder_noise=0.5,
                                            unet_channels=(16,), unet_layers_per_block=2, unet_norm_groups=4,
                                            unet_min_snr_gamma=5.0)
    out = train_toy_backbones(cfg, tmp_path / "v")
    unet = json.loads((out / "unet" / "config.json").read_text())
    assert unet["block_out_channels"] == [16] and unet["layers_per_block"] == 2
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == "v_prediction" and sched["rescale_betas_zero_snr"] is True
    rec = json.loads((out / "training_record.json").read_text())
    assert rec["parts"]["unet"]["loss_final"] < rec["parts"]["unet"]["loss_first"]
    assert rec["parts"]["vae"]["loss_final"] < rec["parts"]["vae"]["loss_first"]
    bb = load_backbone(out)
    assert bb.attribute_classifier_b is not None and bb.attribute_classifier_b.config.downsample == "maxpool"
    assert bb.attribute_classifier.config.downsample == "stride"
    m = json.loads((out / "metrics.json").read_text())      # both judges score the same images
    assert {"t2i_category_gs5_b", "t2i_match_gs0_b", "judge_b_category_acc", "judge_b_vae_both_acc"} <= set(m)
    assert all(0 <= m[k] <= 1 for k in ("t2i_category_gs5_b", "judge_b_vae_category_acc"))
    imgs = bb.generate(["a large red star in the centre on a plain grey background"], num_inference_steps=2)
    assert imgs.shape == (1, 3, 16, 16) and torch.isfinite(imgs).all()


def test_recipe_settings_are_refused_before_any_training():
    with pytest.raises(InvalidInputError, match="judge_b_seed"):
        ToyBackboneConfig.quick().replace(judge_b_seed=0)
    with pytest.raises(InvalidInputError, match="v_prediction"):
        ToyBackboneConfig(zero_terminal_snr=True)
    with pytest.raises(InvalidInputError, match="prediction_type"):
        ToyBackboneConfig(prediction_type="x0")
    with pytest.raises(InvalidInputError, match="unet_min_snr_gamma"):
        ToyBackboneConfig(unet_min_snr_gamma=0)
    with pytest.raises(InvalidInputError, match="unet_layers_per_block"):
        ToyBackboneConfig(unet_layers_per_block=0)


def test_noised_decoder_training_keeps_the_encoder(tmp_path):
    from brainrecon.training.toy_backbones import _train_vae_decoder

    torch.manual_seed(0)
    vae = make_toy_vae(16, (8, 8, 8), 4)
    vae.register_to_config(scaling_factor=1.3)
    vae.save_pretrained(tmp_path / "vae")
    images = torch.from_numpy(make_scenes(64, image_size=16, seed=1).images).permute(0, 3, 1, 2).contiguous()
    cfg = ToyBackboneConfig.quick().replace(vae_decoder_steps=20, vae_decoder_lr=3e-3, vae_decoder_noise=0.5)
    rec = _train_vae_decoder(cfg, {"images": images}, tmp_path)
    from diffusers import AutoencoderKL

    new = AutoencoderKL.from_pretrained(tmp_path / "vae")
    assert rec["steps"] == 20
    for k, v in vae.state_dict().items():
        assert torch.equal(v, new.state_dict()[k]) == (not k.startswith(("decoder.", "post_quant_conv."))), k


def test_ladder_quick_mode_writes_every_column(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "toy_unet_ladder.py"), "--quick", "--rungs",
                          "base", "v_pred", "--work", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads((tmp_path / "quick.json").read_text())["rungs"]
    assert set(res) == {"base", "v_pred"} and res["v_pred"]["factors"]["prediction"] == "v_prediction"
    row = res["v_pred"]["curve"][-1]
    assert {"category", "colour", "both", "position_error", "position_error_shuffled"} <= set(row["gs5"]["shipped"])
    assert {"t961", "t200", "mean_baseline"} <= set(row["x0_mse_by_t"]) and "gs0" in row
    assert 0 <= res["base"]["judge_ceiling_round_trip"]["shipped"]["category"] <= 1
    table = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "toy_unet_ladder.py"), "--table",
                            str(tmp_path / "quick.json")], capture_output=True, text=True, timeout=120).stdout
    assert "| v_pred |" in table and "| base |" in table
    # a later call with more steps resumes the rung from its checkpoint and keeps the earlier rows
    more = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "toy_unet_ladder.py"), "--quick", "--rungs",
                           "v_pred", "--eval-at", "4", "8", "12", "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert more.returncode == 0, more.stderr[-2000:]
    assert "resuming v_pred from step 8 (2 earlier rows kept)" in more.stdout
    again = json.loads((tmp_path / "quick.json").read_text())["rungs"]
    assert [r["step"] for r in again["v_pred"]["curve"]] == [4, 8, 12]
    assert again["v_pred"]["curve"][1] == res["v_pred"]["curve"][1]
    assert again["v_pred"]["curve"][2]["train_cpu_s"] > res["v_pred"]["curve"][1]["train_cpu_s"]
    assert again["base"] == res["base"]


def test_ladder_cosine_rung_records_its_schedule_and_keeps_checkpoints_per_schedule_length(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "toy_unet_ladder.py"), "--quick", "--rungs",
                          "v_clip_attr_flat_cosine", "--eval-at", "4", "8", "--work", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads((tmp_path / "quick.json").read_text())["rungs"]["v_clip_attr_flat_cosine"]
    assert res["factors"]["lr_schedule"] == "cosine" and res["parent"] == "v_clip_attr_flat"
    assert [r["step"] for r in res["curve"]] == [4, 8]
    # the schedule's length is part of the run: its checkpoints sit apart from a constant-lr run's
    rung_dir = tmp_path / "v_clip_attr_flat_cosine"
    assert (rung_dir / "fit-cosine-8").is_dir() and not (rung_dir / "fit").exists()


def test_judge_b_script_trains_the_second_judge_and_scores_both(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "toy_judge_b.py"), "--quick", "--out", str(tmp_path / "run"),
           "--json", str(tmp_path / "jb.json")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads((tmp_path / "jb.json").read_text())
    assert set(res["judges"]) == {"shipped", "b"}
    for j in res["judges"].values():
        assert set(j) == {"real", "vae_round_trip"} and all(0 <= v <= 1 for v in j["real"].values())
    assert res["judges"]["shipped"]["real"]["category"] > 0.8       # the shipped judge on real held-out scenes
    assert res["training"]["steps"] == 20 and 0 <= res["category_agreement_on_round_trips"] <= 1
    judge = AttributeClassifier.from_pretrained(tmp_path / "run" / "attribute_classifier_b")
    assert judge.config.downsample == "maxpool"
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)     # resumes: nothing left to train
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((tmp_path / "jb.json").read_text())["training"]["resumed_from"] == 20


def test_text_probe_quick_reads_the_shipped_encoders_contexts():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "toy_text_probe.py"), "--quick"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    sep = res["separation"]
    assert sep["colour"]["mean"] > 2 * sep["place"]["mean"]          # the shipped encoder's quiet place words
    assert all(0 <= v <= 1 for v in res["linear_readout"].values()) and res["linear_readout"]["colour"] > 0.5


def test_category_maps_follow_the_painting_order():
    from brainrecon.data.scenes import CATEGORIES, render_category_maps, render_masks

    sc = make_scenes(40, image_size=32, seed=3)
    maps = render_category_maps(sc)
    assert maps.shape == (40, 32, 32) and maps.dtype == np.uint8 and maps.max() <= len(CATEGORIES)
    for i in range(40):
        objs = sc.objects[i]
        masks = render_masks(objs, 32) >= 0.5
        top = objs[-1]                                  # painted last: nothing covers it
        assert (maps[i][masks[-1]] == 1 + CATEGORIES.index(top["category"])).all()
        assert (maps[i][~masks.any(0)] == 0).all()      # background wherever no object covers half a pixel


def test_caption_attributes_read_what_the_caption_says():
    from brainrecon.data.scenes import PLACE_WORDS, caption_attributes

    sc = make_scenes(300, image_size=32, seed=6)
    said = caption_attributes(sc.captions)
    assert (said["category"] == sc.category).all() and (said["colour"] == sc.colour).all()
    places = list(PLACE_WORDS.values())
    for c, k in zip(sc.captions[:50], said["place"][:50]):
        assert c.split(" ", 4)[4].startswith(places[k])
    assert caption_attributes(["a small red ring at the top left on a plain grey background"])["place"][0] == 0
    assert caption_attributes(["a small red ring at the top on a plain grey background"])["place"][0] == 1
    with pytest.raises(InvalidInputError, match="toy grammar"):
        caption_attributes(["a photo of a dog"])
    with pytest.raises(InvalidInputError, match="place phrase"):
        caption_attributes(["a small red ring somewhere on a plain grey background"])


def test_vae_latent_noise_and_semantic_head_train_and_leave_a_plain_vae(tmp_path):
    from diffusers import AutoencoderKL

    from brainrecon.data.scenes import render_category_maps
    from brainrecon.training.toy_backbones import _train_vae

    sc = make_scenes(64, image_size=16, seed=2)
    data = {"images": torch.from_numpy(sc.images).permute(0, 3, 1, 2).contiguous(),
            "category_maps": torch.from_numpy(render_category_maps(sc))}
    cfg = ToyBackboneConfig.quick().replace(vae_steps=30, vae_lr=3e-3, vae_latent_noise=0.5, vae_semantic_weight=0.1)
    torch.manual_seed(0)
    rec = _train_vae(cfg, data, tmp_path)
    assert rec["loss_final"] < rec["loss_first"] and rec["semantic_ce_final"] < 2.4     # ln 11 = 2.40: chance
    vae = AutoencoderKL.from_pretrained(tmp_path / "vae")          # the head is not part of the saved VAE
    assert not any(k.startswith("head") for k in vae.state_dict())
    assert vae.config.scaling_factor == pytest.approx(rec["scaling_factor"])


def test_clip_attribute_heads_train_and_are_not_saved(tmp_path):
    from transformers import CLIPTextModelWithProjection

    from brainrecon.backbones.toy import make_toy_tokenizer
    from brainrecon.training.toy_backbones import _load_data, _train_clip

    cfg = ToyBackboneConfig.quick().replace(clip_attribute_weight=1.0, clip_steps=30, clip_lr=3e-3)
    torch.manual_seed(0)
    rec = _train_clip(cfg, _load_data(cfg, make_toy_tokenizer()), tmp_path)   # the recipe's own data
    assert rec["attribute_ce_final"] < rec["loss_first"] and rec["loss_final"] < rec["loss_first"]
    CLIPTextModelWithProjection.from_pretrained(tmp_path / "text_encoder", use_safetensors=True)
