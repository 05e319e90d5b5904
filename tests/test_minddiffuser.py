"""MindDiffuser: the shared ridge (against the closed form, its feature selection), the fitted
decoders (smoke world) against their baselines, stage 1 = iteration 0 of stage 2, stage 2 lowering
Eq. 5's loss, exact resume, and refusals before any compute."""
import json

import numpy as np
import pytest
import torch

from brainrecon.errors import CheckpointError, InvalidInputError
from brainrecon.models.ridge import RidgeDecoder, cross_validated_r, fit_ridge
from brainrecon.training.minddiffuser import MindDiffuserConfig, ship_minddiffuser, train_minddiffuser

pytestmark = pytest.mark.usefixtures("one_thread")


def _planted(n=240, p=60, d=40, informative=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p)).astype(np.float32)
    w = rng.standard_normal((p, d)).astype(np.float32)
    w[:, informative:] = 0                                  # only the first columns depend on x
    return x, x @ w * 0.3 + rng.standard_normal((n, d)).astype(np.float32)


@pytest.mark.parametrize("n,p", [(200, 30), (40, 120)])     # primal ridge, and the dual (kernel) path
def test_fit_ridge_equals_the_closed_form_at_one_penalty(n, p):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, p)).astype(np.float32)
    y = rng.standard_normal((n, 3)).astype(np.float32) + x[:, :3]
    w, b, a = fit_ridge(x, y, alphas=[7.0], cv=4)
    xc, yc = x - x.mean(0), y - y.mean(0)
    w_ref = np.linalg.solve(xc.T @ xc + 7.0 * np.eye(p), xc.T @ yc)
    assert np.allclose(w, w_ref, atol=2e-3) and np.allclose(a, 7.0)
    assert np.allclose(b, y.mean(0) - x.mean(0) @ w_ref, atol=2e-3)


def test_selection_keeps_the_predictable_dimensions_and_round_trips(tmp_path):
    x, y = _planted()
    dec = RidgeDecoder.fit(x[:200], y[:200].reshape(200, 8, 5), select_fraction=0.25, folds=5)
    assert dec.is_selective and len(dec.selected) == 10
    assert set(dec.selected.tolist()) == set(range(10))         # exactly the planted informative columns
    rest = torch.ones(40, dtype=torch.bool)
    rest[dec.selected] = False
    assert dec.cv_r[dec.selected].min() > 0.5 > dec.cv_r[rest].max()
    pred = dec(torch.from_numpy(x[200:]))
    assert pred.shape == (40, 10)
    r = np.corrcoef(pred.numpy().ravel(), y[200:, :10].ravel())[0, 1]
    assert r > 0.6
    assert torch.equal(dec.take(torch.from_numpy(y[200:]).reshape(40, 8, 5)), torch.from_numpy(y[200:, :10]))
    dec.save_pretrained(tmp_path / "d")
    back = RidgeDecoder.from_pretrained(tmp_path / "d", use_safetensors=True)
    assert torch.equal(back.selected, dec.selected) and torch.allclose(back(torch.from_numpy(x[200:])), pred)
    full = RidgeDecoder.fit(x[:200], y[:200].reshape(200, 8, 5))
    assert not full.is_selective and full(torch.from_numpy(x[:3])).shape == (3, 8, 5)
    half = RidgeDecoder.fit(x[:200], y[:200].reshape(200, 8, 5))
    half.weight.data = half.weight.data.half()                  # shipped in fp16, computed in fp32
    assert torch.allclose(half(torch.from_numpy(x[:3])), full(torch.from_numpy(x[:3])), atol=1e-2)


def test_cross_validated_r_is_out_of_fold():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((60, 80)).astype(np.float32)
    y = rng.standard_normal((60, 5)).astype(np.float32)           # nothing to predict
    assert np.abs(cross_validated_r(x, y, folds=5)).max() < 0.5    # in-sample fits would be near 1


@pytest.mark.parametrize("x,y,match", [
    (np.zeros((10, 3)), np.zeros((9, 2)), "pair up"),
    (np.zeros((3, 3)), np.zeros((3, 2)), "at least 4"),
    (np.full((10, 3), np.nan), np.zeros((10, 2)), "NaN"),
    (np.zeros(10), np.zeros((10, 2)), "2-D"),
])
def test_ridge_refuses_bad_input(x, y, match):
    with pytest.raises(InvalidInputError, match=match):
        fit_ridge(x, y)


