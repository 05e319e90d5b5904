"""The pipeline is not NeuroPictor-shaped: a second, minimal conditioner runs through it.

``RidgeConditioner`` maps a subject's voxel vector to the U-Net's text condition with a ridge
regression fitted in closed form on toy training scans (their captions' text features as targets),
and to an img2img start latent the same way. It also serves the pipeline's img2img, feature-guidance
and bad-input paths.
"""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from brainrecon.errors import CheckpointError, InvalidInputError
from brainrecon.models.conditioner import BrainConditioner
from brainrecon.sampling import BrainToImagePipeline
from reconstructor_helpers import make_model

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 4


class RidgeConditioner(BrainConditioner, ModelMixin, ConfigMixin):
    """Voxels → text condition (and → start latents), two linear maps: the least a method can be."""

    input_kind = "voxels"
    callback_tensors = ("context",)

    @register_to_config
    def __init__(self, n_voxels: int, text_length: int, text_dim: int, latent_shape: tuple = (16, 8, 8)):
        super().__init__()
        self.to_text = torch.nn.Linear(n_voxels, text_length * text_dim)
        self.to_latent = torch.nn.Linear(n_voxels, int(np.prod(latent_shape)))

    def input_shape(self):
        return (self.config.n_voxels,)

    def fit(self, voxels, text, latents, lam: float = 10.0):
        """Closed-form ridge, centred: ``W = (XᵀX + λI)⁻¹ Xᵀ(Y − Ȳ)``."""
        x = voxels.double()
        mx = x.mean(0)
        xc = x - mx
        gram = xc.T @ xc + lam * torch.eye(x.shape[1], dtype=x.dtype)
        for lin, y in ((self.to_text, text.flatten(1).double()), (self.to_latent, latents.flatten(1).double())):
            my = y.mean(0)
            w = torch.linalg.solve(gram, xc.T @ (y - my))
            with torch.no_grad():
                lin.weight.copy_(w.T.float())
                lin.bias.copy_((my - mx @ w).float())
        return self

    def encode_scans(self, scans, semantic_source=None):
        src = scans if semantic_source is None else semantic_source
        c = self.config
        return {"context": self.to_text(src).reshape(len(src), c.text_length, c.text_dim),
                "start": self.to_latent(scans).reshape(len(scans), *c.latent_shape)}

    def unet_inputs(self, state, latents, timestep, branch, step, control_scale, uncond_context):
        ctx = state["context"].to(latents.dtype)
        if branch == "both":
            ctx = torch.cat([uncond_context.to(latents.dtype), ctx])
        elif branch == "uncond":
            ctx = uncond_context.to(latents.dtype)
        return {"encoder_hidden_states": ctx}

    def initial_latents(self, state):
        return state["start"]

    def feature_targets(self, state):
        target = state["start"].detach()
        return lambda x0: ((x0 - target) ** 2).sum()


@pytest.fixture(scope="module")
def env():
    from brainrecon.backbones import load_backbone
    from brainrecon.data.pairs import make_toy_dataset
    from brainrecon.data.toyworld import ToyWorldConfig, make_toyworld

    bb = load_backbone("toy")
    world = make_toyworld(ToyWorldConfig.smoke(n_subjects=1, n_test=6, n_train=60), progress=False)
    train = make_toy_dataset(world, subjects=["subj01"], split="train", representation="voxels")
    test = make_toy_dataset(world, subjects=["subj01"], split="test", representation="voxels")
    vox = torch.stack([train.brain(i) for i in range(len(train))]).float()
    items = [train[i] for i in range(len(train))]
    with torch.no_grad():
        text = bb.encode_text([it["caption"] for it in items])
        imgs = torch.stack([it["image"] for it in items]).float()
        imgs = torch.nn.functional.interpolate(imgs, size=bb.image_size, mode="area")   # the backbone's size
        lat = bb.encode_latents(imgs)
    cond = RidgeConditioner(vox.shape[1], text.shape[1], text.shape[2], tuple(lat.shape[1:])).fit(vox, text, lat)
    pipe = BrainToImagePipeline.from_backbone(bb, cond.eval().requires_grad_(False))
    pipe.set_progress_bar_config(disable=True)
    test_vox = torch.stack([test.brain(i) for i in range(len(test))]).float()
    return SimpleNamespace(bb=bb, pipe=pipe, cond=cond, vox=test_vox, train_vox=vox, train_text=text)


