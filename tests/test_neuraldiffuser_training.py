"""NeuralDiffuser's training on the shared run machinery (smoke size): both phases, the saved
reconstructor, held-out metrics with their baselines, exact resume, refusals before any compute."""
import json

import pytest
import torch

from brainrecon.errors import InvalidInputError
from brainrecon.training.neuraldiffuser import NeuralDiffuserConfig, train_neuraldiffuser

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("nd") / "run"
    train_neuraldiffuser(NeuralDiffuserConfig.smoke(output_dir=str(out)))
    return out


def test_both_phases_train_and_the_reconstructor_loads(run):
    from brainrecon.models import NeuralDiffuserModel
    from brainrecon.sampling import load_reconstructor

    m = json.loads((run / "metrics.json").read_text())
    assert m["pretrain_subjects"] == ["subj02", "subj03"] and m["subject"] == "subj01"
    for phase in ("pretrain", "finetune"):
        assert m["losses"][phase]["loss_final"] < m["losses"][phase]["loss_first"]
    for part in ("text", "latent", "feature_1", "feature_3"):
        assert {"error", "mean_baseline", "shuffled_scan"} <= set(m[part])
    assert 0 <= m["brain_to_image_top1"] <= 1 and m["chance_top1"] == pytest.approx(1 / m["n_test"])
    r = m["retrieval"]           # the suite's protocol: min(300, N) candidates, both directions
    assert r["n_way"] == m["n_test"] and r["chance"] == pytest.approx(1 / m["n_test"])
    assert 0 <= r["image_retrieval"] <= 1 and 0 <= r["brain_retrieval"] <= 1
    pipe = load_reconstructor(run / "reconstructor")
    assert isinstance(pipe.conditioner, NeuralDiffuserModel) and pipe.conditioner.subject == "subj01"
    assert len(pipe.conditioner.latent_stats) == 2 and set(pipe.conditioner.voxel_encoder.subjects) == {
        "subj01", "subj02", "subj03"}
    pipe.set_progress_bar_config(disable=True)
    n = pipe.map_shape[0]
    img = pipe(torch.randn(2, n), strength=0.75, num_inference_steps=4,
               generator=[torch.Generator().manual_seed(i) for i in range(2)]).images
    assert img.shape[:2] == (2, 3) and torch.isfinite(img).all()
    run_rec = json.loads((run / "run.json").read_text())
    assert run_rec["stage"] == "neuraldiffuser" and run_rec["steps"] == {"pretrain": 30, "finetune": 20}


def test_a_rerun_resumes_from_the_checkpoints_and_gives_the_same_figures(run):
    before = json.loads((run / "metrics.json").read_text())
    train_neuraldiffuser(NeuralDiffuserConfig.smoke(output_dir=str(run)))
    after = json.loads((run / "metrics.json").read_text())
    assert after["losses"]["finetune"]["resumed_from"] == 20 and after["text"] == before["text"]


def test_unknown_subjects_are_refused_before_any_training(tmp_path):
    with pytest.raises(InvalidInputError, match="subj09"):
        train_neuraldiffuser(NeuralDiffuserConfig.smoke(output_dir=str(tmp_path / "x"), subject="subj09"))
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_the_cli_trains_it(tmp_path, capsys):
    from brainrecon.cli import main

    assert main(["train", "neuraldiffuser", "--preset", "smoke", "--out", str(tmp_path / "cli")]) == 0
    assert "reconstructor/" in capsys.readouterr().out
    assert (tmp_path / "cli" / "reconstructor" / "model_index.json").is_file()


