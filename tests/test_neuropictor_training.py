"""NeuroPictor stages i–iii at smoke scale: learning, round trips, zero-init hand-off, resume, errors."""
import json
from dataclasses import replace

import pytest
import torch

from brainrecon.errors import CheckpointError, DataNotFoundError, InvalidInputError
from brainrecon.models import CalibratedEncoder, NeuroPictorModel
from brainrecon.training.neuropictor import (EncoderPretrainConfig, MultisubjectConfig, RefineConfig,
                                        pretrain_encoder, pretrain_multisubject, refine_subject)


def read(path, name):
    return json.loads((path / name).read_text())


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


class Kill(RuntimeError):
    pass


def kill_at(step):
    def cb(s, logs):
        if s == step:
            raise Kill(f"killed at step {s}")
    return cb


def kill_after(n_steps):
    """Raise after ``n_steps`` optimizer steps counted over every phase of a stage."""
    seen = []

    def cb(s, logs):
        seen.append(s)
        if len(seen) == n_steps:
            raise Kill(f"killed after {n_steps} steps")
    return cb


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world():
    from brainrecon.data.toyworld import ToyWorldConfig, make_toyworld

    return make_toyworld(ToyWorldConfig.smoke(n_subjects=2, n_test=24, n_train=60), progress=False)


@pytest.fixture(scope="module")
def backbone():
    from brainrecon.backbones.hub import load_backbone

    return load_backbone("toy")


@pytest.fixture(scope="module")
def chain(tmp_path_factory, world, backbone):
    """Stage i → ii once for the module (smoke presets)."""
    root = tmp_path_factory.mktemp("chain")
    enc = pretrain_encoder(EncoderPretrainConfig.smoke(output_dir=str(root / "i"), steps=60), world=world)
    pre = pretrain_multisubject(MultisubjectConfig.smoke(output_dir=str(root / "ii"), encoder_dir=str(enc),
                                                         steps=16), world=world, backbone=backbone)
    return enc, pre


# ---------------------------------------------------------------------- stage i
def test_stage_i_learns_beats_mean_map_and_round_trips(chain, world):
    enc_dir, _ = chain
    m = read(enc_dir, "metrics.json")
    loss = m["losses"]["main"]
    assert loss["steps"] == 60 and loss["loss_final"] < 0.9 * loss["loss_first"]
    assert m["mse"] < m["baseline_mse"] and m["r2"] > 0 and m["r"] > m["baseline_r"]
    assert m["subjects"] == ["subj01", "subj02"]
    run = read(enc_dir, "run.json")
    assert run["steps"] == {"main": 60} and run["seed"] == 0 and run["versions"]["torch"]
    assert run["world"]["n_train"] == 60 and run["final_loss"] == pytest.approx(loss["loss_final"])
    assert read(enc_dir, "config.json")["stage"] == "pretrain_encoder"
    enc = CalibratedEncoder.from_pretrained(enc_dir / "encoder")
    assert enc.config.has_decoder and enc.config.image_size == 32       # decoder kept for notebook 03
    # the saved encoder gives back the recorded held-out figures
    from brainrecon.training.cache import cache_stage_data, make_stage_dataset
    from brainrecon.training.neuropictor_scores import score_encoder

    test = cache_stage_data(make_stage_dataset(world, ["subj01", "subj02"], "test", 32, "visual"), progress=False)
    train = cache_stage_data(make_stage_dataset(world, ["subj01", "subj02"], "train", 32, "visual", "each"),
                             progress=False)
    again = score_encoder(enc, test.maps[:40], test.pixel_mask, train.maps.mean(0))
    assert again["mse"] == pytest.approx(m["mse"], rel=1e-5)