def gens(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_the_ridge_fit_predicts_the_text_condition_of_held_out_scans(env):
    """It is a real (if weak) method: closer to the scans' own captions than to the mean caption."""
    with torch.no_grad():
        fit = env.cond.encode_scans(env.train_vox)["context"]
    err = ((fit - env.train_text) ** 2).mean()
    base = ((env.train_text.mean(0, keepdim=True) - env.train_text) ** 2).mean()
    assert err < 0.7 * base


def test_voxels_run_through_the_same_pipeline(env):
    p = env.pipe
    assert p.map_shape == (env.vox.shape[1],) and p.config.flatmap is None
    out = p(env.vox[:3], num_inference_steps=STEPS, generator=gens(3)).images
    assert out.shape == (3, 3, 32, 32) and 0 <= out.min() and out.max() <= 1
    again = p(env.vox[:3], num_inference_steps=STEPS, generator=gens(3)).images
    assert torch.equal(out, again)
    assert not torch.allclose(out[0], out[1], atol=1e-3)                       # the scan matters
    swapped = p(env.vox[:1], semantic_source=env.vox[1:2], num_inference_steps=STEPS, generator=gens(1, 1)).images
    own = p(env.vox[1:2], num_inference_steps=STEPS, generator=gens(1, 1)).images
    assert torch.allclose(swapped, own, atol=1e-5)                 # this method's semantics are all it has
    with pytest.raises(InvalidInputError, match="no flatmap projector"):
        p.make_projector()
    with pytest.raises(InvalidInputError, match=r"voxel response vectors of shape \(B, \d+\)"):
        p(torch.zeros(2, 1, 32, 32), num_inference_steps=STEPS)


def test_a_callback_reads_and_replaces_the_conditioners_own_tensors(env):
    seen = []

    def cb(pipe, i, t, kw):
        seen.append(tuple(kw["context"].shape))
        return {"context": torch.zeros_like(kw["context"])} if i == 0 else {}

    env.pipe(env.vox[:2], num_inference_steps=STEPS, generator=gens(2), callback_on_step_end=cb,
             callback_on_step_end_tensor_inputs=["latents", "context"])
    assert len(seen) == STEPS and seen[1] == seen[0]
    with pytest.raises(InvalidInputError, match="fmri_tokens"):
        env.pipe(env.vox[:1], num_inference_steps=STEPS, callback_on_step_end_tensor_inputs=["fmri_tokens"])


def test_img2img_starts_from_the_conditioners_latents_and_strength_sets_how_far(env):
    p, v = env.pipe, env.vox[:2]
    with torch.no_grad():
        start = env.cond.encode_scans(v)["start"]
    z = {s: p(v, strength=s, num_inference_steps=10, generator=gens(2), output_type="latent").images
         for s in (0.2, 0.6, 1.0)}
    d = {s: float((z[s] - start).pow(2).mean()) for s in z}
    assert d[0.2] < d[0.6] < d[1.0]
    given = p(v, strength=0.3, init_latents=torch.zeros_like(start), num_inference_steps=10, generator=gens(2),
              output_type="latent").images
    assert not torch.allclose(given, z[0.2], atol=1e-3)                       # init_latents replace the method's


def test_feature_guidance_pulls_the_samples_towards_the_conditioners_targets(env):
    p, v = env.pipe, env.vox[:2]
    with torch.no_grad():
        target = env.cond.encode_scans(v)["start"]
    kw = dict(num_inference_steps=STEPS, generator=None, output_type="latent")
    plain = p(v, **{**kw, "generator": gens(2)}).images
    guided = p(v, feature_guidance_scale=1e-3, feature_guidance_strength=1.0, **{**kw, "generator": gens(2)}).images
    half = p(v, feature_guidance_scale=1e-3, feature_guidance_strength=0.5, **{**kw, "generator": gens(2)}).images
    err = lambda z: float((z - target).pow(2).mean())
    assert err(guided) < err(half) < err(plain)
    with pytest.raises(InvalidInputError, match="no feature targets"):
        BrainToImagePipeline.from_backbone(env.bb, make_model(env.bb))(
            torch.zeros(1, 1, 32, 32), feature_guidance_scale=1.0, num_inference_steps=STEPS)


@pytest.mark.parametrize("kw,match", [
    (dict(num_inference_steps=0), r"'num_inference_steps' must be an integer >= 1; 0"),
    (dict(num_inference_steps=-1), r"'num_inference_steps' must be an integer >= 1; -1"),
    (dict(num_inference_steps=2.5), r"'num_inference_steps' must be an integer"),
    (dict(guidance_scale=float("nan")), r"'guidance_scale' must be a number in 0.0..50.0; nan"),
    (dict(guidance_scale=-3), r"'guidance_scale' must be a number in 0.0..50.0; -3"),
    (dict(control_scale=float("nan")), r"'control_scale' must be a number in 0.0..10.0; nan"),
    (dict(control_scale=1e6), r"'control_scale' must be a number in 0.0..10.0; 1000000.0"),
    (dict(control_scale=-5), r"'control_scale' must be a number in 0.0..10.0; -5"),
    (dict(eta=-1), r"'eta' must be a number in 0.0..1.0; -1"),
    (dict(strength=0.0), r"'strength' must be a number in"),
    (dict(strength=0.01, num_inference_steps=10), "runs no step"),
    (dict(feature_guidance_strength=2.0), r"'feature_guidance_strength' must be a number in 0.0..1.0; 2.0"),
    (dict(feature_guidance_scale=-1.0), r"'feature_guidance_scale' must be a number >= 0.0"),
    (dict(generator=[torch.Generator()]), "1 generators for 2 scans"),
    (dict(latents=torch.full((2, 16, 8, 8), float("nan"))), "non-finite at step 1"),
])
def test_bad_sampler_settings_are_refused_with_the_fix(kw, match):
    from brainrecon.backbones import load_backbone

    bb = load_backbone("toy")
    p = BrainToImagePipeline.from_backbone(bb, make_model(bb))
    p.set_progress_bar_config(disable=True)
    calls = []
    p.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(InvalidInputError, match=match):
        p(torch.zeros(2, 1, 32, 32), **{"num_inference_steps": STEPS, **kw})
    assert len(calls) <= (1 if "latents" in kw else 0)           # refused before the U-Net ran (NaN: at step 1)


@pytest.mark.parametrize("maps,match", [
    (torch.zeros(0, 1, 32, 32), "empty batch"),
    (torch.full((1, 1, 32, 32), float("nan")), "NaN"),
    (torch.zeros(1, 1, 16, 16), r"flatmaps of shape \(B, 1, 32, 32\)"),
])
def test_bad_scans_are_refused_at_the_boundary(maps, match):
    from brainrecon.backbones import load_backbone

    bb = load_backbone("toy")
    p = BrainToImagePipeline.from_backbone(bb, make_model(bb))
    with pytest.raises(InvalidInputError, match=match):
        p(maps, num_inference_steps=STEPS)


def test_huge_scans_that_overflow_are_refused_with_the_step():
    from brainrecon.backbones import load_backbone

    bb = load_backbone("toy")
    p = BrainToImagePipeline.from_backbone(bb, make_model(bb))
    p.set_progress_bar_config(disable=True)
    with pytest.raises(InvalidInputError, match=r"non-finite at step \d+ of"):
        p(torch.full((1, 1, 32, 32), 1e30), num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))


