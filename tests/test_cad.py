"""Contrast, Attend and Diffuse, phase 3 (brainrecon.models.cad, brainrecon.training.cad_ldm): the adapted
U-Net (the backbone's weights shared, the tuned cross-attention heads the model's own), the run's folder
and scores, the reconstructor round trip and the refusals."""
import pytest
import torch

from brainrecon.backbones import load_backbone
from brainrecon.errors import CheckpointError, InvalidInputError
from brainrecon.io import read_json
from brainrecon.models.cad import CADModel, cross_attention_parameters
from brainrecon.models.dcmae import DoubleContrastiveMAE
from brainrecon.sampling import load_reconstructor
from brainrecon.training.cad import CADConfig
from brainrecon.training.cad_ldm import CADDenoisingObjective, train_cad

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("toy")


def _model(bb, voxels=40):
    torch.manual_seed(0)
    fmri = DoubleContrastiveMAE(num_voxels=voxels, patch_size=8, embed_dim=32, depth=1, num_heads=4,
                                decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    return CADModel.from_backbone(bb, fmri, "subj01")


def _unet_out(unet, bb, **kw):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, bb.unet.config.in_channels, bb.unet.config.sample_size, bb.unet.config.sample_size,
                    generator=g)
    text = bb.encode_text(["a red ring on a plain background", "two blue stars"])
    with torch.no_grad():
        return unet(z, torch.tensor([500, 100]), encoder_hidden_states=text, **kw).sample


def test_a_fresh_model_is_the_pretrained_unet_and_tuning_touches_only_its_own_heads(backbone):
    bb = backbone
    before = _unet_out(bb.unet, bb)
    m = _model(bb)
    adapted = m.adapt_unet(bb.unet)
    # every weight but attn2 is the backbone's own tensor; attn2 are the model's parameters
    own = cross_attention_parameters(adapted)
    shared = {n: p for n, p in adapted.named_parameters() if n not in own}
    base = dict(bb.unet.named_parameters())
    assert own and all(p is base[n] for n, p in shared.items())
    assert all(any(p is q for q in m.head.attn2.values()) for p in own.values())
    # zero time term and the pre-trained heads: exactly the backbone U-Net
    zero = torch.zeros(2, m.head.config.time_embed_dim)
    assert torch.allclose(_unet_out(adapted, bb, class_labels=zero), before, atol=1e-6)
    with torch.no_grad():
        next(iter(m.head.attn2.values())).add_(0.5)
    assert not torch.allclose(_unet_out(adapted, bb, class_labels=zero), before, atol=1e-4)
    assert torch.equal(_unet_out(bb.unet, bb), before)               # the backbone itself never changes
    assert bb.unet.config.class_embed_type is None and adapted.config.class_embed_type == "identity"
    assert m.adapt_unet(adapted) is adapted