def test_ridge_refuses_an_unknown_backend():
    with pytest.raises(InvalidInputError, match="backend"):
        fit_ridge(np.zeros((10, 3)), np.zeros((10, 2)), backend="jax")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("md") / "run"
    train_minddiffuser(MindDiffuserConfig.smoke(output_dir=str(out)))
    return out


@pytest.fixture(scope="module")
def pipe(run):
    from brainrecon.sampling import load_reconstructor

    p = load_reconstructor(run / "reconstructor")
    p.set_progress_bar_config(disable=True)
    return p


def test_decoders_beat_their_baselines_and_the_selection_holds_out(run):
    m = json.loads((run / "metrics.json").read_text())
    assert m["subject"] == "subj01" and m["n_test"] >= 10
    for part in ("text", "latent", "feature_1"):
        assert m[part]["error"] < m[part]["mean_baseline"] and m[part]["error"] < m[part]["shuffled_scan"], part
    f = m["feature_1"]
    assert f["kept"] == round(0.25 * f["dims"]) and f["cv_r_kept"] > f["cv_r_dropped"] + 0.1
    assert f["test_r_kept"] > 0.2                        # the kept dimensions hold up on held-out scans


def test_stage_one_is_iteration_zero_and_stage_two_lowers_the_loss(pipe):
    from brainrecon.models import MindDiffuserModel
    from brainrecon.sampling import optimise_latents

    assert isinstance(pipe.conditioner, MindDiffuserModel) and pipe.conditioner.default_strength == 0.74
    x = torch.randn(2, *pipe.map_shape)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(2)]       # noqa: E731
    stage1 = pipe(x, num_inference_steps=6, generator=gens()).images
    out = optimise_latents(pipe, x, iterations=3, lr=0.05, num_inference_steps=6, generator=gens(), progress=False,
                           record_every=1)
    assert torch.allclose(out.stage1_images, stage1, atol=1e-5)
    assert out.losses.shape == (4, 2) and (out.losses[-1] < out.losses[0]).all()
    assert sorted(out.snapshots) == [0, 1, 2, 3] and not torch.equal(out.images, out.stage1_images)
    same = pipe(x, num_inference_steps=6, generator=gens(), latent_optimisation_steps=3,
                latent_optimisation_lr=0.05).images
    assert torch.allclose(same, out.images, atol=1e-5)           # the pipeline argument runs the same stage 2
    with torch.no_grad():
        c0 = pipe.conditioner.encode_scans(x)["text_condition"].float()
    assert torch.equal(out.text_condition, c0)                   # by default z only (the official code)
    both = optimise_latents(pipe, x, iterations=1, lr=0.05, num_inference_steps=6, generator=gens(),
                            progress=False, optimise_text=True)
    assert not torch.equal(both.text_condition, c0)              # the paper's text: c as well


def test_random_z_starts_from_noise_and_bad_settings_are_refused(pipe):
    from brainrecon.sampling import optimise_latents

    x = torch.randn(2, *pipe.map_shape)
    kw = dict(num_inference_steps=4, progress=False)
    a = optimise_latents(pipe, x, iterations=0, init="random", generator=torch.Generator().manual_seed(0), **kw)
    b = optimise_latents(pipe, x, iterations=0, generator=torch.Generator().manual_seed(0), **kw)
    assert not torch.allclose(a.init_latents, b.init_latents)
    with pytest.raises(InvalidInputError, match="iterations"):
        optimise_latents(pipe, x, iterations=-1, **kw)
    with pytest.raises(InvalidInputError, match="latent_optimisation_steps"):
        pipe(x, latent_optimisation_steps=-2)
    with pytest.raises(InvalidInputError, match="semantic_source"):      # not silently ignored
        pipe(x, latent_optimisation_steps=2, semantic_source=x)
    with pytest.raises(InvalidInputError, match="init"):
        optimise_latents(pipe, x, iterations=1, init="zeros", **kw)
    with pytest.raises(InvalidInputError, match=r"\(B, %d\)" % pipe.map_shape[0]):
        optimise_latents(pipe, torch.randn(2, pipe.map_shape[0] + 1), iterations=1, **kw)


