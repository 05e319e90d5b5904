"""NeuralDiffuser as the shared pipeline's conditioner: voxels in; ĉ as context, ẑ as img2img's start
(Eq. 6-7 aligned), ĝ as the target of primary-visual-feature guidance (Eq. 12, 14; κ, η); save/load
through model_index.json. The parts are untrained here: these tests are about the wiring."""
import json

import pytest
import torch

from brainrecon.errors import CheckpointError, InvalidInputError
from brainrecon.models import NeuralDiffuserModel, VoxelEncoder
from brainrecon.sampling import BrainToImagePipeline, load_reconstructor
from reconstructor_helpers import make_neuraldiffuser as make

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS, N_VOX = 6, 50      # make_neuraldiffuser: subj01 reads 50 voxels


@pytest.fixture(scope="module")
def bb():
    from brainrecon.backbones import load_backbone

    return load_backbone("toy")


def pipe_of(bb, model):
    p = BrainToImagePipeline.from_backbone(bb, model)
    p.set_progress_bar_config(disable=True)
    return p


def gens(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


@pytest.fixture(scope="module")
def vox():
    return torch.randn(3, N_VOX, generator=torch.Generator().manual_seed(5))


def test_voxels_of_the_models_subject_run_through_the_pipeline(bb, vox):
    p = pipe_of(bb, make(bb))
    assert p.map_shape == (N_VOX,)
    out = p(vox, num_inference_steps=STEPS, generator=gens(3)).images
    assert out.shape == (3, 3, bb.image_size, bb.image_size) and torch.equal(
        out, p(vox, num_inference_steps=STEPS, generator=gens(3)).images)
    own = p(vox[1:2], num_inference_steps=STEPS, generator=gens(1)).images
    swap = p(vox[1:2], semantic_source=vox[:1], num_inference_steps=STEPS, generator=gens(1)).images
    assert not torch.allclose(own, swap, atol=1e-4)                # ĉ comes from the semantic source
    with pytest.raises(InvalidInputError, match=r"voxel response vectors of shape \(B, 50\)"):
        p(torch.randn(2, 30), num_inference_steps=STEPS)
    with pytest.raises(InvalidInputError, match="not one of the voxel encoder"):
        NeuralDiffuserModel(VoxelEncoder({"subj01": 4}, 8), make(bb).text_decoder, make(bb).latent_decoder,
                            subject="subj09")


def test_decoded_latents_are_aligned_to_the_training_statistics_and_start_img2img(bb, vox):
    m = make(bb)
    with torch.no_grad():
        z = m.encode_scans(vox)["init_latents"]
    assert torch.allclose(z.mean((0, 2, 3)), m.latent_stats[0], atol=1e-4)
    assert torch.allclose(z.std((0, 2, 3)), m.latent_stats[1], atol=1e-3)
    p = pipe_of(bb, m)
    lat = {s: p(vox, strength=s, num_inference_steps=10, generator=gens(3), output_type="latent").images
           for s in (0.2, 1.0)}
    d = {s: float((lat[s] - z).pow(2).mean()) for s in lat}
    assert d[0.2] < 0.5 * d[1.0]                                    # Algorithm 1 line 2: start from ẑ


def test_feature_guidance_lowers_eq14_and_eta_sets_how_many_steps_it_acts(bb, vox):
    m = make(bb)
    p = pipe_of(bb, m)
    with torch.no_grad():
        state = m.encode_scans(vox)
    loss = m.feature_targets(state)
    kw = dict(num_inference_steps=STEPS, output_type="latent")
    final = {}
    for kappa, eta in ((0.0, 0.2), (2e-3, 0.5), (2e-3, 1.0)):
        z = p(vox, feature_guidance_scale=kappa, feature_guidance_strength=eta, generator=gens(3), **kw).images
        final[(kappa, eta)] = float(loss(z).sum())
    assert final[(2e-3, 1.0)] < final[(2e-3, 0.5)] < final[(0.0, 0.2)], final
    # the count the pipeline reports is the number of steps whose loss was evaluated (the first ones)
    calls, targets = [], m.feature_targets

    def counted(state):
        fn = targets(state)
        return lambda est: (calls.append(1), fn(est))[1]
    m.feature_targets = counted
    for eta in (0.2, 0.5, 1.0):
        calls.clear()
        p(vox, feature_guidance_scale=2e-3, feature_guidance_strength=eta, generator=gens(3), **kw)
        assert p.num_guided_steps == len(calls) == int(p.num_steps_run * eta), (eta, len(calls))
    p(vox, generator=gens(3), **kw)
    assert p.num_guided_steps == 0 and p.num_steps_run == round(STEPS * 0.75)     # the default strength
    del m.feature_targets
    # Eq. 12: the loss sees sqrt(1-a) x0 + (1 - sqrt(1-a)) x_t
    x0, xt, a = torch.ones(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), torch.tensor(0.75)
    assert torch.allclose(m.guidance_estimate(x0, xt, a), torch.full_like(x0, 0.5))
    bare = NeuralDiffuserModel(m.voxel_encoder, m.text_decoder, m.latent_decoder, dict(m.feature_decoders.items()),
                               "subj01")
    with pytest.raises(InvalidInputError, match="attach_backbone"):
        pipe_of(bb, bare)(vox, feature_guidance_scale=1.0, num_inference_steps=STEPS)
    nofeat = make(bb, layers=())
    with pytest.raises(InvalidInputError, match="no feature targets"):
        pipe_of(bb, nofeat)(vox, feature_guidance_scale=1.0, num_inference_steps=STEPS)


def test_save_and_load_reconstructor_build_it_from_model_index(bb, vox, tmp_path):
    p = pipe_of(bb, make(bb))
    p.save_pretrained(tmp_path / "nd")
    index = json.loads((tmp_path / "nd" / "model_index.json").read_text())
    assert index["conditioner"] == ["brainrecon.models.neuraldiffuser", "NeuralDiffuserModel"]
    back = load_reconstructor(tmp_path / "nd")
    back.set_progress_bar_config(disable=True)
    assert isinstance(back.conditioner, NeuralDiffuserModel) and back.conditioner.subject == "subj01"
    assert torch.equal(back.conditioner.latent_stats, p.conditioner.latent_stats)
    assert sorted(int(k) for k in back.conditioner.feature_decoders) == [1, 3]
    a = p(vox, num_inference_steps=STEPS, generator=gens(3)).images
    b = back(vox, num_inference_steps=STEPS, generator=gens(3)).images
    assert torch.equal(a, b)
    (tmp_path / "nd" / "conditioner" / "neuraldiffuser.json").unlink()
    with pytest.raises(CheckpointError, match="neuraldiffuser.json"):
        NeuralDiffuserModel.from_pretrained(tmp_path / "nd" / "conditioner")


def test_a_backbone_without_an_image_encoder_is_refused_when_attached(bb):
    from types import SimpleNamespace

    with pytest.raises(InvalidInputError, match="no image encoder"):
        make(bb).attach_backbone(SimpleNamespace(image_encoder=None))
    make(bb, layers=()).attach_backbone(SimpleNamespace(image_encoder=None))   # nothing to guide: accepted


def test_benchmark_quick_mode_times_guided_and_unguided_in_one_run(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_neuraldiffuser.py"), "--quick", "--out",
                          str(tmp_path / "b.json")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads((tmp_path / "b.json").read_text())
    assert set(res["rows"]) == {"unguided", "guided_eta0.2", "guided_eta1"}
    assert res["rows"]["guided_eta1"]["guided_steps"] > res["rows"]["guided_eta0.2"]["guided_steps"] >= 0
    assert res["overhead_eta0.2"] > 0 and res["rows"]["unguided"]["guided_steps"] == 0


def test_the_kappa_eta_sweep_scores_every_setting_on_the_same_scans_and_seeds(bb, vox):
    from brainrecon.sampling import sweep_feature_guidance

    p = pipe_of(bb, make(bb))
    targets = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    res = sweep_feature_guidance(p, vox, targets, kappas=(0.0, 2e-3), etas=(0.2, 1.0), num_inference_steps=STEPS,
                                 metrics=("pixcorr", "ssim"))
    assert [(r["kappa"], r["eta"]) for r in res["rows"]] == [(0.0, None), (2e-3, 0.2), (2e-3, 1.0)]
    assert all(-1 <= r["pixcorr"] <= 1 and -1 <= r["ssim"] <= 1 for r in res["rows"])
    again = sweep_feature_guidance(p, vox, targets, kappas=(0.0,), etas=(0.2,), num_inference_steps=STEPS,
                                   metrics=("pixcorr",))
    assert torch.equal(again["images"][(0.0, 0.2)], res["images"][(0.0, 0.2)])
    assert not torch.allclose(res["images"][(2e-3, 1.0)], res["images"][(0.0, 0.2)], atol=1e-4)


def test_retrieval_embeddings_are_the_deepest_projection_and_the_image_features(bb):
    from brainrecon.sampling import evaluate_retrieval

    m = make(bb)
    g = torch.Generator().manual_seed(3)
    v, imgs = torch.randn(12, N_VOX, generator=g), torch.rand(12, 3, 32, 32, generator=g)
    brain, image = m.retrieval_embeddings(v, imgs)
    with torch.no_grad():
        by_hand = m.feature_decoders["3"](m.voxel_encoder(v, "subj01")).projection
        feats = bb.encode_image_features(bb.resize(imgs), layers=(3,))[3].flatten(1)
    torch.testing.assert_close(brain, by_hand)
    torch.testing.assert_close(image, feats)
    # the suite's 300-way protocol on 12 pairs: 12-way, one draw = all pairs; equals top-1 by hand
    r = evaluate_retrieval(pipe_of(bb, m), {"maps": v, "targets": imgs}, n_way=300, n_loops=1, batch_size=5)
    sim = torch.nn.functional.normalize(brain.double(), dim=1) @ torch.nn.functional.normalize(image.double(), dim=1).T
    own = sim.diag()
    assert r["n_way"] == 12 and r["chance"] == pytest.approx(1 / 12) and r["n"] == 12
    assert r["image_retrieval"] == pytest.approx(float(((sim > own[:, None]).sum(1) == 0).double().mean()))
    assert r["brain_retrieval"] == pytest.approx(float(((sim > own[None, :]).sum(0) == 0).double().mean()))


def test_retrieval_is_refused_without_its_inputs(bb):
    from brainrecon.sampling import evaluate_retrieval

    m = make(bb)
    with pytest.raises(InvalidInputError, match="pair up"):
        m.retrieval_embeddings(torch.randn(3, N_VOX), torch.rand(2, 3, 32, 32))
    with pytest.raises(InvalidInputError, match="targets"):
        evaluate_retrieval(pipe_of(bb, m), torch.randn(3, N_VOX))
    bare = make(bb)
    bare._backbone.clear()
    with pytest.raises(InvalidInputError, match="attach a backbone"):
        bare.retrieval_embeddings(torch.randn(3, N_VOX), torch.rand(3, 3, 32, 32))


def test_with_a_diffusion_prior_c_is_its_sample_and_the_folder_keeps_it(bb, vox, tmp_path):
    """Eq. 3: with a prior, ĉ is the prior's sample given f_c's output (not f_c's output itself);
    ``text_prior/`` is saved beside the other parts and loads back to the same reconstructions."""
    from brainrecon.models import DiffusionPrior

    m = make(bb, prior=True)
    st = m.encode_scans(vox)
    raw = m.text_decoder(m.voxel_encoder(vox, "subj01")).prediction
    assert st["text_condition"].shape == raw.shape and not torch.allclose(st["text_condition"], raw)
    assert torch.allclose(st["text_condition"], m.text_prior.sample(raw), atol=1e-6)
    p = pipe_of(bb, m)
    p.save_pretrained(tmp_path / "nd")
    assert (tmp_path / "nd" / "conditioner" / "text_prior" / "config.json").is_file()
    back = load_reconstructor(tmp_path / "nd")
    back.set_progress_bar_config(disable=True)
    assert isinstance(back.conditioner.text_prior, DiffusionPrior)
    kw = dict(num_inference_steps=STEPS, strength=0.75)
    assert torch.equal(p(vox, generator=gens(3), **kw).images, back(vox, generator=gens(3), **kw).images)
    assert make(bb).text_prior is None            # the default recipe: f_c's output is ĉ (MSE-regressed)


def test_a_negative_prior_weight_is_refused_before_training(tmp_path):
    from brainrecon.training.neuraldiffuser import NeuralDiffuserConfig, train_neuraldiffuser

    with pytest.raises(InvalidInputError, match="prior_weight"):
        train_neuraldiffuser(NeuralDiffuserConfig.smoke(output_dir=str(tmp_path / "x"), prior_weight=-1.0))
    assert not (tmp_path / "x" / "checkpoints").exists()
