"""BrainToImagePipeline on a small random NeuroPictorModel around the shipped toy backbone."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from brainrecon.errors import CheckpointError, DataNotFoundError, InvalidInputError
from brainrecon.sampling import BrainToImagePipeline, load_reconstructor
from reconstructor_helpers import make_model

STEPS = 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env():
    from brainrecon.backbones import load_backbone

    bb = load_backbone("toy")
    pipe = BrainToImagePipeline.from_backbone(bb, make_model(bb))
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 1, 32, 32, generator=g)
    latents = torch.randn(3, 16, 8, 8, generator=g)
    return SimpleNamespace(bb=bb, pipe=pipe, maps=maps, latents=latents)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def by_hand(pipe, latents, eps):
    """An independent DDIM loop: ``eps(x_in, t) -> ε``."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(STEPS)
    x = latents * sched.init_noise_sigma
    for t in sched.timesteps:
        x = sched.step(eps(sched.scale_model_input(x, t), t), t, x).prev_sample
    return x


def test_output_types_shapes_and_ranges(env):
    p = env.pipe
    pt = p(env.maps, num_inference_steps=STEPS, generator=gen()).images
    assert pt.shape == (3, 3, 32, 32) and pt.dtype == torch.float32
    assert 0 <= pt.min() and pt.max() <= 1 and pt.std() > 0
    npy = p(env.maps, num_inference_steps=STEPS, generator=gen(), output_type="np").images
    assert npy.shape == (3, 32, 32, 3) and np.allclose(npy, pt.permute(0, 2, 3, 1).numpy())
    pil = p(env.maps[:2], num_inference_steps=STEPS, generator=gen(), output_type="pil").images
    assert len(pil) == 2 and pil[0].size == (32, 32)
    z = p(env.maps, num_inference_steps=STEPS, generator=gen(), output_type="latent", return_dict=False)[0]
    assert z.shape == (3, 16, 8, 8)
    one = p(env.maps[0], num_inference_steps=STEPS, generator=gen()).images  # a single (1, H, W) map
    assert one.shape == (1, 3, 32, 32)
    assert p.to("cpu") is p and p.device.type == "cpu" and p.conditioner.encoder.device.type == "cpu"


def test_deterministic_by_seed_and_per_image_generators(env):
    p = env.pipe
    a = p(env.maps, num_inference_steps=STEPS, generator=gen(5)).images
    assert torch.equal(a, p(env.maps, num_inference_steps=STEPS, generator=gen(5)).images)
    assert not torch.allclose(a, p(env.maps, num_inference_steps=STEPS, generator=gen(6)).images)
    gens = [gen(10 + i) for i in range(3)]
    batch = p(env.maps, num_inference_steps=STEPS, generator=gens).images
    alone = p(env.maps[2:], num_inference_steps=STEPS, generator=[gen(12)]).images
    assert torch.allclose(batch[2:], alone, atol=1e-5)  # an image does not depend on its batch


def test_alpha_zero_is_the_unet_without_residuals(env):
    p, m, unet = env.pipe, env.pipe.conditioner, env.pipe.unet
    with torch.no_grad():
        sem = m.semantic_condition(env.maps)
        want = by_hand(p, env.latents, lambda x, t: unet(x, t, encoder_hidden_states=sem).sample)
        got = p(env.maps, control_scale=0.0, guidance_scale=1.0, num_inference_steps=STEPS, latents=env.latents,
                output_type="latent").images
        with_control = p(env.maps, control_scale=1.0, guidance_scale=1.0, num_inference_steps=STEPS,
                         latents=env.latents, output_type="latent").images
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(with_control, want, atol=1e-3)  # the (trained) LLMN does act at α = 1


def test_control_guidance_window(env):
    p = env.pipe
    kw = dict(num_inference_steps=4, latents=env.latents, output_type="latent")
    full = p(env.maps, **kw).images
    assert torch.equal(p(env.maps, control_guidance_start=0.0, control_guidance_end=1.0, **kw).images, full)
    none = p(env.maps, control_scale=0.0, **kw).images
    assert torch.equal(p(env.maps, control_guidance_start=0.9, **kw).images, none)  # no step inside the window
    early = p(env.maps, control_guidance_end=0.5, **kw).images
    assert not torch.allclose(early, full, atol=1e-4) and not torch.allclose(early, none, atol=1e-4)
    # by hand: α for steps 0 and 1 of 4, α = 0 for steps 2 and 3
    m, unet, step = p.conditioner, p.unet, {"i": 0}
    with torch.no_grad():
        tok, sem = m.encode(env.maps), m.semantic_condition(env.maps)
        empty = env.bb.encode_text([""]).expand(3, -1, -1)

        def eps(x, t):
            a = 1.0 if step["i"] < 2 else 0.0
            step["i"] += 1
            eu = m.predict_noise(unet, x, t, fmri_tokens=tok, semantic_condition=empty, control_scale=a)
            ec = m.predict_noise(unet, x, t, fmri_tokens=tok, semantic_condition=sem, control_scale=a)
            return eu + 5.0 * (ec - eu)

        from diffusers import DDIMScheduler

        sched = DDIMScheduler.from_config(p.scheduler.config)
        sched.set_timesteps(4)
        x = env.latents * sched.init_noise_sigma
        for t in sched.timesteps:
            x = sched.step(eps(sched.scale_model_input(x, t), t), t, x).prev_sample
    assert torch.allclose(early, x, atol=1e-4)
    with pytest.raises(InvalidInputError, match="control_guidance_start"):
        p(env.maps, control_guidance_start=0.6, control_guidance_end=0.4, num_inference_steps=1)