# ---------------------------------------------------------------------- stage ii
def test_stage_ii_learns_and_round_trips(chain, backbone):
    _, pre = chain
    m = read(pre, "metrics.json")
    main = m["losses"]["main"]
    assert main["steps"] == 16 and m["losses"]["cfg"]["steps"] == 4
    # 16 steps: the semantic term falls; the x0-weighted L_dif and the layout probe are too noisy to
    # show it yet (test_layout_probe_learns_and_stays_out_of_the_model checks the probe)
    assert main["semantic_final"] < main["semantic_first"] and "layout_final" in main
    for key in ("noise_mse", "noise_mse_no_brain", "noise_mse_true_caption", "semantic_mse"):
        assert m[key] > 0
    assert read(pre, "backbone.json")["backbone"] == "toy"
    model = NeuroPictorModel.from_pretrained(pre / "model")
    assert not model.hlgn.config.use_auxiliary                        # no auxiliary branch in stage ii
    assert not model.encoder.config.has_decoder
    assert model.hlgn.config.text_length == backbone.text_length        # shapes from the backbone
    assert model.hlgn.config.text_embed_dim == backbone.text_embed_dim
    assert model.llmn.config.latent_size == [8, 8]


# ---------------------------------------------------------------------- stage iii
def test_refine_starts_exactly_at_stage_ii_model(chain, world, backbone, tmp_path):
    _, pre = chain
    out = refine_subject(RefineConfig.smoke(output_dir=str(tmp_path / "iii"), init_from=str(pre), steps=0,
                                            cfg_steps=0), world=world, backbone=backbone)
    start, before = NeuroPictorModel.from_pretrained(out / "model"), NeuroPictorModel.from_pretrained(pre / "model")
    assert start.hlgn.config.use_auxiliary and not before.hlgn.config.use_auxiliary
    g = torch.Generator().manual_seed(0)
    maps, z = torch.randn(3, 1, 32, 32, generator=g), torch.randn(3, 16, 8, 8, generator=g)
    t = torch.tensor([10, 500, 990])
    unet = backbone.unet.cpu()
    with torch.no_grad():
        a = before.eval().predict_noise(unet, z, t, maps)
        b = start.eval().predict_noise(unet, z, t, maps)
    assert torch.equal(a, b)                                          # zero-init auxiliary branch
    bj = read(out, "backbone.json")
    assert bj["backbone"] == "toy" and bj["subject"] == "subj01" and bj["flatmap"]["resolution"] == 32


def test_refine_scratch_fraction_and_resume(chain, world, backbone, tmp_path):
    enc, _ = chain
    cfg = RefineConfig.smoke(init_from=None, encoder_dir=str(enc), subject="subj02", train_fraction=0.25,
                             steps=8, cfg_steps=4, checkpoint_every=2)
    whole = refine_subject(replace(cfg, output_dir=str(tmp_path / "whole")), world=world, backbone=backbone)
    m = read(whole, "metrics.json")
    assert m["init"] == "scratch" and m["subject"] == "subj02" and m["n_train_rows"] == 15   # 25 % of 60
    # kill in the CFG phase (step 11 of 8 + 4), call again: same weights and losses as uninterrupted
    parted = replace(cfg, output_dir=str(tmp_path / "parted"))
    with pytest.raises(Kill):
        refine_subject(parted, world=world, backbone=backbone, callbacks=[kill_after(11)])
    assert (tmp_path / "parted" / "checkpoints" / "cfg" / "checkpoint-2").is_dir()
    assert not (tmp_path / "parted" / "model").exists()
    refine_subject(parted, world=world, backbone=backbone)
    assert read(tmp_path / "parted", "history.json") == read(whole, "history.json")
    assert read(tmp_path / "parted", "run.json")["steps"] == {"main": 8, "cfg": 4}
    assert_same_state(NeuroPictorModel.from_pretrained(tmp_path / "parted" / "model"),
                      NeuroPictorModel.from_pretrained(whole / "model"))


def test_stage_i_resume_after_kill(world, tmp_path):
    cfg = EncoderPretrainConfig.smoke(steps=12, checkpoint_every=4, n_eval=8)
    whole = pretrain_encoder(replace(cfg, output_dir=str(tmp_path / "a")), world=world)
    parted = replace(cfg, output_dir=str(tmp_path / "b"))
    with pytest.raises(Kill):
        pretrain_encoder(parted, world=world, callbacks=[kill_at(6)])
    pretrain_encoder(parted, world=world)
    assert read(tmp_path / "b", "history.json") == read(whole, "history.json")
    assert read(tmp_path / "b", "metrics.json")["mse"] == read(whole, "metrics.json")["mse"]
    assert_same_state(CalibratedEncoder.from_pretrained(tmp_path / "b" / "encoder"),
                      CalibratedEncoder.from_pretrained(whole / "encoder"))