def test_feature_layers_the_backbone_lacks_are_refused(pipe, tmp_path):
    from brainrecon.models import MindDiffuserModel

    bb = pipe.conditioner._backbone[0]
    c = pipe.conditioner
    bad = MindDiffuserModel(c.text_decoder, c.latent_decoder, {7: c.feature_decoders["1"]}, c.subject, c.text_tail)
    with pytest.raises(InvalidInputError, match=r"layer\(s\) \[7\] do not exist"):
        bad.attach_backbone(bb)
    with pytest.raises(InvalidInputError, match=r"\[9\] do not exist"):
        train_minddiffuser(MindDiffuserConfig.smoke(output_dir=str(tmp_path / "x"), feature_layers=(9,)))
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_a_rerun_resumes_from_the_fitted_decoders(run):
    before = json.loads((run / "metrics.json").read_text())
    stamp = (run / "checkpoints" / "minddiffuser" / "latent_decoder" / "config.json").stat().st_mtime_ns
    train_minddiffuser(MindDiffuserConfig.smoke(output_dir=str(run)))
    after = json.loads((run / "metrics.json").read_text())
    assert after["latent"] == before["latent"] and after["feature_1"] == before["feature_1"]
    assert (run / "checkpoints" / "minddiffuser" / "latent_decoder" / "config.json").stat().st_mtime_ns == stamp


def test_unknown_subjects_are_refused_before_any_fit(tmp_path):
    with pytest.raises(InvalidInputError, match="subj09"):
        train_minddiffuser(MindDiffuserConfig.smoke(output_dir=str(tmp_path / "x"), subject="subj09"))
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_shipping_halves_the_weights_and_a_damaged_folder_is_named(run, tmp_path):
    from brainrecon.models import MindDiffuserModel

    dest = ship_minddiffuser(run, tmp_path / "ship")
    full = MindDiffuserModel.from_pretrained(run / "reconstructor" / "conditioner", use_safetensors=True)
    half = MindDiffuserModel.from_pretrained(dest / "conditioner", use_safetensors=True)
    x = torch.randn(3, full.input_shape()[0])
    a, b = full.encode_scans(x), half.encode_scans(x)
    assert torch.allclose(a["init_latents"], b["init_latents"], atol=2e-2)
    size = lambda d: sum(p.stat().st_size for p in d.rglob("*.safetensors"))       # noqa: E731
    assert size(dest) < 0.6 * size(run / "reconstructor")
    (dest / "conditioner" / "text_tail.safetensors").unlink()
    with pytest.raises(CheckpointError, match="text_tail.safetensors"):
        MindDiffuserModel.from_pretrained(dest / "conditioner")


def test_the_cli_runs_the_same_fit(run, capsys):
    from brainrecon.cli import main

    before = json.loads((run / "metrics.json").read_text())
    assert main(["train", "minddiffuser", "--preset", "smoke", "--out", str(run), "--feature-layers", "1"]) == 0
    assert "reconstructor/" in capsys.readouterr().out          # it resumed: the same decoders, the same figures
    assert json.loads((run / "metrics.json").read_text())["feature_1"] == before["feature_1"]


def test_same_code_fits_on_nsd(tmp_path):
    """The decoders on a miniature NSD tree (official layout, fsaverage betas): world = the NSD root."""
    from brainrecon.data.nsd_fixture import make_nsd_fixture
    from brainrecon.sampling import load_reconstructor

    root = make_nsd_fixture(tmp_path / "nsd", subjects=(1,), n_sessions=1, spaces=("fsaverage",))
    out = train_minddiffuser(MindDiffuserConfig.smoke(output_dir=str(tmp_path / "md"), world=str(root),
                                                      nsd_sessions=1, n_eval=8))
    run = json.loads((out / "run.json").read_text())
    m = json.loads((out / "metrics.json").read_text())
    assert run["world"] == {"nsd_root": str(root)} and m["subject"] == "subj01" and m["n_voxels"] > 0
    assert m["feature_1"]["kept"] == round(0.25 * m["feature_1"]["dims"])
    pipe = load_reconstructor(out / "reconstructor")
    pipe.set_progress_bar_config(disable=True)
    img = pipe(torch.randn(1, *pipe.map_shape), num_inference_steps=4).images
    assert img.shape[:2] == (1, 3) and torch.isfinite(img).all()