def test_the_objective_trains_the_encoder_mapper_time_term_and_heads_only(backbone):
    bb = backbone
    m = _model(bb)
    obj = CADDenoisingObjective(m, bb.unet, bb.scheduler, bb.encode_text([""]), cond_drop=0.5)
    z = torch.randn(4, bb.unet.config.in_channels, bb.unet.config.sample_size, bb.unet.config.sample_size)
    loss = obj(torch.randn(4, 40), z, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert m.fmri.blocks[0].qkv.weight.grad.abs().sum() > 0
    assert m.head.mapper.proj.weight.grad.abs().sum() > 0
    assert m.head.time_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in m.head.attn2.values())
    assert all(p.grad is None for p in bb.unet.parameters())
    assert set(dict(obj.named_parameters())) == {f"model.{n}" for n, _ in m.named_parameters()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cad") / "run"
    train_cad(CADConfig.smoke(output_dir=str(out)))
    return out


def test_the_run_writes_its_scores_and_a_reconstructor_that_round_trips(run):
    m = read_json(run / "metrics.json", "")
    assert {"phase1", "phase2", "ldm"} <= set(m)
    ldm = m["ldm"]
    assert ldm["n_rows"] == 30 and all(ldm[k] > 0 for k in ("noise_mse", "noise_mse_no_brain"))
    assert (run / "fmri_mae" / "config.json").is_file() and (run / "checkpoints" / "ldm").is_dir()
    pipe = load_reconstructor(run / "reconstructor")
    assert isinstance(pipe.conditioner, CADModel) and pipe.config.default_guidance_scale == 1.0
    assert pipe.info["subject"] == "subj01" and pipe.unet.config.class_embed_type == "identity"
    v = torch.randn(2, *pipe.conditioner.input_shape())
    a = pipe(v, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt").images
    b = pipe(v, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b)
    other = pipe(v + 1, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert (a - other).abs().max() > 1e-3                        # same noise, another scan: another image
    # the shipped backbone's U-Net is untouched by loading CAD next to another method
    assert load_backbone("toy").unet.config.class_embed_type is None


def test_phase_three_beats_the_shuffled_scan_after_training(tmp_path):
    """A scan's own condition denoises its image better than another scan's (held-out rows, same noise)."""
    train_cad(CADConfig.smoke(output_dir=str(tmp_path / "r"), ldm_steps=150, ldm_lr=2e-3))
    ldm = read_json(tmp_path / "r" / "metrics.json", "")["ldm"]
    assert ldm["noise_mse"] < ldm["noise_mse_shuffled_scan"]


def test_bad_input_is_refused_with_the_fix(run, tmp_path, backbone):
    pipe = load_reconstructor(run / "reconstructor")
    n = pipe.conditioner.input_shape()[0]
    with pytest.raises(InvalidInputError, match=f"voxel response vectors of shape \\(B, {n}\\)"):
        pipe(torch.randn(2, n + 3), num_inference_steps=2)
    with pytest.raises(InvalidInputError, match="unknown subject|subj09"):
        train_cad(CADConfig.smoke(output_dir=str(tmp_path / "x"), subject="subj09"))
    with pytest.raises(InvalidInputError, match="ldm_steps"):
        train_cad(CADConfig.smoke(output_dir=str(tmp_path / "y"), ldm_steps=0))
    # a checkpoint of another method
    other = tmp_path / "np"
    (other / "encoder").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="another method"):
        CADModel.from_pretrained(other)
    # a head tuned on another U-Net
    m = _model(backbone)
    bigger = load_backbone("toy").unet
    first = next(n for n in cross_attention_parameters(bigger))
    m.head.register_to_config(attn2_shapes={**m.head.config.attn2_shapes, first: [1, 1]})
    with pytest.raises(InvalidInputError, match="tuned on another U-Net"):
        m.adapt_unet(bigger)


def test_the_cli_runs_the_same_run(run, capsys):
    from brainrecon.cli import main

    before = read_json(run / "metrics.json", "")
    assert main(["train", "cad", "--preset", "smoke", "--out", str(run)]) == 0
    assert "reconstructor/" in capsys.readouterr().out            # it resumed: the same phases, the same figures
    assert read_json(run / "metrics.json", "")["ldm"] == before["ldm"]


def test_same_code_runs_on_nsd(tmp_path):
    """All three phases on a miniature NSD tree (official layout, fsaverage betas), with an image MAE from a
    local folder (the real world's facebook/vit-mae-base); without one, refused before any data is read."""
    from brainrecon.data.nsd_fixture import make_nsd_fixture
    from brainrecon.training.cad import make_toy_image_mae

    root = make_nsd_fixture(tmp_path / "nsd", subjects=(1,), n_sessions=1, spaces=("fsaverage",))
    with pytest.raises(InvalidInputError, match="vit-mae-base"):
        train_cad(CADConfig.smoke(output_dir=str(tmp_path / "no"), world=str(root), nsd_sessions=1))
    mae = make_toy_image_mae(32, small=True)
    mae.save_pretrained(tmp_path / "mae", safe_serialization=True)
    out = train_cad(CADConfig.smoke(output_dir=str(tmp_path / "cad"), world=str(root), nsd_sessions=1, n_eval=8,
                                    image_mae=str(tmp_path / "mae")))
    m = read_json(out / "metrics.json", "")
    assert read_json(out / "run.json", "")["world"] == {"nsd_root": str(root)} and m["n_voxels"] > 0
    assert m["ldm"]["n_rows"] == 8
    pipe = load_reconstructor(out / "reconstructor")
    pipe.set_progress_bar_config(disable=True)
    img = pipe(torch.randn(1, m["n_voxels"]), num_inference_steps=4, output_type="pt").images
    assert img.shape[:2] == (1, 3) and torch.isfinite(img).all()


def test_demo_scores_the_reconstructions_beside_the_baselines(run, tmp_path):
    from brainrecon.sampling.demo import write_demo_report

    rec = run / "reconstructor"
    with pytest.raises(InvalidInputError, match="--method neuropictor"):
        write_demo_report(tmp_path / "no", reconstructor=rec, method="neuropictor")
    with pytest.raises(InvalidInputError, match=r"fitted on subj01.*none for subj02"):
        write_demo_report(tmp_path / "no", reconstructor=rec, subject="subj02", world_preset="smoke")
    r = write_demo_report(tmp_path / "demo", reconstructor=rec, n_test=4, num_inference_steps=3, progress=False)
    assert r["method"] == "cad" and r["n_test"] == 4 and r["guidance_scale"] == 1.0
    for row in ("reconstruction", "shuffled_scan", "mean_image"):
        assert {"pixcorr", "ssim", "nway", "category", "colour", "position_error"} <= set(r[row])
    assert r["reconstruction"] != r["shuffled_scan"] and r["run"]["subject"] == "subj01"
    assert (tmp_path / "demo" / "reconstructions.png").stat().st_size > 5000
    assert (tmp_path / "demo" / "results" / "reconstructions.npy").is_file()
