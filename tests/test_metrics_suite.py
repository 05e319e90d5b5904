"""The toy suite end to end: evaluate, results folders, evaluate_folder, brain correlation, attributes, plots."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from brainrecon.errors import DataNotFoundError, InvalidInputError
from brainrecon.metrics import (ToyFeatureSet, attribute_scores, brain_correlation_per_image, evaluate,
                                evaluate_folder, load_results, make_degraded_results, metrics_dict, plot_metrics,
                                plot_reconstruction_grid, run_evaluate_cli, save_results)
from metrics_fakes import write_random_toy_backbone


@pytest.fixture(scope="module")
def toy_bb(tmp_path_factory):
    from brainrecon.backbones import load_backbone

    torch.set_num_threads(2)
    return load_backbone(write_random_toy_backbone(tmp_path_factory.mktemp("toybb")))


@pytest.fixture(scope="module")
def world():
    from brainrecon.data.toyworld import ToyWorldConfig, make_toyworld

    return make_toyworld(ToyWorldConfig.smoke(n_subjects=1, n_test=16, n_train=20, n_calibration=64), progress=False)


def test_identical_images_score_perfectly(toy_bb, world):
    x = world.scenes.images[world.test_images]
    sc = world.scenes
    ids = world.test_images
    t = evaluate(x, x, feature_set="toy", backbone=toy_bb,
                 attributes={"category": sc.category[ids], "colour": sc.colour[ids], "bbox": sc.bbox[ids]})
    m = metrics_dict(t)
    for k in ("pixcorr", "ssim", "alexnet2", "alexnet5", "inception", "clip", "nway"):
        assert m[k] == pytest.approx(1.0, abs=1e-9), k
    assert m["effnet"] == pytest.approx(0.0, abs=1e-6) and m["swav"] == pytest.approx(0.0, abs=1e-6)
    assert {"category_acc", "colour_acc", "both_acc", "position_error", "box_iou"} <= set(m)
    assert set(t.columns) >= {"metric", "label", "group", "value", "ci_low", "ci_high", "n", "higher_is_better",
                              "chance", "feature_set", "protocol"}
    assert set(t.feature_set.dropna()) == {"toy"} and (t.n == len(x)).all()
    assert t.set_index("metric").loc["nway", "label"] == "10-way top-1"     # capped at the 10 toy categories


def test_toy_feature_set_mapping_and_shapes(toy_bb):
    fs = ToyFeatureSet(toy_bb)
    assert fs.mapping["alexnet2"] == (1, "flatten") and fs.mapping["alexnet5"] == (2, "flatten")
    assert fs.mapping["inception"] == (3, "mean_patches") and fs.mapping["clip"] == ("image_embeds", None)
    f = fs.extract(torch.rand(3, 3, 64, 64))
    tokens = 1 + (32 // 8) ** 2
    assert f["alexnet2"].shape == (3, tokens * 32) and f["inception"].shape == (3, 32) and f["clip"].shape == (3, 32)
    with pytest.raises(InvalidInputError, match="toy feature set has no"):
        fs.extract(torch.rand(2, 3, 8, 8), ("vit_h_14",))


def test_attribute_scores_use_ground_truth(toy_bb):
    clf = toy_bb.attribute_classifier
    x = torch.rand(4, 3, 64, 64)
    p = clf.predict(x)
    s = attribute_scores(x, p["category"].numpy(), p["colour"].numpy(), p["bbox"].numpy(), clf)
    assert s["category_acc"] == 1.0 and s["colour_acc"] == 1.0 and s["position_error"] == pytest.approx(0, abs=1e-6)
    wrong = attribute_scores(x, (p["category"].numpy() + 1) % 10, p["colour"].numpy(),
                             p["bbox"].numpy() + 16, clf)                     # box moved by (16, 16) px of 64
    assert wrong["category_acc"] == 0.0 and wrong["position_error"] == pytest.approx(np.hypot(16, 16) / 64, abs=1e-6)


def test_brain_correlation_hand_case_and_regions():
    meas = np.array([[1.0, 2, 3, 4], [1, 0, 1, 0]])
    pred = np.array([[2.0, 4, 6, 8], [0, 1, 0, 1]])
    assert np.allclose(brain_correlation_per_image(pred, meas), [1, -1])
    assert np.allclose(brain_correlation_per_image(pred, meas, [True, True, False, False]), [1, -1])
    with pytest.raises(InvalidInputError, match="voxels"):
        brain_correlation_per_image(pred, meas, [True, False])


def test_results_folder_round_trip_and_evaluate_folder(tmp_path, toy_bb, world):
    out = make_degraded_results(tmp_path / "res", world=world, n=12, shuffle=0.5)
    res = load_results(out)
    assert res.reconstructions.shape == res.targets.shape == (12, 64, 64, 3) and res.meta["subject"] == "subj01"
    table = evaluate_folder(out, feature_set="toy", backbone=toy_bb, world=world)
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["metrics"]) >= {"pixcorr", "ssim", "alexnet2", "clip", "brain_corr_visual", "brain_corr_V1",
                                 "category_acc", "position_error"}
    assert 0 < m["metrics"]["pixcorr"] < 1 and m["feature_set"] == "toy" and m["n"] == 12
    assert len(table) == len(m["table"])
    # the targets themselves beat the degraded images on brain correlation (same encoder, same measurements)
    from brainrecon.metrics import brain_correlation, toy_encoder, toy_measured, toy_regions

    meas = toy_measured(world, "subj01", res.meta["image_ids"])
    regs = toy_regions(world, "subj01")
    own = brain_correlation(res.targets, meas, toy_encoder(world, "subj01"), regs)["visual"].mean()
    assert own > m["metrics"]["brain_corr_visual"]


def test_retrieval_through_the_suite(toy_bb):
    x = torch.rand(20, 3, 32, 32)
    emb = ToyFeatureSet(toy_bb).extract(x, ("clip",))["clip"]
    t = evaluate(x, x, feature_set="toy", backbone=toy_bb, metrics=["retrieval"], brain_embeddings=emb)
    assert list(t.metric) == ["retrieval_fwd", "retrieval_bwd"] and (t.value == 1.0).all()
    assert t.chance.iloc[0] == pytest.approx(1 / 20)
    with pytest.raises(InvalidInputError, match="brain_embeddings"):
        evaluate(x, x, metrics=["retrieval"])


def test_cli_function_and_plots(tmp_path, toy_bb, world, capsys, monkeypatch):
    out = save_results(tmp_path / "r", world.scenes.images[:6], world.scenes.images[:6], method="identity",
                       world="nsd")
    import brainrecon.metrics.networks as nw

    monkeypatch.setattr(nw, "ToyFeatureSet", lambda *a, **k: ToyFeatureSet(toy_bb))
    args = SimpleNamespace(results_dir=str(out), weights=None, out=str(tmp_path / "m.json"), feature_set="toy")
    assert run_evaluate_cli(args) == 0
    assert "PixCorr" in capsys.readouterr().out and (tmp_path / "m.json").exists()
    t, per = evaluate(world.scenes.images[:6], world.scenes.images[6:12], feature_set="toy", backbone=toy_bb,
                      return_per_image=True)
    assert per.shape == (6, 9)                       # 8 standard metrics + n-way
    assert isinstance(plot_metrics({"a": t, "b": t}), Figure)
    assert isinstance(plot_reconstruction_grid({"rec": world.scenes.images[6:12]}, world.scenes.images[:6], n=4,
                                               scores=per["clip"].to_numpy()), Figure)


def test_errors_for_people(tmp_path):
    with pytest.raises(DataNotFoundError, match="results folder"):
        load_results(tmp_path / "nothing")
    with pytest.raises(InvalidInputError, match="metric"):
        evaluate(np.zeros((2, 8, 8, 3)), np.zeros((2, 8, 8, 3)), metrics=["psnr"])
    with pytest.raises(InvalidInputError, match="at least 2"):
        evaluate(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 8, 3)), metrics=["pixcorr"])


def test_nsd_style_folder_with_measured_responses_and_a_user_encoder(tmp_path, toy_bb, world):
    imgs = world.scenes.images[:8]
    def encoder(x):                                   # any callable images -> (N, V) will do
        return x.mean(1).flatten(1)[:, ::64].numpy()

    meas = encoder(torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255)
    regions = {"left": np.arange(meas.shape[1]) % 2 == 0, "right": np.arange(meas.shape[1]) % 2 == 1}
    out = save_results(tmp_path / "nsd", imgs, imgs, world="nsd", measured=meas, regions=regions)
    with pytest.warns(UserWarning, match="no encoding model"):
        t = evaluate_folder(out, out=False, feature_set="toy", backbone=toy_bb, metrics=["pixcorr"])
    assert list(t.metric) == ["pixcorr"]
    t = evaluate_folder(out, out=False, feature_set="toy", backbone=toy_bb, metrics=["brain"], encoder=encoder)
    assert list(t.metric) == ["brain_corr_left", "brain_corr_right"]
    assert np.allclose(t.value, 1.0)


def test_cli_evaluate_command(tmp_path, toy_bb, world, capsys, monkeypatch):
    """``brainrecon evaluate DIR`` parses its flags, scores the folder and refuses a missing one."""
    import json

    import brainrecon.metrics.networks as nw
    from brainrecon.cli import main

    monkeypatch.setattr(nw, "ToyFeatureSet", lambda *a, **k: ToyFeatureSet(toy_bb))
    out = save_results(tmp_path / "r", world.scenes.images[:6], world.scenes.images[:6], method="identity",
                       world="nsd")
    assert main(["evaluate", str(out), "--feature-set", "toy", "--protocol", "brain-diffuser",
                 "--out", str(tmp_path / "m.json")]) == 0
    assert "PixCorr" in capsys.readouterr().out
    m = json.loads((tmp_path / "m.json").read_text())
    flat = json.dumps(m)
    assert "pixcorr" in flat and "brain-diffuser" in flat
    assert main(["evaluate", str(tmp_path / "nowhere"), "--feature-set", "toy"]) == 2
    assert "nowhere" in capsys.readouterr().err