def test_zero_initialised_llmn_makes_alpha_an_identity(env):
    fresh = BrainToImagePipeline.from_backbone(env.bb, make_model(env.bb, seed=3, trained=False))
    fresh.set_progress_bar_config(disable=True)
    outs = [fresh(env.maps, control_scale=a, num_inference_steps=STEPS, generator=gen(1)).images
            for a in (0.0, 1.0, 2.5)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_semantic_swap(env):
    p, m, unet = env.pipe, env.pipe.conditioner, env.pipe.unet
    kw = dict(num_inference_steps=STEPS, latents=env.latents, output_type="latent", guidance_scale=1.0)
    own = p(env.maps, **kw).images
    assert torch.equal(p(env.maps, semantic_source=env.maps.clone(), **kw).images, own)
    other = env.maps.flip(0)
    swapped = p(env.maps, semantic_source=other, **kw).images
    assert not torch.allclose(swapped, own, atol=1e-3)
    with torch.no_grad():  # low level of `maps`, F^sem of `other`, in the copy and the U-Net alike
        tok, sem = m.encode(env.maps), m.semantic_condition(other)
        want = by_hand(p, env.latents, lambda x, t: m.predict_noise(unet, x, t, fmri_tokens=tok,
                                                                     semantic_condition=sem))
    assert torch.allclose(swapped, want, atol=1e-5)


def test_guidance_one_is_conditional_only_and_uncond_keeps_the_control(env):
    p, m, unet = env.pipe, env.pipe.conditioner, env.pipe.unet
    kw = dict(num_inference_steps=STEPS, latents=env.latents, output_type="latent")
    with torch.no_grad():
        tok = m.encode(env.maps)
        sem = m.semantic_condition(fmri_tokens=tok)
        empty = env.bb.encode_text([""]).expand(3, -1, -1)

        def eps(ctx):
            return lambda x, t: m.predict_noise(unet, x, t, fmri_tokens=tok, semantic_condition=ctx)

        cond, uncond = by_hand(p, env.latents, eps(sem)), by_hand(p, env.latents, eps(empty))

        def cfg(x, t, s=3.0):
            eu, ec = eps(empty)(x, t), eps(sem)(x, t)
            return eu + s * (ec - eu)

        guided = by_hand(p, env.latents, cfg)
    assert torch.allclose(p(env.maps, guidance_scale=1.0, **kw).images, cond, atol=1e-5)
    assert torch.allclose(p(env.maps, guidance_scale=0.0, **kw).images, uncond, atol=1e-5)
    assert torch.allclose(p(env.maps, guidance_scale=3.0, **kw).images, guided, atol=1e-4)
    # unconditional = empty caption *with* the fMRI control: it still depends on the maps
    assert not torch.allclose(p(env.maps, guidance_scale=0.0, **kw).images,
                              p(env.maps.flip(0), guidance_scale=0.0, **kw).images, atol=1e-3)
    # default guidance is the backbone's (toy backbone.json: 5.0)
    assert p.config.default_guidance_scale == env.bb.guidance_scale == 5.0
    assert torch.equal(p(env.maps, **kw).images, p(env.maps, guidance_scale=5.0, **kw).images)


def test_callback_on_step_end(env):
    p = env.pipe
    seen = []

    def record(pipe, i, t, kwargs):
        seen.append((i, int(t), tuple(kwargs)))
        assert pipe is p and kwargs["latents"].shape == (3, 16, 8, 8)
        return kwargs

    p(env.maps, num_inference_steps=4, generator=gen(), callback_on_step_end=record,
      callback_on_step_end_tensor_inputs=["latents", "fmri_tokens"])
    assert [s[0] for s in seen] == [0, 1, 2, 3] and all(s[2] == ("latents", "fmri_tokens") for s in seen)
    assert seen[0][1] > seen[-1][1]  # timesteps go down

    def zero_at_end(pipe, i, t, kwargs):
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == STEPS - 1 else {}

    z = p(env.maps, num_inference_steps=STEPS, generator=gen(), output_type="latent",
          callback_on_step_end=zero_at_end).images
    assert torch.count_nonzero(z) == 0
    plain = p(env.maps, num_inference_steps=STEPS, generator=gen()).images
    halved = p(env.maps, num_inference_steps=STEPS, generator=gen(),
               callback_on_step_end=lambda pipe, i, t, k: {"latents": k["latents"] * 0.5} if i == 0 else {}).images
    assert not torch.allclose(plain, halved, atol=1e-3)
    with pytest.raises(InvalidInputError, match="not available"):
        p(env.maps, num_inference_steps=1, callback_on_step_end=record, callback_on_step_end_tensor_inputs=["x"])


def test_save_load_round_trips_give_identical_images(env, tmp_path):
    p = env.pipe
    ref = p(env.maps, control_scale=0.7, num_inference_steps=STEPS, generator=gen(2)).images
    light = p.save_pretrained(tmp_path / "light")
    assert json.loads((light / "backbone.json").read_text()) == {"backbone": "toy"}
    assert not (light / "unet").exists()
    full = p.save_pretrained(tmp_path / "full", save_backbone=True)
    assert (full / "unet" / "config.json").is_file() and (full / "empty_prompt_embeds.safetensors").is_file()
    # the refine_subject layout: model/ + backbone.json, nothing else
    stage = tmp_path / "stage"
    p.conditioner.save_pretrained(stage / "model")
    (stage / "backbone.json").write_text(json.dumps({"backbone": "toy"}))
    for d in (light, full, stage):
        back = load_reconstructor(d)
        back.set_progress_bar_config(disable=True)
        assert back.config.default_guidance_scale == 5.0
        out = back(env.maps, control_scale=0.7, num_inference_steps=STEPS, generator=gen(2)).images
        assert torch.equal(out, ref), d.name


def test_half_precision_load(env, tmp_path):
    d = env.pipe.save_pretrained(tmp_path / "light")
    half = load_reconstructor(d, dtype=torch.bfloat16)
    half.set_progress_bar_config(disable=True)
    assert half.dtype == torch.bfloat16 and next(half.conditioner.parameters()).dtype == torch.bfloat16
    img = half(env.maps, num_inference_steps=2, generator=gen()).images
    assert img.dtype == torch.float32 and torch.isfinite(img).all() and 0 <= img.min() and img.max() <= 1


def test_backbone_folder_reference_and_text_encoder_free_parts(env, tmp_path):
    from brainrecon.backbones import TOY_WEIGHTS_DIR

    p = env.pipe
    ref = p(env.maps, num_inference_steps=STEPS, generator=gen(4)).images
    d = tmp_path / "rel"
    p.conditioner.save_pretrained(d / "model")
    import shutil

    shutil.copytree(TOY_WEIGHTS_DIR, d / "bb", ignore=shutil.ignore_patterns("image_encoder", "attribute_*"))
    (d / "backbone.json").write_text(json.dumps({"backbone": "bb"}))  # relative to the reconstructor
    assert torch.equal(load_reconstructor(d)(env.maps, num_inference_steps=STEPS, generator=gen(4)).images, ref)
    # a pipeline without text encoder keeps the stored empty-caption embedding
    bare = BrainToImagePipeline(p.unet, p.vae, p.scheduler, p.conditioner, empty_prompt_embeds=p.empty_prompt_embeds,
                                default_guidance_scale=5.0, default_num_inference_steps=STEPS)
    bare.set_progress_bar_config(disable=True)
    assert torch.equal(bare(env.maps, generator=gen(4)).images, ref)
    bare.save_pretrained(tmp_path / "bare", save_backbone=True)
    assert not (tmp_path / "bare" / "text_encoder").exists()
    assert torch.equal(load_reconstructor(tmp_path / "bare")(env.maps, generator=gen(4)).images, ref)
    with pytest.raises(InvalidInputError, match="save_backbone=True"):
        bare.save_pretrained(tmp_path / "nope", save_backbone=False)


def test_errors_name_what_is_wrong(env, tmp_path, monkeypatch):
    p = env.pipe
    with pytest.raises(InvalidInputError, match=r"\(B, 1, 32, 32\).*got \(2, 1, 16, 16\)"):
        p(torch.zeros(2, 1, 16, 16), num_inference_steps=1)
    with pytest.raises(InvalidInputError, match=r"semantic_source \(2, 1, 32, 32\) must match maps \(3, 1, 32, 32\)"):
        p(env.maps, semantic_source=env.maps[:2], num_inference_steps=1)
    with pytest.raises(InvalidInputError, match="latents"):
        p(env.maps, latents=torch.zeros(3, 4, 8, 8), num_inference_steps=1)
    with pytest.raises(InvalidInputError, match="output_type"):
        p(env.maps, output_type="jpeg", num_inference_steps=1)
    bad = env.maps.clone()
    bad[1, 0, 3, 4] = float("nan")
    with pytest.raises(InvalidInputError, match="maps contains 1 non-finite"):
        p(bad, num_inference_steps=1)
    with pytest.raises(DataNotFoundError, match="no-such"):
        load_reconstructor(tmp_path / "no-such")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="model"):
        load_reconstructor(tmp_path / "empty")
    p.conditioner.save_pretrained(tmp_path / "half" / "model")
    with pytest.raises(CheckpointError, match=r"unet/config.json.*empty_prompt_embeds"):
        load_reconstructor(tmp_path / "half")
    import brainrecon.sampling.folders as mod

    monkeypatch.setitem(mod.SHIPPED_RECONSTRUCTORS, "neuropictor", tmp_path / "not-shipped")
    with pytest.raises(DataNotFoundError, match="shipped toy neuropictor reconstructor"):
        load_reconstructor()