def test_a_non_conditioner_is_refused():
    from brainrecon.backbones import load_backbone

    bb = load_backbone("toy")
    with pytest.raises(InvalidInputError, match="must be a BrainConditioner"):
        BrainToImagePipeline(bb.unet, bb.vae, bb.scheduler, torch.nn.Linear(2, 2), text_encoder=bb.text_encoder,
                             tokenizer=bb.tokenizer)


def test_save_load_and_load_reconstructor_build_any_conditioner_from_model_index(env, tmp_path):
    """model_index.json names the conditioner's class: load_reconstructor needs no hard-coded method."""
    import json

    from brainrecon.sampling import load_reconstructor, register_conditioner

    for light in (True, False):
        d = tmp_path / f"ridge_{light}"
        env.pipe.save_pretrained(d, save_backbone=not light)
        index = json.loads((d / "model_index.json").read_text())
        assert index["conditioner"] == [RidgeConditioner.__module__, "RidgeConditioner"]
        assert (index["unet"] is None) == light and (d / "conditioner" / "config.json").is_file()
        if light:                                         # before registration: no arbitrary imports
            with pytest.raises(CheckpointError, match="register_conditioner"):
                load_reconstructor(d)
            register_conditioner(RidgeConditioner)
        back = load_reconstructor(d)
        assert isinstance(back.conditioner, RidgeConditioner) and back.config.flatmap is None
        back.set_progress_bar_config(disable=True)
        a = env.pipe(env.vox[:2], num_inference_steps=STEPS, generator=gens(2)).images
        b = back(env.vox[:2], num_inference_steps=STEPS, generator=gens(2)).images
        assert torch.equal(a, b)


def test_the_shipped_reconstructor_folder_has_a_model_index():
    import json

    from brainrecon.sampling import TOY_RECONSTRUCTOR_DIR, load_reconstructor
    from brainrecon.models import NeuroPictorModel

    index = json.loads((TOY_RECONSTRUCTOR_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "BrainToImagePipeline"
    assert index["conditioner"] == ["brainrecon.models.neuropictor", "NeuroPictorModel"]
    assert isinstance(load_reconstructor().conditioner, NeuroPictorModel)


def test_an_index_naming_a_non_conditioner_or_a_missing_class_is_refused(tmp_path):
    import json
    import shutil

    from brainrecon.sampling import TOY_RECONSTRUCTOR_DIR, load_reconstructor

    d = tmp_path / "rec"
    shutil.copytree(TOY_RECONSTRUCTOR_DIR, d)
    for entry, match in ((["brainrecon.models.hlgn", "HighLevelGuidingNetwork"], "is not a BrainConditioner"),
                         (["brainrecon.models.neuropictor", "NoSuchModel"], "does not have"),
                         ("NeuroPictorModel", r"must be \[module, class\]")):
        index = json.loads((d / "model_index.json").read_text())
        index["conditioner"] = entry
        (d / "model_index.json").write_text(json.dumps(index))
        with pytest.raises(CheckpointError, match=match):
            load_reconstructor(d)