# ---------------------------------------------------------------------- errors
def test_clear_errors(chain, world, backbone, tmp_path):
    enc, pre = chain
    with pytest.raises(InvalidInputError, match=r"subj09.*\['subj01', 'subj02'\]"):
        refine_subject(RefineConfig.smoke(output_dir=str(tmp_path / "x"), init_from=str(pre), subject="subj09"),
                       world=world, backbone=backbone)
    with pytest.raises(InvalidInputError, match=r"subj07"):
        pretrain_encoder(EncoderPretrainConfig.smoke(output_dir=str(tmp_path / "x"), exclude_subjects=("subj07",)),
                         world=world)
    with pytest.raises(InvalidInputError, match=r"48×48.*32×32"):
        pretrain_multisubject(MultisubjectConfig.smoke(output_dir=str(tmp_path / "x"), encoder_dir=str(enc),
                                                       resolution=48), world=world, backbone=backbone)
    with pytest.raises(DataNotFoundError, match=r"encoder/config\.json"):
        pretrain_multisubject(MultisubjectConfig.smoke(output_dir=str(tmp_path / "x"),
                                                       encoder_dir=str(tmp_path / "nothing")),
                              world=world, backbone=backbone)
    with pytest.raises(DataNotFoundError, match=r"model/llmn/config\.json"):
        refine_subject(RefineConfig.smoke(output_dir=str(tmp_path / "x"), init_from=str(enc)),
                       world=world, backbone=backbone)
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(enc, broken, ignore=shutil.ignore_patterns("checkpoints"))
    (broken / "encoder" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.safetensors"):
        pretrain_multisubject(MultisubjectConfig.smoke(output_dir=str(tmp_path / "x"), encoder_dir=str(broken)),
                              world=world, backbone=backbone)
    with pytest.raises(InvalidInputError, match="train_fraction"):
        refine_subject(RefineConfig.smoke(output_dir=str(tmp_path / "x"), train_fraction=0.0), world=world)


def test_x0_timestep_weights():
    from brainrecon.training.neuropictor_objective import x0_timestep_weights

    ab = torch.linspace(0.999, 0.001, 1000)
    assert torch.equal(x0_timestep_weights(ab, None), torch.ones(1000))
    w = x0_timestep_weights(ab, 50.0)
    assert w.mean().item() == pytest.approx(1.0, rel=1e-5)
    assert bool((w[1:] >= w[:-1]).all())                       # more weight on noisier steps
    raw = (1 - ab.double()) / ab.double()
    scale = w[0].item() / raw[0].item()                         # below the clip: proportional to 1/SNR
    assert w[500].item() == pytest.approx(scale * raw[500].item(), rel=1e-4)
    assert w[-1].item() == pytest.approx(scale * 50.0, rel=1e-4)   # clipped at γ
    with pytest.raises(InvalidInputError, match="x0_weight_max"):
        RefineConfig.smoke(x0_weight_max=0.0)
    with pytest.raises(InvalidInputError, match="layout_weight"):
        MultisubjectConfig.smoke(layout_weight=-1.0)


def _objective_parts(chain, world, backbone):
    """A fresh stage-ii model, subj01's cached training rows and the DDPM scheduler."""
    from diffusers import DDPMScheduler

    from brainrecon.training.cache import cache_stage_data, make_stage_dataset

    _, pre = chain
    model = NeuroPictorModel.from_pretrained(pre / "model")
    data = cache_stage_data(make_stage_dataset(world, ["subj01"], "train", 32, "visual"), backbone, progress=False)
    return model, data, DDPMScheduler.from_config(backbone.scheduler.config)


def test_layout_probe_learns_and_stays_out_of_the_model(chain, world, backbone, tmp_path):
    from brainrecon.training.neuropictor_objective import DenoisingObjective

    model, data, sched = _objective_parts(chain, world, backbone)
    b = data.batch(torch.arange(16))
    plain = DenoisingObjective(model, backbone.unet, sched, data.empty_text, 0.1, 0.0)
    assert not hasattr(plain, "layout_probe") and "layout" not in plain(b["maps"], b["latents"], b["text"])[1]
    obj = DenoisingObjective(model, backbone.unet, sched, data.empty_text, 0.1, 0.0, layout_weight=1.0,
                             x0_weight_max=50.0)
    opt = torch.optim.Adam([p for p in obj.parameters() if p.requires_grad], lr=3e-3)
    torch.manual_seed(0)
    first = None
    for _ in range(40):
        loss, logs = obj(b["maps"], b["latents"], b["text"])
        first = first if first is not None else float(logs["layout"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(logs["layout"]) < 0.7 * first                  # E_ft + probe learn the clean latent
    model.save_pretrained(tmp_path / "m")
    assert not any("layout_probe" in k for k in NeuroPictorModel.from_pretrained(tmp_path / "m").state_dict())


def test_layout_probe_warm_start_is_the_least_squares_read_out(chain, world, backbone):
    """fit_layout_probe sets P to the optimum: no gradient left, below a random probe, refused without P."""
    from brainrecon.training.neuropictor_objective import DenoisingObjective

    model, data, sched = _objective_parts(chain, world, backbone)
    b = data.batch(torch.arange(32))
    plain = DenoisingObjective(model, backbone.unet, sched, data.empty_text, 0.1, 0.0)
    with pytest.raises(ValueError, match="layout_weight"):
        plain.fit_layout_probe(b["maps"], b["latents"])
    obj = DenoisingObjective(model, backbone.unet, sched, data.empty_text, 0.1, 0.0, layout_weight=1.0)

    def probe_loss():
        with torch.no_grad():
            f = model.llmn.feature_map(model.encode(b["maps"]))
        return torch.nn.functional.mse_loss(obj.layout_probe(f), b["latents"])

    random_loss = probe_loss().item()
    fitted = obj.fit_layout_probe(b["maps"], b["latents"], batch_size=7, ridge=1e-9)
    loss = probe_loss()
    assert fitted == pytest.approx(loss.item(), rel=1e-4)
    assert fitted < 0.9 * random_loss
    loss.backward()                                            # the least-squares optimum: flat there
    g = torch.cat([obj.layout_probe.weight.grad.flatten(), obj.layout_probe.bias.grad])
    assert float(g.abs().max()) < 1e-4
    obj.fit_layout_probe(b["maps"], b["latents"], ridge=1e-9)
    assert probe_loss().item() == pytest.approx(fitted, rel=1e-4)   # a second fit lands on the same optimum


def test_shuffled_scan_score_tells_whether_the_llmn_reads_the_scan(chain, world, backbone):
    """``noise_mse_shuffled_scan`` equals ``noise_mse`` exactly when F_0 ignores the scan, and not otherwise."""
    from diffusers import DDPMScheduler

    from brainrecon.training.cache import cache_stage_data, make_stage_dataset
    from brainrecon.training.neuropictor_scores import score_denoiser

    _, pre = chain
    assert "noise_mse_shuffled_scan" in read(pre, "metrics.json")
    model = NeuroPictorModel.from_pretrained(pre / "model")
    test = cache_stage_data(make_stage_dataset(world, ["subj01"], "test", 32, "visual"), backbone, progress=False)
    sched = DDPMScheduler.from_config(backbone.scheduler.config)
    mean_text = test.text_table.float().mean(0)
    ft = model.llmn.feature_transform
    with torch.no_grad():
        ft.zero_conv.weight.zero_()        # F_0 = the zero conv's bias: the same map for every scan
        ft.zero_conv.bias.normal_(0, 0.5)
        for b in model.llmn.controlnet.controlnet_down_blocks:   # the copy's residuals reach the U-Net
            b.weight.normal_(0, 0.2)
    blind = score_denoiser(model, backbone.unet, sched, test, mean_text, n=12, draws=1)
    assert blind["noise_mse_shuffled_scan"] == pytest.approx(blind["noise_mse"], rel=1e-6)
    assert blind["noise_mse"] != pytest.approx(blind["noise_mse_semantic_only"], rel=1e-3)   # the LLMN acts
    with torch.no_grad():
        ft.zero_conv.weight.normal_(0, 0.5)                      # now F_0 depends on the scan
    seeing = score_denoiser(model, backbone.unet, sched, test, mean_text, n=12, draws=1)
    assert seeing["noise_mse_shuffled_scan"] != pytest.approx(seeing["noise_mse"], rel=1e-3)

def test_gradient_checkpointing_changes_nothing_but_memory(world, backbone, tmp_path):
    cfg = RefineConfig.smoke(steps=3, cfg_steps=0, init_from=None)
    a = refine_subject(replace(cfg, output_dir=str(tmp_path / "a")), world=world, backbone=backbone)
    b = refine_subject(replace(cfg, output_dir=str(tmp_path / "b"), gradient_checkpointing=True), world=world,
                       backbone=backbone)
    assert read(a, "history.json") == read(b, "history.json")
    assert not backbone.unet.is_gradient_checkpointing          # the shared backbone is left as it was


def test_same_code_reads_nsd(tmp_path, backbone):
    """Stages i-ii on a miniature NSD tree (official layout, fsaverage betas): world = the NSD root."""
    from brainrecon.data.nsd_fixture import make_nsd_fixture

    root = make_nsd_fixture(tmp_path / "nsd", subjects=(1,), n_sessions=1, spaces=("fsaverage",))
    nsd = dict(world=str(root), nsd_sessions=1, subjects=("subj01",))
    enc = pretrain_encoder(EncoderPretrainConfig.smoke(output_dir=str(tmp_path / "i"), steps=4, n_eval=8, **nsd))
    assert read(enc, "run.json")["world"] == {"nsd_root": str(root)}
    assert read(enc, "metrics.json")["subjects"] == ["subj01"]
    pre = pretrain_multisubject(MultisubjectConfig.smoke(output_dir=str(tmp_path / "ii"), encoder_dir=str(enc),
                                                         steps=2, cfg_steps=1, n_eval=8, **nsd), backbone=backbone)
    m = read(pre, "metrics.json")
    assert m["n_rows"] == 8 and m["noise_mse"] > 0 and m["losses"]["main"]["steps"] == 2
    with pytest.raises(DataNotFoundError, match=r"subj02.*\n.*subj02/fsaverage"):   # NSD names the files
        refine_subject(RefineConfig.smoke(output_dir=str(tmp_path / "x"), subject="subj02", init_from=str(pre),
                                          world=str(root), nsd_sessions=1), backbone=backbone)


def test_ship_reconstructor_loads_as_pipeline_and_checks_size(chain, world, backbone, tmp_path, monkeypatch):
    from brainrecon.sampling import BrainToImagePipeline
    from brainrecon.training import toy_recipe

    _, pre = chain
    run = refine_subject(RefineConfig.smoke(output_dir=str(tmp_path / "iii"), init_from=str(pre), steps=1,
                                            cfg_steps=0), world=world, backbone=backbone)
    ship = toy_recipe.ship_reconstructor(run, tmp_path / "ship")
    assert sorted(p.name for p in ship.iterdir()) == ["backbone.json", "conditioner", "config.json", "metrics.json",
                                                       "model_index.json", "run.json"]
    pipe = BrainToImagePipeline.from_pretrained(ship)
    assert pipe.map_shape == (1, 32, 32) and pipe.config.flatmap["crop"] == "visual"
    out = pipe(torch.zeros(1, 1, 32, 32), num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 3, 32, 32)
    monkeypatch.setattr(toy_recipe, "MAX_SHIP_BYTES", 1000)
    with pytest.raises(InvalidInputError, match="MB limit"):
        toy_recipe.ship_reconstructor(run, tmp_path / "too_big")
    assert not (tmp_path / "too_big").exists()