def test_demo_compares_the_stages_and_refuses_a_subject_without_decoders(run, tmp_path):
    """``brainrecon demo`` on a MindDiffuser folder: three stage rows on the same scans, baselines,
    figures, a results folder the evaluator reads; another subject is refused before any work."""
    from brainrecon.sampling.demo import write_demo_report

    rec = run / "reconstructor"
    with pytest.raises(InvalidInputError, match=r"fitted on subj01.*none for subj02.*--subject subj02"):
        write_demo_report(tmp_path / "no", reconstructor=rec, subject="subj02", world_preset="smoke")
    with pytest.raises(InvalidInputError, match="iterations"):
        write_demo_report(tmp_path / "no", reconstructor=rec, iterations=-1)
    with pytest.raises(InvalidInputError, match="--method neuropictor"):
        write_demo_report(tmp_path / "no", reconstructor=rec, method="neuropictor")
    r = write_demo_report(tmp_path / "demo", reconstructor=rec, n_test=3, num_inference_steps=4, iterations=2,
                          progress=False)
    assert r["method"] == "minddiffuser" and r["n_test"] == 3 and r["iterations"] == 2
    assert list(r["stages"]) == ["stage 1", "stage 2", "stage 2, random z"]
    assert all(0 <= row["position_error"] <= 1.5 for row in r["stages"].values())
    assert r["stages"]["stage 1"] != r["stages"]["stage 2"]
    loss = r["loss_by_iteration"]
    assert len(loss["decoded"]) == 3 and loss["decoded"][-1] < loss["decoded"][0]
    assert loss["random"][0] > loss["decoded"][0]                 # noise starts further from the features
    assert set(r["baselines"]) == {"mean_image", "shuffled_scan"} and r["decoders"]["subject"] == "subj01"
    for name in ("reconstructions.png", "stage_losses.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 5000
    saved = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert saved["stages"] == json.loads(json.dumps(r["stages"]))
    assert (tmp_path / "demo" / "results" / "reconstructions.npy").is_file()


def test_the_widget_steps_through_stage_two(pipe):
    """``view_latent_optimisation``: every iteration shown without recomputing; a rerun from noise."""
    from brainrecon.widgets import view_latent_optimisation

    x = torch.randn(2, *pipe.map_shape)
    v = view_latent_optimisation(pipe, x, n=2, iterations=2, lr=0.05, num_inference_steps=4)
    assert v.iteration.max == 2 and v.iteration.value == 2 and sorted(v.result.snapshots) == [0, 1, 2]
    last = v.panel.value
    assert last[:4] == b"\x89PNG" and "iteration 2 of 2" in v.status.value
    v.iteration.value = 0                                          # stage 1: no new sampling, another picture
    assert v.panel.value != last and "iteration 0 of 2" in v.status.value
    assert "iteration 0" in v.figure.texts[0].get_text()
    decoded = v.result.init_latents
    v.init.value, v.iterations.value = "random", 1
    v.run_button.click()
    assert v.iteration.max == 1 and "noise" in v.status.value
    assert not torch.allclose(v.result.init_latents, decoded)
    with pytest.raises(InvalidInputError, match=r"\(N, V\)"):
        view_latent_optimisation(pipe, torch.randn(3, 4, 4))


def test_compare_stages_scores_along_the_iterations(pipe):
    """``curve_every``: PixCorr / SSIM / position error at the recorded iterations, whose ends are the
    stage-1 and stage-2 rows' own figures."""
    from brainrecon.data.toyworld import make_toyworld
    from brainrecon.sampling import make_test_maps
    from brainrecon.sampling.demo import demo_world_config
    from brainrecon.sampling.two_stage import compare_stages

    world = make_toyworld(demo_world_config(pipe.info, "smoke"), progress=False)
    data = make_test_maps(pipe, world, "subj01", 3)
    judge = pipe.conditioner._backbone[0].attribute_classifier
    res = compare_stages(pipe, data, iterations=2, lr=0.05, random_z=False, judge=judge, progress=False,
                         curve_every=1, num_inference_steps=4)
    c = res["by_iteration"]
    assert c["iteration"] == [0, 1, 2] and set(c) == {"iteration", "pixcorr", "ssim", "position_error"}
    for k in ("pixcorr", "ssim", "position_error"):
        assert c[k][0] == pytest.approx(res["rows"]["stage 1"][k]) and c[k][-1] == pytest.approx(res["rows"]["stage 2"][k])
    with pytest.raises(InvalidInputError, match="curve_every"):
        compare_stages(pipe, data, iterations=1, curve_every=-1)