def test_shipping_keeps_only_the_subjects_encoder_and_the_same_reconstructions(run, tmp_path):
    from brainrecon.sampling import load_reconstructor
    from brainrecon.training.neuraldiffuser import ship_neuraldiffuser

    shipped = ship_neuraldiffuser(run, tmp_path / "shipped")
    assert {p.name for p in shipped.iterdir()} >= {"model_index.json", "backbone.json", "conditioner", "metrics.json"}
    a, b = load_reconstructor(run / "reconstructor"), load_reconstructor(shipped)
    assert b.conditioner.voxel_encoder.subjects == ["subj01"] and len(a.conditioner.voxel_encoder.subjects) == 3
    v = torch.randn(2, a.map_shape[0])
    kw = dict(strength=0.75, num_inference_steps=4, feature_guidance_scale=1e-3, output_type="pt")
    for p in (a, b):
        p.set_progress_bar_config(disable=True)
    img_a = a(v, generator=[torch.Generator().manual_seed(i) for i in range(2)], **kw).images
    img_b = b(v, generator=[torch.Generator().manual_seed(i) for i in range(2)], **kw).images
    assert torch.equal(img_a, img_b)
    with pytest.raises(Exception, match="reconstructor"):
        ship_neuraldiffuser(tmp_path / "no-run", tmp_path / "x")


def test_the_demo_runs_feature_guidance_with_baselines_and_retrieval(run, tmp_path, capsys):
    from brainrecon.cli import main
    from brainrecon.metrics import load_results

    out = tmp_path / "demo"
    argv = ["demo", "--reconstructor", str(run / "reconstructor"), "--world", "smoke", "--n-test", "6",
            "--steps", "4", "--out", str(out)]
    assert main(argv) == 0
    assert "kappa_eta" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "neuraldiffuser" and report["n_test"] == 6 and report["strength"] == 0.75
    assert [(r["kappa"], r["eta"]) for r in report["kappa_eta"]] == [
        (0.0, None), (1e-3, 0.2), (1e-3, 1.0), (1e-2, 0.2), (1e-2, 1.0)]
    assert set(report["baselines"]) == {"mean_image", "shuffled_scan"}
    assert report["retrieval"]["n_way"] == 6 and 0 <= report["retrieval"]["image_retrieval"] <= 1
    for name in ("reconstructions.png", "kappa_eta.png"):
        assert (out / name).stat().st_size > 5000
    res = load_results(out / "results")
    assert len(res) == 6 and res.meta["method"] == "neuraldiffuser"
    assert res.meta["extra"]["feature_guidance_scale"] == 1e-2
    # a NeuralDiffuser folder asked for as NeuroPictor is refused before anything runs
    assert main(argv[:-1] + [str(tmp_path / "d2"), "--method", "neuropictor"]) == 2
    assert "holds a neuraldiffuser reconstructor" in capsys.readouterr().err and not (tmp_path / "d2").exists()


def test_a_fresh_run_with_the_same_seed_gives_the_same_model(run, tmp_path):
    """Initial weights are drawn from the config's seed (torch's own initial seed differs per process)."""
    train_neuraldiffuser(NeuralDiffuserConfig.smoke(output_dir=str(tmp_path / "again")))
    a = json.loads((run / "metrics.json").read_text())
    b = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert a["text"] == b["text"] and a["latent"] == b["latent"] and a["retrieval"] == b["retrieval"]


def test_the_explorer_shows_a_voxel_method_with_its_voxels_as_input(run):
    """A NeuralDiffuser reconstructor on the explorer page: its input panel is the voxel vector (no
    flatmap projector), its reconstruction starts from ẑ at its default strength (0.75, Algorithm 1)."""
    from brainrecon.explorer import view_explorer
    from brainrecon.sampling import load_reconstructor

    pipe = load_reconstructor(run / "reconstructor")
    assert pipe.conditioner.default_strength == 0.75
    view = view_explorer([pipe], n_test=2, num_inference_steps=4, world_preset="smoke")
    assert view.status.value.startswith("neuraldiffuser · subj01 · scan 0")
    titles = [ax.get_title() for ax in view.figure.axes]
    assert any("voxels)" in t for t in titles) and len(view.panel.value) > 5000
    before = view.reconstruction.clone()
    view.scan.value = 1
    assert not torch.equal(before, view.reconstruction)
    v = torch.randn(2, pipe.map_shape[0])
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(2)]          # noqa: E731
    default = pipe(v, num_inference_steps=4, generator=gens()).images
    assert torch.equal(default, pipe(v, strength=0.75, num_inference_steps=4, generator=gens()).images)
    assert not torch.equal(default, pipe(v, strength=1.0, num_inference_steps=4, generator=gens()).images)
